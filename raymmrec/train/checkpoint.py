"""Atomic, pickle-free checkpoints: plain dicts of tensors and numbers, loaded ``weights_only``.

No RNG state is saved: the loop reseeds batch order, negatives and dropout from (seed, epoch) at
the start of every epoch, so a resumed run replays exactly without it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


FORMAT_VERSION = 2  # bumped when the payload's layout changes; older files are refused


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU; never unpickles objects.

    Always CPU: ``load_state_dict`` copies weights and optimizer state to wherever the model
    lives, and nothing here may end up on a device that expects a CPU tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"checkpoint {path} could not be loaded safely (weights_only=True): {e}") from e


def check_format(payload: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint of another format version (or none: written before versions existed)."""
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where} has checkpoint format {version!r}, this raymmrec reads format "
                         f"{FORMAT_VERSION}; start a new run (another run_name) or use the matching version")
