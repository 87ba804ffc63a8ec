"""What a finished run leaves behind, identical for one process and for Ray, and how to load it.

A run folder (local path or URL) holds::

    config.json     the resolved config (defaults filled)
    best.pt         weights at the best validation evaluation (+ epoch, config); load_trained reads it
    results.json    validation and test metrics at that evaluation (and cold-start ones, see best_extras)
    tb/             TensorBoard scalars
    ckpt/latest.pt  the resumable checkpoint (Ray: checkpoint_*/latest.pt, managed by Ray Train)

Example::

    trained = load_trained("runs/bm3-lfm2k-seed999")       # or "s3://bucket/runs/bm3-baby"
    scores = trained.model.scorer()(torch.tensor([3, 17]))  # 2 × n_items
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raymmrec.config import RunSpec, spec_from_dict
from raymmrec.data.io import open_fs
from raymmrec.eval import METRICS
from raymmrec.eval.cold import COLD_SPLITS
from raymmrec.train.checkpoint import FORMAT_VERSION, check_format
from raymmrec.train.loop import TrainState

CONFIG, BEST, RESULTS, TB = "config.json", "best.pt", "results.json", "tb"
DIVERGED = "diverged.json"  # written by rank 0 when the loss became NaN (Ray runs); read by the driver


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str | Path, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to a local path (temporary file, then rename) or a URL (one object put)."""
    target = str(target)
    if is_url(target):
        fs, path = open_fs(target)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    path = Path(target.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_bytes(source: str | Path) -> bytes:
    source = str(source)
    if is_url(source):
        fs, path = open_fs(source)
        if not fs.exists(path):
            raise FileNotFoundError(f"{source} does not exist")
        return fs.cat_file(path)
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path.read_bytes()


def write_json(target: str | Path, obj: Any) -> None:
    write_bytes(target, json.dumps(obj, indent=2).encode())


def best_payload(model: torch.nn.Module, state: TrainState, config: dict[str, Any]) -> bytes:
    """Serialised best weights (state dict on CPU), their epoch, score and metrics, resolved config."""
    buf = io.BytesIO()
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format_version": FORMAT_VERSION, "model": weights, "epoch": state.best_epoch,
                "score": state.best_score, "valid": state.best_valid, "test": state.best_test, "config": config}, buf)
    return buf.getvalue()


def read_best(run: str | Path) -> dict[str, Any] | None:
    """The ``best.pt`` payload of a run folder (``weights_only``, on the CPU), or None where there is none yet."""
    path = join(run, BEST)
    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path} could not be loaded safely (weights_only=True): {e}") from None


def adopt_best(state: TrainState, best: dict[str, Any] | None) -> None:
    """After a resume, take over a ``best.pt`` written after the checkpoint (between checkpoints).

    Its weights are the run's best so far; the replay of that epoch then counts as the best again
    (:meth:`Trainer._update_best`), so ``best.pt`` and ``results.json`` always describe one model.
    """
    if best is None or best.get("format_version") != FORMAT_VERSION or int(best["epoch"]) < state.epoch:
        return
    state.best_epoch, state.best_score = int(best["epoch"]), float(best["score"])
    state.best_valid, state.best_test = dict(best["valid"]), dict(best["test"])


def best_extras(state: TrainState) -> dict[str, dict[str, float]]:
    """Metrics of the evaluations besides valid and test (``cold``, ``cold_knn``) at the best epoch.

    The loop keeps only valid and test as ``best_*``; every evaluated split is in that epoch's
    ``history`` entry as ``<split>/<metric>``, so they are read from there (selection stays on
    validation). Empty when the best epoch is not in the history.
    """
    for entry in reversed(state.history):
        if int(entry.get("epoch", -1)) == state.best_epoch:
            out: dict[str, dict[str, float]] = {}
            for key, value in entry.items():
                split, _, metric = key.partition("/")
                if split in COLD_SPLITS and metric:
                    out.setdefault(split, {})[metric] = value
            return {split: out[split] for split in COLD_SPLITS if split in out}
    return {}


