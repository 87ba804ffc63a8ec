"""One training loop for every model, with evaluation, early stopping and callbacks.

The :class:`Trainer` is given its pieces (dependency injection): the model (possibly wrapped
by DDP), the objective, the optimizer (and an optional per-epoch scheduler), a function producing
an epoch's batches and a function evaluating the model. :mod:`raymmrec.train.build` makes the
pieces from a spec; the single-process runner and the Ray worker only differ in which wrapper,
evaluator and callbacks they pass in.

Early stopping follows MMRec: ``patience`` counts *evaluations* without a strictly better
validation metric, and training stops when that count exceeds it (MMRec's ``cur_step > max_step``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Iterable

import torch
from torch import nn

from raymmrec.allocator import training_heap
from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, Recommender
from raymmrec.shard import average_replicated_grads
from raymmrec.train.sampling import dropout_seed


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite (on any rank: every rank raises at the same step)."""

BatchFn = Callable[[int], Iterable[Batch]]
EvalFn = Callable[[Recommender], dict[str, dict[str, float]]]


def unwrap(model: nn.Module) -> Recommender:
    """The bare :class:`Recommender` inside a DDP (or similar) wrapper."""
    while hasattr(model, "module"):
        model = model.module  # type: ignore[assignment]
    return model  # type: ignore[return-value]


@dataclass
class TrainState:
    """Everything besides weights that a resumed run needs; plain data, checkpoint-safe."""

    epoch: int = 0  # next epoch to run
    best_score: float = -math.inf
    best_epoch: int = -1
    best_valid: dict[str, float] = field(default_factory=dict)
    best_test: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0  # evaluations since the last improvement
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)  # epochs at which this run was resumed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**d)


class Callback:
    """Hooks called by :class:`Trainer`; ``logs`` holds losses, metrics and timings of an epoch."""

    def on_fit_start(self, trainer: "Trainer", state: TrainState) -> None: ...

    def on_step_end(self, trainer: "Trainer", epoch: int, step: int) -> None: ...  # after step ``step`` (0-based)

    def on_eval_start(self, trainer: "Trainer", epoch: int) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", state: TrainState, logs: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: "Trainer", state: TrainState) -> None: ...


