"""Training objectives, registered by name and applicable to any model whose outputs fit.

A model embeds and scores (:class:`~raymmrec.models.base.ModelOutput`); an objective turns those
outputs, the batch and the distributed context into a loss. Each objective is exact under DDP:
N ranks sharing a global batch produce, after DDP's gradient average, the single-process gradient.
"""