def results_dict(state: TrainState, notes: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``results.json`` holds: metrics at the best validation evaluation.

    ``notes`` (:func:`raymmrec.train.build.run_notes`) stand in for metrics that were not computed,
    e.g. ``"cold": "bpr has no feature path for items; ..."``.
    """
    out: dict[str, Any] = {"best_epoch": state.best_epoch, "valid": state.best_valid, "test": state.best_test}
    cold = {**best_extras(state), **(notes or {})}
    out.update({split: cold[split] for split in COLD_SPLITS if split in cold})
    out.update({"epochs_run": state.epoch, "stopped_early": state.stopped_early, "resumed_at": state.resumes})
    return out


def report_metrics(state: TrainState, logs: dict[str, float]) -> dict[str, Any]:
    """What a run reports to Ray (Train or Tune) after an epoch: the epoch's logs and the best-so-far summary."""
    m: dict[str, Any] = {k: float(v) for k, v in logs.items()}
    m.update({"best_epoch": state.best_epoch, "best_score": state.best_score, "stopped_early": state.stopped_early,
              "epochs_run": state.epoch, "resumed_at": list(state.resumes)})
    m.update({f"best_test/{k}": v for k, v in state.best_test.items()})
    m.update({f"best_valid/{k}": v for k, v in state.best_valid.items()})
    m.update({f"best_{split}/{k}": v for split, metrics in best_extras(state).items() for k, v in metrics.items()})
    return m


def results_table(state: TrainState, ks: list[int], notes: dict[str, str] | None = None) -> str:
    """Plain-text table of the metrics at the best validation epoch (valid, test, cold-start rows)."""
    cols = [f"{n}@{k}" for k in ks for n in METRICS]
    width = max(len(c) for c in cols) + 1
    rows = [("valid", state.best_valid), ("test", state.best_test), *best_extras(state).items()]
    label = max(7, *(len(split) + 1 for split, _ in rows))
    lines = [f"best epoch {state.best_epoch} (of {state.epoch} run)",
             "split".ljust(label) + "".join(c.rjust(width) for c in cols)]
    for split, metrics in rows:
        lines.append(split.ljust(label) + "".join(f"{metrics.get(c, float('nan')):{width}.4f}" for c in cols))
    lines += [f"{split}: {note}" for split, note in (notes or {}).items()]
    return "\n".join(lines)


@dataclass
class Trained:
    """A trained model rebuilt from a run folder, with its data and spec."""

    spec: RunSpec
    config: dict[str, Any]
    model: Any  # Recommender, in eval mode
    data: Any  # RecData
    epoch: int  # the epoch the weights come from (best validation)
    device: torch.device


def load_trained(run: str | Path, device: str = "auto") -> Trained:
    """Rebuild the best model of a finished (or running) run from its folder or URL.

    Reads ``config.json`` and ``best.pt`` (``weights_only``), reloads the run's dataset and
    prepared inputs, and loads the weights, on ``device`` (``auto``: CUDA when available).
    """
    from raymmrec.train.build import build, resolve_device

    run = str(run).rstrip("/")
    try:
        config = json.loads(read_bytes(join(run, CONFIG)))
        payload = read_best(run)
        if payload is None:
            raise FileNotFoundError(f"{join(run, BEST)} does not exist")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{run} is not a finished run folder: {e} (it needs {CONFIG} and {BEST})") from None
    check_format(payload, join(run, BEST))
    spec = spec_from_dict(config)
    dev = resolve_device(device)
    pieces = build(spec, device=dev, release_features=True)
    pieces.model.load_state_dict(payload["model"])
    pieces.model.eval()
    return Trained(spec, config, pieces.model, pieces.data, int(payload["epoch"]), dev)
