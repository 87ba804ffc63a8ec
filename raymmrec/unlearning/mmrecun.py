"""MMRecUn (Sinha et al., AAAI 2025): unlearn a forget set by fine-tuning with reverse and forward BPR.

Starting from the trained weights, on the model rebuilt over the *retain* data (the user-item graph
without the forgotten edges, the item-item graph without an item-wise request's items)::

    L = retain_weight · BPR(D_r) + forget_weight · revBPR(D_f) + reg_weight · ‖batch rows‖²

``BPR(u, i, j) = softplus(s_uj − s_ui)`` pushes a retained item above a sampled negative;
``revBPR(u, i_f, j) = softplus(s_ui_f − s_uj)`` swaps the roles, pushing a forgotten item below one.
Scores are the model's own scoring tables (:meth:`Recommender.score_tables`), so the method runs on
every backbone (BM3, LightGCN, CM3, LIRDRec, VBPR, MF) whatever its training objective.

The paper's code is not public (Sinha, Mandal, Kankanhalli, AAAI 2025, arXiv 2405.15328); where it is
silent these choices are made, each an option:

* **Epoch** = one pass over the forgotten training pairs in batches of ``forget_batch_size``, each
  step paired with ``batch_size`` retained pairs (a shuffled pass over the retain set that carries
  across steps). Negatives come from the retain-side sampler, which never serves an item-wise
  request's items.
* **Stopping**: unlearning must not overshoot. Retraining without the forgotten data ("Gold") ranks
  them like interactions it never saw, not below them; so after each epoch the membership AUC
  (forgotten pairs' scores against the same users' or items' *validation* interactions, never trained
  on) is measured, and unlearning stops once it falls to ``stop_auc`` (0.53: a little above 0.5,
  where Gold itself sits, 0.50-0.53 on lfm2k; stopping at exactly 0.5 let one 5 % user draw over-forget
  by 23 %, at 0.51 by 21 %; 0.53 was chosen on nine tuning draws and measured on five fresh ones,
  docs/unlearning.md), once
  an epoch lowers it by less than ``stop_delta`` (a plateau: on lfm2k/BM3 a 10 % user request sat at
  0.515 for ten epochs while the reverse term cost 12 % of test Recall), or after ``epochs``.
  Forgetting alone is not a safe rule: on one 5 % user draw of lfm2k/BM3 the AUC took six epochs to
  reach 0.5 and test Recall@20 ended 6 % below Gold's. So what is kept is watched too: the retained
  users' *validation* Recall@20 (ranked as served; never the test split) is measured before
  unlearning and after each epoch, and an epoch that takes it more than ``keep_tol`` (a fraction)
  below its value before unlearning is undone (the weights roll back to the previous epoch's, or to
  the trained ones) and ends the run. :class:`UnlearnResult` says which rule stopped it. If even the
  first epoch is undone, unlearning starts again from the trained weights at half the rate, at most
  ``retries`` times; if nothing is kept then, the result (and the report, and the command's output)
  carries the one-line warning "nothing forgotten beyond the reset": a user- or item-wise request has
  only its rows reset, an interaction-wise request nothing at all.
* **Reset** (user- and item-wise requests): after fine-tuning, the forgotten users' (or items') own
  rows are overwritten, since no fine-tuning makes a user's own vector forget its history as surely.
  ``auto`` (default) gives them what retraining without their data (Gold) leaves of a row without
  data (:func:`resolve_reset`): a fresh initialisation, or zeros where the method's regulariser acts
  on whole tables (BM3, LIRDRec) or the run used weight decay. Measured against Gold on lfm2k
  (docs/unlearning.md): with ``init`` for BM3's users the forget-set recall fell 32 % below Gold's, with ``zero``
  within 8 %; LightGCN's Gold keeps untrained users at their initialisation. ``mean`` (the average
  user) and ``none`` (the fine-tuned rows, the paper's method as far as it is known) are options.
* **Learning rate**: 0.3 × the trained run's, which kept test Recall within 1 % of Gold's on lfm2k
  where the run's own rate lost 2–4 %.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from raymmrec.data import RecData
from raymmrec.data.forget import ForgetRequest
from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, LossOutput, ModelOutput, Recommender
from raymmrec.objectives.base import Objective
from raymmrec.train.sampling import NegativeSampler, canonical_pairs, derive_seed, dropout_seed
from raymmrec.unlearning.reset import reset_state


RESETS = ("auto", "init", "mean", "zero", "none")
LR_SCALE = 0.3  # default unlearning lr: this times the trained run's (measured on lfm2k, docs/unlearning.md)


@dataclass(frozen=True)
class UnlearnOptions:
    """MMRecUn's options (``raymmrec unlearn ... opt=value``); defaults measured on lfm2k (docs/unlearning.md)."""

    epochs: int = 10  # cap on passes over the forget set
    lr: float | None = None  # Adam learning rate (None: 0.3 x the trained run's train.lr)
    forget_weight: float = 1.0  # λ of the reverse BPR term
    retain_weight: float = 1.0  # weight of the forward BPR term on the retain set
    reg_weight: float = 0.0  # L2 on the batch's rows of the scoring tables
    batch_size: int | None = None  # retained pairs per step (None: the trained run's train.batch_size)
    forget_batch_size: int = 512  # forgotten pairs per step
    # stop once validation membership AUC <= this (None: run all epochs); a little above chance (0.5),
    # where Gold itself sits (0.50-0.53 on lfm2k): chosen on tuning draws, docs/unlearning.md
    stop_auc: float | None = 0.53
    stop_delta: float = 0.002  # ... or once an epoch lowers it by less than this (a plateau)
    # what is kept: stop, rolling back to the last epoch within it, once the retained users' validation
    # Recall@20 falls more than this fraction below its value before unlearning (None: not watched)
    keep_tol: float | None = 0.02
    # if even the first epoch is undone (past keep_tol), start again from the trained weights at half
    # the rate, at most this many times; then warn "nothing forgotten beyond the reset"
    retries: int = 2
    # user-/item-wise: what the forgotten users' / items' own rows become at the end (auto: what Gold
    # leaves of a row without data, see resolve_reset: zeros or a fresh initialisation)
    reset: Literal["auto", "init", "mean", "zero", "none"] = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [n for n in ("epochs", "forget_batch_size") if getattr(self, n) < 1]
        bad += ["retries"] if self.retries < 0 else []
        bad += [n for n in ("lr", "batch_size") if getattr(self, n) is not None and getattr(self, n) <= 0]
        bad += [n for n in ("forget_weight", "retain_weight", "reg_weight") if getattr(self, n) < 0]
        bad += ["keep_tol"] if self.keep_tol is not None and not 0 <= self.keep_tol < 1 else []
        if bad:
            raise ValueError(f"unlearning options {bad} must be positive (weights: >= 0; keep_tol: in [0, 1))")
        if self.reset not in RESETS:
            raise ValueError(f"unlearning option reset must be one of {', '.join(RESETS)}, got {self.reset!r}")


