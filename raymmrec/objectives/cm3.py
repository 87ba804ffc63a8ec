"""CM3's objective: alignment, user uniformity and similarity-calibrated item uniformity.

With ``ū``, ``ī`` the L2-normalised final representations and ``t`` the temperature (2):

* ``L_align = mean over (u, i+) of ‖ū − ī+‖²``;
* ``L_U = log mean over pairs a < b of exp(−t ‖ū_a − ū_b‖²)`` over the batch's users (duplicates
  included);
* ``L_I = log mean over pairs a < b of exp(−t (‖ī_a − ī_b‖² − 2 + 2 s_ab))`` over the batch's
  *negative* items, where ``s_ab = clamp(cos(mix_a, mix_b), min_sim, max_sim)`` is the cosine of
  the two items' fused modality vectors, not detached: since ``‖x − y‖² = 2 − 2 cos``, a pair of
  items whose contents differ is pushed apart up to ``e^{2t}`` times harder than a pair of twins;
* ``L = L_align + gamma / 2 · (L_U + L_I)``; no BPR term, no L2 term.

Pair means run over the *global* batch: under DDP every rank gathers all ranks' rows (with
gradients) and computes the same uniformity values, which is exact (see
:meth:`~raymmrec.dist.DistContext.all_gather`). Squared distances of unit vectors are taken as
``2 − 2 a·b`` (one matrix product), and a mean over ``a < b`` of a symmetric kernel equals its mean
over ``a ≠ b``, so each term is one masked log-sum-exp over the ``N × N`` matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, LossOutput, ModelOutput
from raymmrec.objectives.base import Objective
from raymmrec.registry import register_objective


def log_mean_offdiag_exp(x: Tensor) -> Tensor:
    """``log mean over a ≠ b of exp(x_ab)`` for a symmetric ``N × N`` matrix; 0 when ``N < 2``."""
    n = x.shape[0]
    if n < 2:
        return x.new_zeros(())
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    return torch.logsumexp(x.masked_fill(eye, float("-inf")).reshape(-1), dim=0) - math.log(n * (n - 1))


def uniformity(z: Tensor, t: float, calibration: Tensor | None = None) -> Tensor:
    """``log mean_{a<b} exp(−t (‖z_a − z_b‖² [− 2 + 2 s_ab]))`` for unit rows ``z`` (``N × D``)."""
    sq = (2.0 - 2.0 * (z @ z.t())).clamp_min(0.0)
    if calibration is not None:
        sq = sq - 2.0 + 2.0 * calibration
    return log_mean_offdiag_exp(-t * sq)


@register_objective("cm3")
class CM3Loss(Objective):
    """Reads the batch's users, positives, negatives and ``extra["neg_mix"]``."""

    needs_negatives = True
    requires = frozenset({"cm3"})
    config_fields = ("gamma", "temperature", "min_sim", "max_sim")

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        if out.users is None or out.pos is None or out.neg is None or "neg_mix" not in out.extra:
            raise ValueError("the cm3 objective needs users, positives, negatives and their fused vectors")
        cfg, n = self.cfg, batch.global_rows
        u, p = F.normalize(out.users, dim=-1), F.normalize(out.pos, dim=-1)
        neg = F.normalize(out.neg.reshape(-1, out.neg.shape[-1]), dim=-1)
        mix = out.extra["neg_mix"].reshape(-1, out.extra["neg_mix"].shape[-1])
        align = ctx.batch_mean((u - p).pow(2).sum(-1), n)
        unif_u = uniformity(ctx.all_gather(u), cfg.temperature)
        mix_all = F.normalize(ctx.all_gather(mix), dim=-1)
        sim = (mix_all @ mix_all.t()).clamp(cfg.min_sim, cfg.max_sim)
        unif_i = uniformity(ctx.all_gather(neg), cfg.temperature, sim)
        half = cfg.gamma / 2.0
        w = ctx.world_size
        parts = {"align": align.detach() / w, "unif_user": unif_u.detach() / w, "unif_item": unif_i.detach() / w}
        value = parts["align"] + half * (parts["unif_user"] + parts["unif_item"])
        return LossOutput(align + half * (unif_u + unif_i), parts, value)
