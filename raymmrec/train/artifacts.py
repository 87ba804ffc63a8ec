"""What a finished run leaves behind, identical for one process and for Ray, and how to load it.

A run folder (local path or URL) holds::

    config.json     the resolved config (defaults filled)
    best.pt         weights at the best validation evaluation (+ epoch, config); load_trained reads it
    results.json    validation and test metrics at that evaluation (and cold-start ones, see best_extras)
    tb/             TensorBoard scalars
    ckpt/           the resumable checkpoint, the same for one process and any number of Ray workers:
                    latest.pt (loop state) and the tensors, sharded (raymmrec.train.checkpoint)

Example::

    payload = read_best("runs/bm3-lfm2k-seed999")          # or "s3://bucket/runs/bm3-baby"

A trained model is rebuilt from its folder by :func:`raymmrec.train.trained.load_trained`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from raymmrec.files import join, placeholder, read_bytes, save_tensors
from raymmrec.eval import METRICS
from raymmrec.eval.cold import COLD_SPLITS
from raymmrec.shard import assembled_on_rank0, whole_shapes
from raymmrec.train.checkpoint import BEST_FORMAT_VERSION
from raymmrec.train.loop import TrainState

CONFIG, BEST, RESULTS, TB = "config.json", "best.pt", "results.json", "tb"
DIVERGED = "diverged.json"  # written by rank 0 when the loss became NaN (Ray runs); read by the driver


def cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict: a copy on the CPU too, since the weights keep training.

    Column-sharded, this rank's blocks (:func:`raymmrec.shard.assembled_on_rank0` joins them for ``best.pt``)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def best_payload(model: torch.nn.Module | None, state: TrainState, config: dict[str, Any],
                 weights: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """``best.pt``'s content: the best weights (state dict on CPU), their epoch, score and metrics, the
    resolved config (write it with :func:`raymmrec.files.save_tensors`, which streams it).

    ``weights``: the best weights already copied (:func:`cpu_weights`), else taken from ``model``.
    """
    if weights is None:
        assert model is not None, "best_payload needs a model or its weights"
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format_version": BEST_FORMAT_VERSION, "model": weights, "epoch": state.best_epoch,
            "score": state.best_score, "valid": state.best_valid, "test": state.best_test, "config": config}


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


def best_for_checkpoint(state: TrainState, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """What a checkpoint stores as the best weights (this rank's blocks, a CPU copy): None when they are
    the checkpoint's own weights (the last epoch was the best) or there is no best yet."""
    if state.best_epoch < 0 or state.best_epoch == state.epoch - 1:
        return None
    return weights


def write_best(run: str | Path, model: torch.nn.Module, state: TrainState, config: dict[str, Any],
               weights: dict[str, torch.Tensor], rank: int = 0) -> dict[str, Any] | None:
    """``best.pt`` from the best ``weights``: in one process (or data-parallel), its content on rank 0 for the
    caller to write (:func:`raymmrec.files.save_tensors`, perhaps in the background); None elsewhere.

    Column-sharded, a collective that writes ``best.pt`` itself and returns None: the whole tensors are
    assembled on rank 0 one at a time, point to point (:func:`raymmrec.shard.assembled_on_rank0`), and each
    is written into its place in the file before the next is assembled, so rank 0 holds one whole tensor
    besides its blocks, never the whole weights, and no other rank more than its blocks."""
    cols = getattr(model, "columns", None)
    if cols is None or cols.world_size == 1:
        return best_payload(None, state, config, weights=weights) if rank == 0 else None
    parts = assembled_on_rank0(model, weights)
    if rank != 0:
        for _ in parts:  # this rank's sends
            pass
        return None
    layout = {k: placeholder(shape, dtype) for k, (shape, dtype) in whole_shapes(model, weights).items()}
    save_tensors(join(run, BEST), best_payload(None, state, config, weights=layout), parts=parts)
    return None


def resume_best(run: str | Path, state: TrainState, best: dict[str, torch.Tensor] | None, model: torch.nn.Module,
                config: dict[str, Any], rank: int = 0) -> dict[str, torch.Tensor] | None:
    """After a resume: the checkpoint's best weights (this rank's blocks), with ``best.pt`` put back to them.

    The checkpoint alone decides the resumed run: its early-stopping state (best score, best epoch,
    evaluations without improvement) is the one the killed run had at that epoch, and the epochs
    after it are replayed exactly (batches, negatives and dropout are seeded from (seed, epoch)),
    so the replay reaches the same best by itself. A ``best.pt`` written after the checkpoint
    belongs to those replayed epochs; it must not steer the replay (taking over its score made every
    replayed evaluation before it count as "no improvement" and stopped runs early). It is replaced
    by the checkpoint's best, so ``best.pt`` and the run's state describe one model at every moment,
    even if the replay were not bit-exact and never reached that score again.

    ``model`` holds the checkpoint's weights (after :func:`raymmrec.train.checkpoint.restore`), ``best``
    the checkpoint's best weights when they are not those. Returns the best weights (CPU) for
    :class:`~raymmrec.train.callbacks.BestWeightsCallback` to keep, or None when there is no best yet.
    Called by every rank that keeps best weights (every rank of a column-sharded run: a collective when
    ``best.pt`` is rewritten; rank 0 alone otherwise); rank 0 reads and writes ``best.pt``.
    """
    import torch.distributed as dist

    if state.best_epoch < 0:
        return None  # no evaluation before the checkpoint: the replay's first one writes best.pt
    weights = cpu_weights(model) if state.best_epoch == state.epoch - 1 else best
    if weights is None:
        raise ValueError(f"the checkpoint of run {run} lacks the best weights of epoch {state.best_epoch}")
    rewrite = torch.zeros(1)
    if rank == 0:
        on_disk = read_best(run)
        same = (on_disk is not None and on_disk.get("format_version") == BEST_FORMAT_VERSION
                and int(on_disk["epoch"]) == state.best_epoch)
        del on_disk
        rewrite[0] = 0.0 if same else 1.0
    cols = getattr(model, "columns", None)
    if cols is not None and cols.world_size > 1:  # rank 0's decision, for the collective assembling
        flag = rewrite.to(next(model.parameters()).device) if dist.get_backend() == "nccl" else rewrite
        dist.broadcast(flag, 0)
        rewrite = flag.cpu()
    if rewrite.item():
        payload = write_best(run, model, state, config, weights, rank)
        if payload is not None:
            save_tensors(join(run, BEST), payload)
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
    if notes and "sampled" in notes:
        out["sampled"] = notes["sampled"]
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
