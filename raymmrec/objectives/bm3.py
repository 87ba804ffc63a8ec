"""BM3's objective (Zhou et al., WWW 2023): bootstrap cosine losses without negatives.

``L = L_rec + cl_weight * (L_align + L_mask) + reg_weight * L_reg`` where every cosine term is a
mean over the batch rows of ``1 - cos(online, target)`` (targets under stop-gradient, dropout
applied by the model) and ``L_reg = (‖H_U‖ + ‖H_I‖) / n_items`` over the full tables, which every
rank computes identically. Batch means use the global row count, so DDP is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from raymmrec.models.base import Batch, LossOutput, ModelOutput, gather
from raymmrec.objectives.base import Objective
from raymmrec.registry import register_objective
from raymmrec.dist import DistContext


def unit(t: Tensor) -> Tensor:
    """Rows scaled to unit length (``max(‖x‖, 1e-12)``, as ``F.normalize``)."""
    return F.normalize(t, dim=-1)


@register_objective("bm3")
class BM3Loss(Objective):
    """Reads ``extra``: u_online, u_target (distinct users), i_online, i_target, <m>_online, <m>_target
    (distinct items), u_index and i_index (batch row -> distinct row), reg.

    ``1 - cos(a, b)`` is computed as ``1 - â·b̂`` on rows normalised once per distinct user or item
    (the same value as ``F.cosine_similarity`` up to rounding, which clamps the product of the norms
    at 1e-8 instead); terms between two item views are summed over distinct items weighted by how
    often each occurs in the batch, which equals the sum over batch rows.
    """

    needs_negatives = False
    requires = frozenset({"bm3"})
    config_fields = ("reg_weight", "cl_weight")

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        x, n = out.extra, batch.global_rows
        ui, ii = x["u_index"], x["i_index"]
        u_on, i_on, u_tg, i_tg = (unit(x[k]) for k in ("u_online", "i_online", "u_target", "i_target"))
        rec = ctx.batch_mean(1.0 - (gather(u_on, ui) * gather(i_tg, ii)).sum(-1), n) \
            + ctx.batch_mean(1.0 - (gather(i_on, ii) * gather(u_tg, ui)).sum(-1), n)
        counts = torch.bincount(ii, minlength=i_on.shape[0]).to(i_on.dtype)
        align = rec.new_zeros(())
        mask = rec.new_zeros(())
        for m in sorted(k[: -len("_online")] for k in x if k.startswith("m:") and k.endswith("_online")):
            m_on = unit(x[f"{m}_online"])
            align = align + ctx.batch_mean(counts * (1.0 - (m_on * i_tg).sum(-1)), n)
            mask = mask + ctx.batch_mean(counts * (1.0 - (m_on * unit(x[f"{m}_target"])).sum(-1)), n)
        reg = x["reg"]  # full tables: the same on every rank
        cl, rw = self.cfg.cl_weight, self.cfg.reg_weight
        total = rec + cl * (align + mask) + rw * reg
        n = ctx.world_size
        parts = {k: v.detach() / n for k, v in {"rec": rec, "align": align, "mask": mask, "reg": reg}.items()}
        value = parts["rec"] + cl * (parts["align"] + parts["mask"]) + rw * parts["reg"]
        return LossOutput(total, parts, value)
