"""BM3's objective (Zhou et al., WWW 2023): bootstrap cosine losses without negatives.

``L = L_rec + cl_weight * (L_align + L_mask) + reg_weight * L_reg`` where every cosine term is a
mean over the batch rows of ``1 - cos(online, target)`` (targets under stop-gradient, dropout
applied by the model) and ``L_reg = (‖H_U‖ + ‖H_I‖) / n_items`` over the full tables, which every
rank computes identically. Batch means use the global row count, so DDP is exact.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from raymmrec.models.base import Batch, LossOutput, ModelOutput
from raymmrec.objectives.base import Objective
from raymmrec.registry import register_objective
from raymmrec.dist import DistContext


def cos_term(ctx: DistContext, online: Tensor, target: Tensor, global_rows: int) -> Tensor:
    """Per-rank surrogate of ``mean_rows (1 - cos(online, target))`` over the global batch."""
    return ctx.batch_mean(1.0 - F.cosine_similarity(online, target, dim=-1), global_rows)


@register_objective("bm3")
class BM3Loss(Objective):
    """Reads ``extra``: u_online, u_target, i_online, i_target, <m>_online, <m>_target, reg."""

    needs_negatives = False
    requires = frozenset({"bm3"})
    config_fields = ("reg_weight", "cl_weight")

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        x, n = out.extra, batch.global_rows
        rec = cos_term(ctx, x["u_online"], x["i_target"], n) + cos_term(ctx, x["i_online"], x["u_target"], n)
        align = rec.new_zeros(())
        mask = rec.new_zeros(())
        for m in sorted(k[: -len("_online")] for k in x if k.startswith("m:") and k.endswith("_online")):
            align = align + cos_term(ctx, x[f"{m}_online"], x["i_target"], n)
            mask = mask + cos_term(ctx, x[f"{m}_online"], x[f"{m}_target"], n)
        reg = x["reg"]  # full tables: the same on every rank
        cl, rw = self.cfg.cl_weight, self.cfg.reg_weight
        total = rec + cl * (align + mask) + rw * reg
        n = ctx.world_size
        parts = {k: v.detach() / n for k, v in {"rec": rec, "align": align, "mask": mask, "reg": reg}.items()}
        value = parts["rec"] + cl * (parts["align"] + parts["mask"]) + rw * parts["reg"]
        return LossOutput(total, parts, value)
