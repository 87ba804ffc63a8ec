"""A finished run, rebuilt: its spec, data, and best model in eval mode, from a run folder or URL.

Example::

    trained = load_trained("runs/bm3-lfm2k-seed999")       # or "s3://bucket/runs/bm3-baby"
    scores = trained.model.scorer()(torch.tensor([3, 17]))  # 2 × n_items

It sits above both :mod:`raymmrec.train.artifacts` (what a run leaves behind) and
:mod:`raymmrec.train.build` (how a run's pieces are made), which do not import it.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raymmrec.config import RunSpec, spec_from_dict
from raymmrec.files import is_url, join, open_fs, read_bytes
from raymmrec.train.artifacts import BEST, CONFIG, read_best
from raymmrec.train.build import build, resolve_device
from raymmrec.train.checkpoint import BEST_FORMAT_VERSION, check_format


@dataclass
class Trained:
    """A trained model rebuilt from a run folder, with its data and spec."""

    spec: RunSpec
    config: dict[str, Any]
    model: Any  # Recommender, in eval mode
    data: Any  # RecData
    epoch: int  # the epoch the weights come from (best validation)
    device: torch.device
    # an unlearned run's origin (best.pt's "unlearned_from", raymmrec.unlearning): the source run, its
    # best epoch, the request and the unlearning epochs; None for a trained run
    unlearned_from: dict[str, Any] | None = None

    def weights_note(self) -> str:
        """Where the weights come from, for a command's header line: ``weights of epoch N``, or for an
        unlearned run ``unlearned from <run> epoch N (forget 2 users, 3 unlearning epochs)``."""
        u = self.unlearned_from
        if not u:
            return f"weights of epoch {self.epoch}"
        req = u.get("request", {})
        n = int(u.get("unlearning_epochs", 0))
        return (f"unlearned from {u.get('run')} epoch {u.get('epoch')} (forget {req.get('describe', '?')}, "
                f"{n} unlearning epoch{'' if n == 1 else 's'})")


def read_run(run: str | Path) -> tuple[RunSpec, dict[str, Any], dict[str, Any]]:
    """A finished run's spec (its ``data.forget`` located), ``config.json`` and ``best.pt`` payload."""
    run = str(run).rstrip("/")
    try:
        config = json.loads(read_bytes(join(run, CONFIG)))
        payload = read_best(run)
        if payload is None:
            raise FileNotFoundError(f"{join(run, BEST)} does not exist")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{run} is not a finished run folder: {e} (it needs {CONFIG} and {BEST})") from None
    check_format(payload, join(run, BEST), BEST_FORMAT_VERSION)
    spec = spec_from_dict(config)
    if spec.data.forget:
        spec.data.forget = _forget_request(run, spec.data.forget, unlearned="unlearned_from" in payload)
    return spec, config, payload


def load_trained(run: str | Path, device: str = "auto", *, data: Any = None,
                 prepared: dict[str, Any] | None = None) -> Trained:
    """Rebuild the best model of a finished (or running) run from its folder or URL.

    Reads ``config.json`` and ``best.pt`` (``weights_only``), reloads the run's dataset and
    prepared inputs, and loads the weights, on ``device`` (``auto``: CUDA when available).
    ``data`` and ``prepared``: the run's dataset (as :func:`~raymmrec.train.build.load_data` gives
    it for :func:`read_run`'s spec) and prepared inputs where the caller already has them (a Serve
    replica gets them from the object store): the dataset is then not read again.
    """
    spec, config, payload = read_run(run)
    dev = resolve_device(device)
    pieces = build(spec, device=dev, data=data, prepared=prepared, release_features=True)
    pieces.model.load_state_dict(payload["model"])
    pieces.model.eval()
    return Trained(spec, config, pieces.model, pieces.data, int(payload["epoch"]), dev, payload.get("unlearned_from"))


def _forget_request(run: str, recorded: str, unlearned: bool) -> str:
    """Where a run's recorded ``data.forget`` is read from.

    A relative path names a file in the run folder (an unlearned run records ``forget.parquet``, its
    Gold ``../forget.parquet``; only there), so a moved or uploaded folder still loads; for any other
    run, where the run folder has no such file but the path names one from here, that one is read (a
    run trained in one process with a path relative to where it started). An unlearned run of an older version recorded an absolute
    path: where that is gone (the folder moved), the request of that name in the run folder is read.
    """
    if is_url(recorded) or os.path.isabs(recorded.removeprefix("file://")):
        if unlearned and not _exists(recorded):
            inside = join(run, posixpath.basename(recorded.rstrip("/")))
            return inside if _exists(inside) else recorded
        return recorded
    inside = _under(run, recorded)
    if unlearned:  # its request lives in (or, for Gold, beside) the run folder: never another one of that name
        return inside
    return recorded if not _exists(inside) and _exists(recorded) else inside


def _under(run: str, relative: str) -> str:
    """``relative`` (``..`` allowed) resolved against the run folder or URL ``run``."""
    if is_url(run):
        scheme, path = run.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(path, relative))}"
    return os.path.normpath(os.path.join(run.removeprefix("file://"), relative))


def _exists(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path.removeprefix("file://"))
    fs, p = open_fs(path)
    return fs.exists(p)
