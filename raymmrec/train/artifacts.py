"""What a finished run leaves behind, identical for one process and for Ray, and how to load it.

A run folder (local path or URL) holds::

    config.json     the resolved config (defaults filled)
    best.pt         weights at the best validation evaluation (+ epoch, config); load_trained reads it
    results.json    validation and test metrics at that evaluation (and cold-start ones, see best_extras)
    tb/             TensorBoard scalars
    ckpt/latest.pt  the resumable checkpoint (Ray: checkpoint_*/latest.pt, managed by Ray Train)

Example::

    payload = read_best("runs/bm3-lfm2k-seed999")          # or "s3://bucket/runs/bm3-baby"

A trained model is rebuilt from its folder by :func:`raymmrec.train.trained.load_trained`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from raymmrec.files import join, read_bytes, write_bytes
from raymmrec.eval import METRICS
from raymmrec.eval.cold import COLD_SPLITS
from raymmrec.train.checkpoint import FORMAT_VERSION
from raymmrec.shard import full_model_state
from raymmrec.train.loop import TrainState

CONFIG, BEST, RESULTS, TB = "config.json", "best.pt", "results.json", "tb"
DIVERGED = "diverged.json"  # written by rank 0 when the loss became NaN (Ray runs); read by the driver


def cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict: a copy on the CPU too, since the weights keep training.

    Column-sharded, the assembled tensors (a collective: every rank calls it at the same point)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in full_model_state(model).items()}


def best_payload(model: torch.nn.Module | None, state: TrainState, config: dict[str, Any],
                 weights: dict[str, torch.Tensor] | None = None) -> bytes:
    """Serialised best weights (state dict on CPU), their epoch, score and metrics, resolved config.

    ``weights``: the best weights already copied (:func:`cpu_weights`), else taken from ``model``.
    """
    buf = io.BytesIO()
    if weights is None:
        assert model is not None, "best_payload needs a model or its weights"
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


BEST_IN_CHECKPOINT = "best_model"  # checkpoint key: the best weights when they are not the current ones


def best_for_checkpoint(state: TrainState, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """What a checkpoint stores under :data:`BEST_IN_CHECKPOINT`: the best weights (a CPU copy) unless
    they are the checkpoint's own weights (the last epoch was the best) or there is no best yet
    (None; also where they are unknown: a run resumed from a checkpoint that predates them)."""
    if state.best_epoch < 0 or state.best_epoch == state.epoch - 1:
        return None
    return weights


def resume_best(run: str | Path, state: TrainState, checkpoint: dict[str, Any], model: torch.nn.Module,
                config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """After a resume: the checkpoint's best weights, with ``best.pt`` put back to them.

    The checkpoint alone decides the resumed run: its early-stopping state (best score, best epoch,
    evaluations without improvement) is the one the killed run had at that epoch, and the epochs
    after it are replayed exactly (batches, negatives and dropout are seeded from (seed, epoch)),
    so the replay reaches the same best by itself. A ``best.pt`` written after the checkpoint
    belongs to those replayed epochs; it must not steer the replay (taking over its score made every
    replayed evaluation before it count as "no improvement" and stopped runs early). It is replaced
    by the checkpoint's best, so ``best.pt`` and the run's state describe one model at every moment,
    even if the replay were not bit-exact and never reached that score again.

    ``model`` holds the checkpoint's weights (after :func:`raymmrec.train.build.restore`). Returns
    the best weights (CPU) for :class:`~raymmrec.train.callbacks.BestWeightsCallback` to keep, or
    None when there is no best yet or the checkpoint predates stored best weights (then ``best.pt``
    is kept when it is the checkpoint's best, else left for the replay to rewrite). Called by the
    process that writes ``best.pt`` (rank 0 under Ray).
    """
    if state.best_epoch < 0:
        return None  # no evaluation before the checkpoint: the replay's first one writes best.pt
    if state.best_epoch == state.epoch - 1:  # the checkpoint's own (assembled) weights
        weights = {k: v.detach().to("cpu", copy=True) for k, v in checkpoint["model"].items()}
    else:
        weights = checkpoint.get(BEST_IN_CHECKPOINT)
    on_disk = read_best(run)
    same = (on_disk is not None and on_disk.get("format_version") == FORMAT_VERSION
            and int(on_disk["epoch"]) == state.best_epoch)
    if same:
        return weights if weights is not None else dict(on_disk["model"])
    if weights is not None:
        write_bytes(join(run, BEST), best_payload(None, state, config, weights=weights))
    return weights


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
