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

Column-sharded (``train.shard=columns``): each rank holds its block of every row's columns. Every
whole-row quantity comes from partial sums over the blocks, summed over the ranks: the norms (one
scalar per row), the alignment distances (one per row) and the Gram matrices of the uniformity and
calibration terms (``n × n`` partial products, smaller than the rows once ``B · D`` exceeds ``n / 2``
per rank, and their product split over the ranks as well).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, LossOutput, ModelOutput, gather
from raymmrec.objectives.base import Objective
from raymmrec.registry import register_objective
from raymmrec.shard import Columns, unit_rows


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


def uniformity(z: Tensor, t: float, calibration: Tensor | None = None, counts: Tensor | None = None,
               cols: Columns | None = None) -> Tensor:
    """``log mean over pairs a < b of exp(−t (‖z_a − z_b‖² [− 2 + 2 s_ab]))`` for unit rows ``z``.

    With ``G = z zᵀ`` and ``‖z_a − z_b‖² = 2 − 2 G_ab`` the kernel is ``exp(2t (G_ab − s_ab))``, where
    ``s = 1`` without calibration. It is evaluated as ``exp(2t (G − s) − shift)`` with ``shift = 0``
    (plain) or ``2t`` (calibrated), so every entry lies in ``(0, 1]`` (no overflow, no log-sum-exp
    pass), and ``shift`` is added back after the log.

    ``counts``: row ``i`` of ``z`` stands for ``counts[i]`` identical rows of the batch (a user or
    item drawn several times). The pairs are then those of the expanded batch, duplicates included:
    ``sum over a ≠ b = cᵀ K c − sum over i of c_i K_ii``, so a batch of 2048 rows with 1,200
    distinct ids costs a 1,200² kernel, not a 2,048² one. 0 for fewer than 2 rows.

    ``cols``: ``z`` holds this rank's block of columns; the partial Gram matrices are summed over the ranks.
    """
    c = torch.ones(z.shape[0], dtype=z.dtype, device=z.device) if counts is None else counts.to(z.dtype)
    n = float(c.sum())
    if n < 2:
        return z.new_zeros(())
    gram = _Gram.apply(z)
    if cols is not None:
        gram = cols.reduce(gram)
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
    column_sharding = True  # exact on column blocks: norms, distances and Gram matrices are reduced
    config_fields = ("gamma", "temperature", "min_sim", "max_sim", "calibration")

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        cfg, n = self.cfg, batch.global_rows
        if out.users is None or out.pos is None or out.neg is None or (cfg.calibration and "neg_mix" not in out.extra):
            raise ValueError("the cm3 objective needs users, positives, negatives and their fused vectors")
        cols = ctx.columns  # column-sharded: the rows are this rank's blocks of columns
        width = out.users.shape[-1]
        b = out.users.shape[0]
        # users, positives and negatives normalised together (one sum over the column blocks)
        unit = unit_rows(torch.cat([out.users, out.pos, out.neg.reshape(-1, width)]), cols)
        u, p, neg = unit[:b], unit[b : 2 * b], unit[2 * b :]
        dist_sq = (u - p).pow(2).sum(-1)
        align = ctx.batch_mean(dist_sq if cols is None else cols.reduce(dist_sq), n)
        # pair means over the global batch: every rank gathers all rows and computes the same value
        counts, u_rows = distinct_rows(ctx.all_gather(batch.users), ctx.all_gather(u))
        unif_u = uniformity(u_rows, cfg.temperature, counts=counts, cols=cols)
        neg_ids = ctx.all_gather(batch.neg_items.reshape(-1))
        if cfg.calibration:
            mix = out.extra["neg_mix"].reshape(-1, out.extra["neg_mix"].shape[-1])
            counts, neg_rows, mix_rows = distinct_rows(neg_ids, ctx.all_gather(neg), ctx.all_gather(mix))
            mix_rows = unit_rows(mix_rows, cols)
            sim = mix_rows @ mix_rows.t()
            sim = (sim if cols is None else cols.reduce(sim)).clamp(cfg.min_sim, cfg.max_sim)
            unif_i = uniformity(neg_rows, cfg.temperature, sim, counts=counts, cols=cols)
        else:  # the ablation without calibration: plain item uniformity
            counts, neg_rows = distinct_rows(neg_ids, ctx.all_gather(neg))
            unif_i = uniformity(neg_rows, cfg.temperature, counts=counts, cols=cols)
        half = cfg.gamma / 2.0
        w = ctx.world_size
        parts = {"align": align.detach() / w, "unif_user": unif_u.detach() / w, "unif_item": unif_i.detach() / w}
        value = parts["align"] + half * (parts["unif_user"] + parts["unif_item"])
        return LossOutput(align + half * (unif_u + unif_i), parts, value)