class Trainer:
    """Epochs of ``batches(epoch)``, evaluation every ``eval_every`` epochs, early stopping.

    Example::

        trainer = Trainer(model, objective, opt, batches, evaluate, epochs=100, patience=20, seed=0)
        state = trainer.fit()
        print(state.best_test["recall@20"])
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Callable[..., Any],
        optimizer: torch.optim.Optimizer,
        batches: BatchFn,
        evaluate: EvalFn,
        *,
        epochs: int,
        patience: int,
        seed: int,
        valid_metric: str = "recall@20",
        eval_every: int = 1,
        callbacks: list[Callback] | None = None,
        device: torch.device | str = "cpu",
        ctx: DistContext | None = None,
        scheduler: Any = None,
        lazy_splits: tuple[str, ...] = (),
        steps_per_epoch: int | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.batches = batches
        self.evaluate = evaluate
        self.epochs = epochs
        self.patience = patience
        self.seed = seed
        self.valid_metric = valid_metric
        self.eval_every = max(1, eval_every)
        self.callbacks = callbacks or []
        self.device = torch.device(device)
        self.ctx = ctx or DistContext()
        # splits ranked only at an evaluation whose validation metric is a new best (eval.valid_users:
        # validation ranks a sample, and the test metrics a run reports are those of its best epoch)
        self.lazy_splits = tuple(lazy_splits)
        self.steps_per_epoch = steps_per_epoch  # for progress only; None: not known in advance

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One training epoch (every batch of ``batches(epoch)``: forward, backward, optimizer step) without
        evaluation, as :meth:`fit` runs it; returns the epoch's mean losses and ``time/data_s``. Benchmarks
        time it alone."""
        model = self.model
        model.train()
        # Dropout and other in-model randomness: reseeded per epoch, so resuming is exact.
        torch.manual_seed(dropout_seed(self.seed, epoch))
        unwrap(model).on_epoch_start(epoch, self.ctx)
        sums: dict[str, torch.Tensor] = {}
        n_batches = 0
        data_s = 0.0
        # One process on CPU checks the loss at every step (a host read costs nothing there). On a
        # GPU, or across ranks, that would be a device sync or an all-reduce per step: the first
        # non-finite step is recorded on the device instead and checked once, at the epoch's end.
        immediate = self.device.type == "cpu" and not self.ctx.distributed
        first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        it = iter(self.batches(epoch))
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            data_s += time.perf_counter() - t0
            if batch is None:
                break
            batch = batch.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            out = self.objective(model(batch), batch, self.ctx)
            bad = ~torch.isfinite(out.total.detach())
            first_bad = torch.where(bad & (first_bad < 0), n_batches, first_bad)
            if immediate:
                self._check_first_bad(first_bad, epoch)
            out.total.backward()
            if self.ctx.columns is not None:  # column-sharded: the replicated parameters' gradients averaged
                average_replicated_grads(unwrap(model), batch)
            self.optimizer.step()
            sums["loss"] = sums.get("loss", 0) + out.value
            for k, v in out.parts.items():
                sums[f"loss/{k}"] = sums.get(f"loss/{k}", 0) + v
            n_batches += 1
            for cb in self.callbacks:
                cb.on_step_end(self, epoch, n_batches - 1)
        if not immediate:
            self._check_first_bad(first_bad, epoch)
        if self.ctx.distributed and sums:  # each rank holds its share of the global values
            keys = sorted(sums)
            total = self.ctx.all_reduce_sum(torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys]))
            sums = dict(zip(keys, total.unbind()))
        logs = {k: float(v) / max(n_batches, 1) for k, v in sums.items()}
        logs["time/data_s"] = data_s  # shuffling, negative sampling, fetching shards
        logs.update({f"model/{k}": float(v) for k, v in unwrap(model).epoch_logs().items()})
        return logs

    def _check_first_bad(self, first_bad: torch.Tensor, epoch: int) -> None:
        """Raise (on every rank at once) when a loss of this epoch so far was not finite on any rank;
        ``first_bad`` is this rank's first non-finite step, or -1."""
        bad = (first_bad >= 0).to(torch.float32).reshape(1)
        if self.ctx.distributed:
            bad = self.ctx.all_reduce_sum(bad)
        n_bad = int(bad.item())
        if n_bad:
            step = int(first_bad.item())
            at = f"batch {step}" if step >= 0 else "a batch"
            where = f" on {n_bad} of {self.ctx.world_size} ranks" if self.ctx.distributed else ""
            raise TrainingDiverged(f"loss became NaN or infinite at epoch {epoch}, {at}{where}; "
                                   "try a lower learning rate or regularisation weight")

    def fit(self, state: TrainState | None = None) -> TrainState:
        """Train from ``state`` (a fresh one by default) until the cap or early stop."""
        with self.heap():
            return self._fit(state or TrainState())

    def heap(self) -> ContextManager[bool]:
        """On CPU, a block where freed step buffers stay in the heap (:func:`raymmrec.allocator.training_heap`,
        blocks of any size when a table is over glibc's mmap ceiling); glibc's own settings again after it.
        ``fit`` runs inside it; on a GPU it changes nothing."""
        if self.device.type != "cpu":
            return contextlib.nullcontext(False)
        return training_heap(max((p.numel() * p.element_size() for p in self.model.parameters()), default=0))

    def _fit(self, state: TrainState) -> TrainState:
        for cb in self.callbacks:
            cb.on_fit_start(self, state)
        while state.epoch < self.epochs and not state.stopped_early:
            epoch = state.epoch
            t0 = time.perf_counter()
            logs = self.run_epoch(epoch)
            if self.scheduler is not None:
                self.scheduler.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            logs["time/train_s"] = time.perf_counter() - t0
            logs["epoch"] = epoch
            if (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs:
                t1 = time.perf_counter()
                for cb in self.callbacks:
                    cb.on_eval_start(self, epoch)
                results = self._evaluate(state)
                logs["time/eval_s"] = time.perf_counter() - t1
                for split, metrics in results.items():
                    logs.update({f"{split}/{k}": v for k, v in metrics.items()})
                update_best(state, epoch, results, self.valid_metric, self.patience)
            state.epoch = epoch + 1
            state.history.append({k: float(v) for k, v in logs.items()})
            for cb in self.callbacks:
                cb.on_epoch_end(self, state, logs)
        for cb in self.callbacks:
            cb.on_fit_end(self, state)
        return state

    def _evaluate(self, state: TrainState) -> dict[str, dict[str, float]]:
        """Every split, or with ``lazy_splits`` the others first and those only when validation improved
        (the same decision on every rank: validation metrics are all-reduced)."""
        model = unwrap(self.model)
        if not self.lazy_splits:
            return self.evaluate(model)
        results = self.evaluate(model, skip=self.lazy_splits)
        if results.get("valid", {}).get(self.valid_metric, -math.inf) > state.best_score:
            results.update(self.evaluate(model, only=self.lazy_splits))
        return results


def update_best(state: TrainState, epoch: int, results: dict[str, dict[str, float]], valid_metric: str,
                patience: int) -> None:
    """Early stopping's bookkeeping after one evaluation, as :class:`Trainer` does it: a strictly better
    ``results["valid"][valid_metric]`` becomes the best (its epoch, validation and test metrics), any other
    score counts one bad evaluation, and more than ``patience`` of them in a row stop the run."""
    valid = results.get("valid", {})
    if valid_metric not in valid:
        raise KeyError(f"validation metric {valid_metric!r} not computed; have {sorted(valid)}")
    score = valid[valid_metric]
    # A resumed run decides from its checkpoint's state alone and replays the same scores, so it
    # makes the same decisions as the uninterrupted run (artifacts.resume_best).
    if score > state.best_score:
        state.best_score, state.best_epoch, state.bad_evals = score, epoch, 0
        state.best_valid = dict(valid)
        state.best_test = dict(results.get("test", {}))
    else:
        state.bad_evals += 1
        if state.bad_evals > patience:  # MMRec: stop when cur_step > max_step
            state.stopped_early = True
