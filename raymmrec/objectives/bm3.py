"""BM3's objective (Zhou et al., WWW 2023): bootstrap cosine losses without negatives.

``L = L_rec + cl_weight * (L_align + L_mask) + reg_weight * L_reg`` (``model.cl_terms`` keeps one of
``L_align``, ``L_mask`` alone: the paper's ablation) where every cosine term is a
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
    """Reads ``extra``: online, target, layout, u_index, i_index, reg (see :meth:`BM3.forward`).

    Every cosine term pairs an online row (with gradient) with a target row (without), so a sum
    of ``cos`` over batch rows is ``Σ ô · W`` over the distinct online rows, where ``W`` collects
    the normalised targets each row meets in the batch: ``W_u = Σ_{rows of u} î_target`` for
    ``L_rec``'s user term (and the mirror for items), ``count_i · î_target`` for ``L_align`` and
    ``count_i · m̂_target`` for ``L_mask``. ``W`` is built once without gradient; the loss is then
    one product and sum per part, and its gradient reaches each distinct row once. Rows are
    normalised as ``F.normalize`` does (``F.cosine_similarity`` gives the same values up to rounding).
    """

    needs_negatives = False
    requires = frozenset({"bm3"})
    config_fields = ("reg_weight", "cl_weight", "cl_terms")
    column_sharding = True  # exact on column blocks: scores and norms are reduced (raymmrec.shard)

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        x, n = out.extra, batch.global_rows
        nu, ni, n_mod = (int(v) for v in x["layout"])
        ui, ii = x["u_index"], x["i_index"]
        rows = float(ui.numel())  # this rank's batch rows: each term is a sum of (1 - cos) over them
        online = unit(x["online"])
        with torch.no_grad():
            target = unit(x["target"])
            d = target.shape[1]
            u_tg, i_tg, m_tg = target[:nu], target[nu : nu + ni], target[nu + ni :].view(n_mod, ni, d)
            # occurrences of each distinct item (index_add_: no device sync, unlike bincount on CUDA)
            counts = target.new_zeros(ni, 1).index_add_(0, ii, target.new_ones(ii.numel(), 1))
            w_u = torch.zeros_like(u_tg).index_add_(0, ui, gather(i_tg, ii))
            w_i = torch.zeros_like(i_tg).index_add_(0, ii, gather(u_tg, ui))
        u_on, i_on, m_on = online[:nu], online[nu : nu + ni], online[nu + ni :].view(n_mod, ni, d)
        rec = ctx.batch_mean(2.0 * rows - (u_on * w_u).sum() - (i_on * w_i).sum(), n)
        terms = {"rec": rec}
        keep = self.cfg.cl_terms  # the ablations: one multimodal term alone
        if keep in ("both", "align"):
            terms["align"] = ctx.batch_mean(n_mod * rows - (m_on * (counts * i_tg)).sum(), n)
        if keep in ("both", "mask"):
            terms["mask"] = ctx.batch_mean(n_mod * rows - (m_on * (counts * m_tg)).sum(), n)
        terms["reg"] = x["reg"]  # full tables: the same on every rank
        cl, rw = self.cfg.cl_weight, self.cfg.reg_weight
        multimodal = [k for k in ("align", "mask") if k in terms]
        total = rec + cl * sum(terms[k] for k in multimodal) + rw * terms["reg"]
        n = ctx.world_size
        parts = {k: v.detach() / n for k, v in terms.items()}
        value = parts["rec"] + cl * sum(parts[k] for k in multimodal) + rw * parts["reg"]
        return LossOutput(total, parts, value)
