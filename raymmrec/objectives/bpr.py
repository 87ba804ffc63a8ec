"""BPR (Rendle et al., UAI 2009) with MMRec's EmbLoss regulariser, exact under DDP.

``L = mean_rows softplus(s_neg - s_pos) + reg_weight * (‖U_b‖ + ‖P_b‖ + ‖N_b‖) / B``, where the
norms are (non-squared) Frobenius norms of the batch's ego tables (``ModelOutput.ego``) and ``B``
the batch rows. With S negatives per positive, the ranking term averages over all B × S pairs.

``objective_options.reduction=sum`` (for the NBPO authors' recipe, with ``train.optimizer=sgd``)
sums the ranking term over every (user, positive, negative) triple of the global batch instead of
averaging it, and scales the EmbLoss by the same count.

The norm does not split over ranks: the sum of per-rank ``‖U_r‖ / (B/N)`` grows like ``sqrt(N)``.
Here each norm is taken over the *global* batch (squared norms all-reduced), differentiable with
respect to this rank's rows, so N ranks reproduce the single-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.nn import functional as F

from raymmrec.models.base import Batch, LossOutput, ModelOutput
from raymmrec.objectives.base import Objective
from raymmrec.registry import register_objective
from raymmrec.dist import DistContext


def emb_loss(ctx: DistContext, tables: tuple[Tensor, ...], global_rows: int) -> tuple[Tensor, Tensor]:
    """(per-rank surrogate, global value) of MMRec's EmbLoss: sum of table norms / global rows."""
    if not tables:
        raise ValueError("EmbLoss needs the batch's ego tables (ModelOutput.ego)")
    total = sum(ctx.global_norm(t) for t in tables) / global_rows
    return total * ctx.world_size, total.detach()


def ranking_term(out: ModelOutput, batch: Batch, ctx: DistContext) -> Tensor:
    """Per-rank surrogate of ``mean softplus(s_neg - s_pos)`` over the global batch (B × S pairs)."""
    pos, neg = out.scores()
    per_row = F.softplus(neg - (pos if neg.dim() == 1 else pos.unsqueeze(1)))
    if per_row.dim() == 2:
        per_row = per_row.mean(1)
    return ctx.batch_mean(per_row, batch.global_rows)


@dataclass(frozen=True)
class BPROptions:
    reduction: str = "mean"  # mean (the default, with Adam) | sum over the global batch's triples

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")


@register_objective("bpr")
class BPRLoss(Objective):
    """Pairwise ranking: positives above sampled negatives, plus EmbLoss on the ego tables."""

    needs_negatives = True
    config_fields = ("reg_weight",)
    options_cls = BPROptions
    column_sharding = True  # exact on column blocks: scores and norms are reduced (raymmrec.shard)

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        rank = ranking_term(out, batch, ctx)
        reg, reg_value = emb_loss(ctx, out.ego, batch.global_rows)
        if self.opts.reduction == "sum":  # every triple of the global batch counts once
            neg = batch.neg_items
            scale = float(batch.global_rows * (neg.shape[1] if neg is not None and neg.dim() == 2 else 1))
            rank, reg, reg_value = rank * scale, reg * scale, reg_value * scale
        w, n = self.cfg.reg_weight, ctx.world_size
        parts = {"bpr": rank.detach() / n, "reg": w * reg_value / n}  # this rank's shares of the values
        return LossOutput(rank + w * reg, parts, parts["bpr"] + parts["reg"])