@dataclass
class UnlearnBatch:
    """One step: a batch of retained pairs and one of forgotten pairs, each with a negative per row."""

    retain: Batch
    forget: Batch

    def to(self, device: torch.device | str) -> "UnlearnBatch":
        return UnlearnBatch(self.retain.to(device), self.forget.to(device))


class ScoreView(nn.Module):
    """The model seen through its scoring tables: rows of the batch's users, positives and negatives."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.module = model

    def forward(self, b: UnlearnBatch) -> ModelOutput:
        users, items = self.module.score_tables()
        r, f = b.retain, b.forget
        return ModelOutput(users[r.users], items[r.pos_items], items[r.neg_items],
                           extra={"f_users": users[f.users], "f_pos": items[f.pos_items], "f_neg": items[f.neg_items]})


class MMRecUnLoss(Objective):
    """``retain_weight · BPR(retain) + forget_weight · revBPR(forget) + reg_weight · L2(rows)``."""

    needs_negatives = True
    requires = frozenset()

    def __call__(self, out: ModelOutput, batch: UnlearnBatch, ctx: DistContext) -> LossOutput:  # type: ignore[override]
        o: UnlearnOptions = self.opts
        x = out.extra
        s_pos, s_neg = out.scores()
        f_pos = (x["f_users"] * x["f_pos"]).sum(-1)
        f_neg = (x["f_users"] * x["f_neg"]).sum(-1)
        forward = ctx.batch_mean(F.softplus(s_neg - s_pos), batch.retain.global_rows)
        reverse = ctx.batch_mean(F.softplus(f_pos - f_neg), batch.forget.global_rows)
        rows = (out.users, out.pos, out.neg, x["f_users"], x["f_pos"], x["f_neg"])
        reg = sum(t.pow(2).sum() for t in rows) / (batch.retain.global_rows + batch.forget.global_rows)
        total = o.retain_weight * forward + o.forget_weight * reverse + o.reg_weight * reg
        parts = {"forward_bpr": forward.detach(), "reverse_bpr": reverse.detach(), "reg": reg.detach()}
        return LossOutput(total, parts)


def unlearn_batches(data: RecData, sampler: NegativeSampler, opts: UnlearnOptions, batch_size: int,
                    epoch: int) -> Iterator[UnlearnBatch]:
    """An epoch's steps: the shuffled forget set in ``forget_batch_size`` slices, each with retained pairs."""
    g = torch.Generator()
    g.manual_seed(derive_seed(opts.seed, epoch, 7))
    fu, fi = canonical_pairs(torch.from_numpy(data.forgotten.users.copy()), torch.from_numpy(data.forgotten.items.copy()),
                             data.n_items)
    ru, ri = canonical_pairs(torch.from_numpy(data.train.users.copy()), torch.from_numpy(data.train.items.copy()),
                             data.n_items)
    f_perm, r_perm = torch.randperm(fu.numel(), generator=g), torch.randperm(ru.numel(), generator=g)
    r_at = 0
    for start in range(0, fu.numel(), opts.forget_batch_size):
        fidx = f_perm[start : start + opts.forget_batch_size]
        if r_at + batch_size > r_perm.numel():  # a fresh pass over the retain set
            r_perm, r_at = torch.randperm(ru.numel(), generator=g), 0
        ridx = r_perm[r_at : r_at + batch_size]
        r_at += batch_size
        u, i = ru[ridx], ri[ridx]
        f_u, f_i = fu[fidx], fi[fidx]
        yield UnlearnBatch(Batch(u, i, sampler.sample(u, g)), Batch(f_u, f_i, sampler.sample(f_u, g)))


