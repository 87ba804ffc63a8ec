"""The Ray layer: the only package of raymmrec that imports ``ray``.

* :mod:`raymmrec.ray.launch` builds a ``TorchTrainer`` from a :class:`~raymmrec.config.RunSpec`;
* :mod:`raymmrec.ray.train_fn` is the per-worker loop (the core Trainer under DDP);
* :mod:`raymmrec.ray.storage` handles local and ``s3://`` run storage.
"""
