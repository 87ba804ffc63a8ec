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

``model.calibration=false`` (the paper's ablation) drops ``s_ab``: ``L_I`` is then the plain
``log mean exp(−t ‖ī_a − ī_b‖²)``, like ``L_U``.

Pair means run over the *global* batch: under DDP every rank gathers all ranks' rows (with
gradients) and computes the same uniformity values, which is exact (see
:meth:`~raymmrec.dist.DistContext.all_gather`). Squared distances of unit vectors are taken as
``2 − 2 a·b`` (one matrix product), and a mean over ``a < b`` of a symmetric kernel equals its mean
over ``a ≠ b``; repeated users and items enter once with their multiplicity (:func:`uniformity`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, LossOutput, ModelOutput, gather
from raymmrec.objectives.base import Objective
from raymmrec.registry import register_objective


class _Gram(torch.autograd.Function):
    """``z zᵀ`` whose backward is one matrix product, ``(g + gᵀ) z``, instead of autograd's two."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        return z @ z.t()

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return (g + g.t()) @ z


def uniformity(z: Tensor, t: float, calibration: Tensor | None = None, counts: Tensor | None = None) -> Tensor:
    """``log mean over pairs a < b of exp(−t (‖z_a − z_b‖² [− 2 + 2 s_ab]))`` for unit rows ``z``.

    With ``G = z zᵀ`` and ``‖z_a − z_b‖² = 2 − 2 G_ab`` the kernel is ``exp(2t (G_ab − s_ab))``, where
    ``s = 1`` without calibration. It is evaluated as ``exp(2t (G − s) − shift)`` with ``shift = 0``
    (plain) or ``2t`` (calibrated), so every entry lies in ``(0, 1]`` (no overflow, no log-sum-exp
    pass), and ``shift`` is added back after the log.

    ``counts``: row ``i`` of ``z`` stands for ``counts[i]`` identical rows of the batch (a user or
    item drawn several times). The pairs are then those of the expanded batch, duplicates included:
    ``sum over a ≠ b = cᵀ K c − sum over i of c_i K_ii``, so a batch of 2048 rows with 1,200
    distinct ids costs a 1,200² kernel, not a 2,048² one. 0 for fewer than 2 rows.
    """
    c = torch.ones(z.shape[0], dtype=z.dtype, device=z.device) if counts is None else counts.to(z.dtype)
    n = float(c.sum())
    if n < 2:
        return z.new_zeros(())
    gram = _Gram.apply(z)
    shift = 0.0 if calibration is None else 2.0 * t
    kernel = torch.exp((gram - (1.0 if calibration is None else calibration)) * (2.0 * t) - shift)
    pairs = torch.dot(kernel @ c, c) - torch.dot(kernel.diagonal(), c)
    return torch.log(pairs) + shift - math.log(n * (n - 1))


def distinct_rows(ids: Tensor, *tables: Tensor) -> tuple[Tensor, ...]:
    """Multiplicity of each distinct id and, for every table, the row of its first occurrence.

    Rows with the same id are the same function of the parameters, so keeping one of them with
    its count leaves both the value and the gradient of a pair mean unchanged.
    """
    uniq, inverse = torch.unique(ids, return_inverse=True)
    pos = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=pos.dtype, device=ids.device)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    counts = torch.bincount(inverse, minlength=uniq.numel())
    return (counts, *(gather(tab, first) for tab in tables))


@register_objective("cm3")
class CM3Loss(Objective):
    """Reads the batch's users, positives, negatives and ``extra["neg_mix"]``."""

    needs_negatives = True
    requires = frozenset({"cm3"})
    config_fields = ("gamma", "temperature", "min_sim", "max_sim", "calibration")

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        cfg, n = self.cfg, batch.global_rows
        if out.users is None or out.pos is None or out.neg is None or (cfg.calibration and "neg_mix" not in out.extra):
            raise ValueError("the cm3 objective needs users, positives, negatives and their fused vectors")
        u, p = F.normalize(out.users, dim=-1), F.normalize(out.pos, dim=-1)
        neg = F.normalize(out.neg.reshape(-1, out.neg.shape[-1]), dim=-1)
        align = ctx.batch_mean((u - p).pow(2).sum(-1), n)
        # pair means over the global batch: every rank gathers all rows and computes the same value
        counts, u_rows = distinct_rows(ctx.all_gather(batch.users), ctx.all_gather(u))
        unif_u = uniformity(u_rows, cfg.temperature, counts=counts)
        neg_ids = ctx.all_gather(batch.neg_items.reshape(-1))
        if cfg.calibration:
            mix = out.extra["neg_mix"].reshape(-1, out.extra["neg_mix"].shape[-1])
            counts, neg_rows, mix_rows = distinct_rows(neg_ids, ctx.all_gather(neg), ctx.all_gather(mix))
            mix_rows = F.normalize(mix_rows, dim=-1)
            sim = (mix_rows @ mix_rows.t()).clamp(cfg.min_sim, cfg.max_sim)
            unif_i = uniformity(neg_rows, cfg.temperature, sim, counts=counts)
        else:  # the ablation without calibration: plain item uniformity
            counts, neg_rows = distinct_rows(neg_ids, ctx.all_gather(neg))
            unif_i = uniformity(neg_rows, cfg.temperature, counts=counts)
        half = cfg.gamma / 2.0
        w = ctx.world_size
        parts = {"align": align.detach() / w, "unif_user": unif_u.detach() / w, "unif_item": unif_i.detach() / w}
        value = parts["align"] + half * (parts["unif_user"] + parts["unif_item"])
        return LossOutput(align + half * (unif_u + unif_i), parts, value)