def resolve_reset(how: str, kind: str, model_cls: type, weight_decay: float) -> str:
    """``auto``: what Gold's training leaves of a row without data. Items: their initialisation (never
    sampled, never touched). Users: zeros where the method's loss or the optimizer's weight decay
    shrinks whole tables (``Recommender.untrained_rows``, BM3, LIRDRec), else their initialisation."""
    if how != "auto":
        return how
    if kind == "user" and (getattr(model_cls, "untrained_rows", "init") == "zero" or weight_decay > 0):
        return "zero"
    return "init"


@torch.no_grad()
def reset_rows(model: Recommender, req: ForgetRequest, how: str, fresh: Callable[[], Recommender] | None = None) -> list[str]:
    """Overwrite the request's users' (or items') own slices of every tensor indexed by them, the
    objective's included (:func:`raymmrec.unlearning.reset.reset_state`): ``init`` a freshly initialised
    model's (``fresh()``), ``mean`` the mean of the others, ``zero`` zeros. Returns the tensors written."""
    if req.kind == "interaction" or how == "none":
        return []
    if how == "auto":
        raise ValueError("resolve reset='auto' with resolve_reset first")
    who, ids = ("users", req.users) if req.kind == "user" else ("items", req.items)
    return reset_state(model, who, ids, how, fresh)


@dataclass
class UnlearnResult:
    epochs_run: int
    seconds: float  # fine-tuning wall time (the caller adds setup)
    history: list[dict[str, float]]
    reset: list[str]  # state (parameters, buffers) whose forgotten rows were reset or recomputed
    # why it stopped: "chance" (membership AUC at stop_auc), "plateau", "utility" (retained validation
    # Recall fell past keep_tol: the weights rolled back one epoch), "epochs" (the cap)
    stop_reason: str = "epochs"
    epochs_kept: int = -1  # epochs whose updates the returned weights hold (of the last attempt)
    lr: float | None = None  # the rate of the last attempt (halved on each retry)
    warning: str | None = None  # set when nothing was kept: "nothing forgotten beyond the reset ..."


