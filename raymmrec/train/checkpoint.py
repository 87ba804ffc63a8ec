"""Atomic, pickle-free checkpoints: plain dicts of tensors and numbers, loaded ``weights_only``.

No RNG state is saved: the loop reseeds batch order, negatives and dropout from (seed, epoch) at
the start of every epoch, so a resumed run replays exactly without it. The loop state (early
stopping included) and the best weights so far are in the checkpoint, so the replay makes the
killed run's decisions again (:func:`raymmrec.train.artifacts.resume_best`).
"""

from __future__ import annotations

from typing import Any

from raymmrec.files import load_tensors, save_tensors

FORMAT_VERSION = 2  # bumped when the payload's layout changes; older files are refused


# the atomic write and the pickle-free read live with the storage floor (prepared inputs use them too)
save_checkpoint = save_tensors
load_checkpoint = load_tensors


def check_format(payload: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint of another format version (or none: written before versions existed)."""
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where} has checkpoint format {version!r}, this raymmrec reads format "
                         f"{FORMAT_VERSION}; start a new run (another run_name) or use the matching version")
