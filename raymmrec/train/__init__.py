"""Training: the loop, sampling, checkpoints, callbacks and the single-process runner."""

from raymmrec.train.loop import Callback, Trainer, TrainState, unwrap

__all__ = ["Callback", "Trainer", "TrainState", "unwrap"]