def fine_tune(model: Recommender, data: RecData, sampler: NegativeSampler, opts: UnlearnOptions, *,
              lr: float, batch_size: int, device: torch.device,
              stop_metric: Callable[[Recommender], float] | None = None,
              keep_metric: Callable[[Recommender], float] | None = None,
              fresh: Callable[[], Recommender] | None = None, req: ForgetRequest | None = None,
              log: Callable[[str], None] | None = None) -> UnlearnResult:
    """Run MMRecUn on ``model`` (already holding the trained weights, built over the retain data).

    ``stop_metric`` is the forgetting watched (membership AUC), ``keep_metric`` the utility kept
    (retained validation Recall, :func:`raymmrec.unlearning.measure.retained_utility`): an epoch that
    takes it more than ``opts.keep_tol`` below its value before unlearning is undone and ends the run.
    """
    view = ScoreView(model)
    objective = MMRecUnLoss(None, opts)
    history: list[dict[str, float]] = []
    ctx = DistContext()
    t0 = time.perf_counter()
    auc0 = math.nan
    if stop_metric is not None and opts.stop_auc is not None:
        model.eval()
        auc0 = stop_metric(model)
        if log:
            log(f"before unlearning: valid_membership_auc {auc0:.4f}")
    watch = keep_metric is not None and opts.keep_tol is not None
    floor, trained = -math.inf, None
    if watch:
        model.eval()
        keep0 = keep_metric(model)
        floor = keep0 * (1.0 - opts.keep_tol) if math.isfinite(keep0) else -math.inf
        trained = _snapshot(model)
        if log:
            log(f"before unlearning: valid_retain_recall {keep0:.4f} (kept above {floor:.4f})")
    reason, kept, run_total, step_lr = "epochs", 0, 0, lr
    for attempt in range(opts.retries + 1):
        if attempt:  # the first epoch at the last rate was undone: start again from the trained weights, half the rate
            step_lr = lr / 2 ** attempt
            if log:
                log(f"retrying from the trained weights at half the rate: lr {step_lr:.3g}")
        reason, kept, n_run = _attempt(model, view, objective, ctx, data, sampler, opts, step_lr, batch_size, device,
                                       stop_metric, keep_metric if watch else None, floor, trained, auc0, history,
                                       attempt, log)
        run_total += n_run
        if kept or reason != "utility":
            break
    warning = None
    if kept == 0 and reason == "utility":
        warning = (f"nothing forgotten beyond the reset: every first unlearning epoch (lr {lr:.3g} down to "
                   f"{step_lr:.3g}) cost more than keep_tol={opts.keep_tol} of the retained validation Recall "
                   f"and was undone; the weights are the trained ones"
                   + (" (an interaction-wise request has no reset: nothing was forgotten)"
                      if req is not None and req.kind == "interaction" else ""))
        if log:
            log("warning: " + warning)
    reset = []
    if req is not None:
        reset = reset_rows(model, req, opts.reset, fresh)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return UnlearnResult(run_total, time.perf_counter() - t0, history, reset, reason, kept, step_lr, warning)


def _attempt(model: Recommender, view: ScoreView, objective: MMRecUnLoss, ctx: DistContext, data: RecData,
             sampler: NegativeSampler, opts: UnlearnOptions, lr: float, batch_size: int, device: torch.device,
             stop_metric: Callable[[Recommender], float] | None, keep_metric: Callable[[Recommender], float] | None,
             floor: float, trained: dict[str, Tensor] | None, auc0: float, history: list[dict[str, float]],
             attempt: int, log: Callable[[str], None] | None) -> tuple[str, int, int]:
    """One run of at most ``opts.epochs`` epochs at ``lr`` from the weights ``model`` holds (the trained
    ones). Returns (why it stopped, epochs kept, epochs run); an epoch past ``floor`` is undone."""
    if trained is not None and attempt:
        model.load_state_dict(trained)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    kept_state = trained  # the weights of the last epoch within keep_tol (none yet: the trained ones)
    prev, epoch = auc0, 0
    for epoch in range(opts.epochs):
        model.train()
        torch.manual_seed(dropout_seed(opts.seed, epoch))
        sums: dict[str, float] = {}
        steps = 0
        for b in unlearn_batches(data, sampler, opts, batch_size, epoch):
            b = b.to(device)
            opt.zero_grad(set_to_none=True)
            out = objective(view(b), b, ctx)
            if not torch.isfinite(out.total):
                raise FloatingPointError(f"unlearning loss became NaN or infinite at epoch {epoch}; "
                                         "try a lower lr or forget_weight")
            out.total.backward()
            opt.step()
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
        logs = {k: v / max(steps, 1) for k, v in sums.items()}
        logs["epoch"] = epoch
        logs["lr"] = lr
        if stop_metric is not None:
            model.eval()
            logs["valid_membership_auc"] = stop_metric(model)
        if keep_metric is not None:
            model.eval()
            logs["valid_retain_recall"] = keep_metric(model)
        history.append(logs)
        if log:
            log("epoch {epoch}: ".format(epoch=epoch) + ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "epoch"))
        if keep_metric is not None and logs["valid_retain_recall"] < floor:  # this epoch cost what is kept: undo it
            model.load_state_dict(kept_state)
            if log:
                log(f"epoch {epoch} undone: valid_retain_recall fell more than keep_tol={opts.keep_tol} below "
                    f"its value before unlearning; keeping {epoch} epoch(s)")
            return "utility", epoch, epoch + 1
        auc = logs.get("valid_membership_auc", math.nan)
        if opts.stop_auc is not None and (auc <= opts.stop_auc or prev - auc < opts.stop_delta):
            return ("chance" if auc <= opts.stop_auc else "plateau"), epoch + 1, epoch + 1
        prev = auc
        if keep_metric is not None:
            kept_state = _snapshot(model)
    return "epochs", opts.epochs, opts.epochs


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def options_from(overrides: dict[str, Any] | None) -> UnlearnOptions:
    """:class:`UnlearnOptions` from ``{name: value}`` (strings parsed), unknown names an error."""
    from raymmrec.config import validate_options

    return validate_options(UnlearnOptions, overrides or {}, "unlearning option")
