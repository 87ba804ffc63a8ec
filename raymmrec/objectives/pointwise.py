"""BPO and NBPO (Yu & Qin, "Sampler Design for Implicit Feedback Data by Noisy-label Robust Learning",
SIGIR 2020; code: Wenhui-Yu/NBPO), as objectives on autograd for any pairwise model.

With ``R`` a model's score of (user, item) and ``ŷ = σ(R)`` the preference probability, NBPO adds a
label-flip model ``γ = σ(g)``, ``g_ui = P_u · Q_i`` (its own ``U × K1`` and ``I × K1`` tables): the
probability that an item the user prefers is nevertheless unlabelled. An observed pair then has
probability ``ŷ (1 − γ)`` and an unlabelled one ``(1 − ŷ) + ŷ γ``. Per positive (u, i) and each of
its S sampled unlabelled items j, the maximised per-triple objectives (METHODS.md 5(c)):

* ``bpo``: ``log σ(R_ui) + log(1 − σ(R_uj))``;
* ``nbpo_original``: ``log[ŷ_ui (1 − γ_ui)] + log[(1 − ŷ_uj) + ŷ_uj γ_uj]``;
* ``nbpo_surrogate`` (surrogate likelihood, no logs): ``ŷ_ui (1 − γ_ui) + (1 − ŷ_uj) + ŷ_uj γ_uj``;
* ``nbpo`` (the authors' final model, surrogate *gradient*): the gradient of
  ``sg(1 − γ_ui) log ŷ_ui + sg(ŷ_ui) log(1 − γ_ui) + log(1 − ŷ_uj) + sg(γ_uj) log ŷ_uj + sg(ŷ_uj) log γ_uj``
  with ``sg`` a stop-gradient, whose ascent directions are the authors' hand-written ones:
  ``∂/∂R = (1 − γ)(1 − ŷ)`` and ``∂/∂g = −ŷ γ`` for a positive, ``γ (1 − ŷ) − ŷ`` and ``ŷ (1 − γ)``
  for an unlabelled item. It is *not* the gradient of ``nbpo_original``.

Every log is a log-sigmoid (``log(1 − σ(x)) = log σ(−x)``, ``log(a + b)`` by ``logaddexp``), so
float32 never takes ``log(0)``. ``clip=True`` clamps scores and flip logits to [−10, 10] (zero
gradient outside), off by default. It mimics the *values* of the authors' clipped σ, not their
updates: their hand-written directions keep using the clipped σ beyond ±10, where they are largest
for the most wrongly scored pairs, while a clamp stops those pairs from learning.

**Weighting.** The authors' positive term sits inside the loop over the S negatives, so a positive
counts S times: per positive ``S · pos + Σ_j neg_j`` (``positive_per_negative=True``, the default);
``False`` counts it once. **Reduction.** ``mean`` (the default, with Adam): minimise the mean over
the global batch's positives of ``−(that) / S``, plus the model's EmbLoss (``reg_weight``) and
``flip_reg / 2 ·`` the batch mean of ``‖P_u‖² + ‖Q_i‖² + Σ_j ‖Q_j‖² / S``. ``sum`` (the authors'
recipe, with ``train.optimizer=sgd``): the same data term summed over every triple of the global
batch, and ``flip_reg / 2 · (‖P‖² + ‖Q‖²)`` over the full flip tables, which is the authors'
per-batch decay of every row; the preference model's full-table decay is ``train.weight_decay``
(the model's EmbLoss, if ``reg_weight`` > 0, is scaled by the same ``B · S`` as the data term; the
authors' recipe sets ``reg_weight=0``).
Both are exact under DDP (batch terms over the global batch, full-table terms on every rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, LossOutput, ModelOutput, gather
from raymmrec.objectives.base import Objective
from raymmrec.objectives.bpr import emb_loss
from raymmrec.registry import register_objective

CLIP = 10.0


@dataclass(frozen=True)
class PointwiseOptions:
    reduction: str = "mean"  # mean (project default, with Adam) | sum (the authors': every triple summed)
    positive_per_negative: bool = True  # the authors count a positive's term once per sampled negative
    clip: bool = False  # the authors' hard sigmoid clipping at +-10

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")


@dataclass(frozen=True)
class FlipOptions(PointwiseOptions):
    flip_dim: int = 50  # K1, width of the flip model's tables
    flip_reg: float = 1.0  # weight of the flip tables' squared norms (the authors' lambda_phi)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flip_dim < 1 or self.flip_reg < 0:
            raise ValueError(f"flip_dim must be >= 1 and flip_reg >= 0, got {self.flip_dim}, {self.flip_reg}")


class FlipModel(nn.Module):
    """``g_ui = P_u · Q_i``, initialised as the authors do: ``P ~ 5 U[0,1)/√K1``, ``Q ~ −5 U[0,1)/√K1``.

    So ``g`` starts near ``−25 K1 / (4 K1) = −6.25`` and the flip probability ``γ = σ(g)`` near 0.002.
    """

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        scale = 5.0 / math.sqrt(dim)
        self.P = nn.Parameter(torch.rand(n_users, dim) * scale)
        self.Q = nn.Parameter(torch.rand(n_items, dim) * -scale)

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flip logits of (user, positive) ``B`` and (user, negative) ``B × S`` pairs, and the rows'
        squared norms ``‖P_u‖² + ‖Q_i‖² + Σ_j ‖Q_j‖² / S`` (``B``), from one gather of each table."""
        p, q_pos, q_neg = gather(self.P, users), gather(self.Q, pos), gather(self.Q, neg)
        g_pos = (p * q_pos).sum(-1)
        g_neg = (q_neg * p.unsqueeze(1)).sum(-1)
        sq = p.pow(2).sum(-1) + q_pos.pow(2).sum(-1) + q_neg.pow(2).sum(-1).mean(1)
        return g_pos, g_neg, sq


class PointwiseLoss(Objective):
    """Shared machinery; subclasses define :meth:`terms` (maximised positive and negative terms)."""

    needs_negatives = True
    config_fields = ("reg_weight",)
    options_cls = PointwiseOptions
    uses_flip = False

    def make_module(self, n_users: int, n_items: int) -> nn.Module | None:
        return FlipModel(n_users, n_items, self.opts.flip_dim) if self.uses_flip else None

    def terms(self, r_pos: Tensor, r_neg: Tensor, g_pos: Tensor | None, g_neg: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        opts, n = self.opts, batch.global_rows
        r_pos, r_neg = out.scores()
        r_neg = r_neg if r_neg.dim() == 2 else r_neg.unsqueeze(1)  # B × S
        s = r_neg.shape[1]
        g_pos = g_neg = rows = None
        if self.uses_flip:
            neg_items = batch.neg_items if batch.neg_items.dim() == 2 else batch.neg_items.unsqueeze(1)
            g_pos, g_neg, rows = self.module(batch.users, batch.pos_items, neg_items)
        if opts.clip:
            r_pos, r_neg = r_pos.clamp(-CLIP, CLIP), r_neg.clamp(-CLIP, CLIP)
            if g_pos is not None:
                g_pos, g_neg = g_pos.clamp(-CLIP, CLIP), g_neg.clamp(-CLIP, CLIP)
        pos, neg = self.terms(r_pos, r_neg, g_pos, g_neg)
        per_row = (s if opts.positive_per_negative else 1) * pos + neg.sum(1)  # maximised, per positive
        scale = float(n * s) if opts.reduction == "sum" else 1.0  # sum over the global batch's triples
        data = -ctx.batch_mean(per_row / s, n) * scale
        reg, reg_value = emb_loss(ctx, out.ego, n) if self.cfg.reg_weight else (data.new_zeros(()),) * 2
        w, world = self.cfg.reg_weight, ctx.world_size
        total = data + w * reg * scale
        parts = {"data": data.detach() / world, "reg": w * reg_value * scale / world}
        if self.uses_flip:
            if opts.reduction == "sum":  # full tables: the same on every rank, added as is
                flip = 0.5 * opts.flip_reg * (self.module.P.pow(2).sum() + self.module.Q.pow(2).sum())
                total, flip_value = total + flip, flip.detach() / world
            else:
                flip = 0.5 * opts.flip_reg * ctx.batch_mean(rows, n)
                total, flip_value = total + flip, flip.detach() / world
            parts["flip_reg"] = flip_value
            with torch.no_grad():  # the mean flip probability of the batch's pairs, to watch it move
                parts["gamma_pos"] = ctx.batch_mean(torch.sigmoid(g_pos), n) / world
        value = sum(v for k, v in parts.items() if k != "gamma_pos")
        return LossOutput(total, parts, value)


@register_objective("bpo")
class BPOLoss(PointwiseLoss):
    """Bayesian point-wise optimisation: observed pairs as positives, sampled items as negatives."""

    def terms(self, r_pos, r_neg, g_pos, g_neg):  # noqa: ANN001, ANN201
        return F.logsigmoid(r_pos), F.logsigmoid(-r_neg)


class _FlipLoss(PointwiseLoss):
    options_cls = FlipOptions
    uses_flip = True


@register_objective("nbpo")
class NBPOLoss(_FlipLoss):
    """NBPO as the authors train it: surrogate gradients through stop-gradient weights.

    Positives and negatives go through each elementwise step together (``B × (1 + S)``), and
    ``log σ(−x) = log σ(x) − x``: an MF step is so small that the number of operations sets its cost.
    """

    def terms(self, r_pos, r_neg, g_pos, g_neg):  # noqa: ANN001, ANN201
        r, g = torch.cat([r_pos.unsqueeze(1), r_neg], 1), torch.cat([g_pos.unsqueeze(1), g_neg], 1)
        ls_r, ls_g = F.logsigmoid(r), F.logsigmoid(g)
        y, gam = ls_r.detach().exp(), ls_g.detach().exp()  # ŷ and γ, as weights only
        pos = (1 - gam[:, 0]) * ls_r[:, 0] + y[:, 0] * (ls_g[:, 0] - g[:, 0])
        neg = (ls_r[:, 1:] - r[:, 1:]) + gam[:, 1:] * ls_r[:, 1:] + y[:, 1:] * ls_g[:, 1:]
        return pos, neg


@register_objective("nbpo_original")
class NBPOOriginalLoss(_FlipLoss):
    """The likelihood itself: ``log ŷ(1 − γ)`` and ``log[(1 − ŷ) + ŷ γ]`` (vanishing gradients)."""

    def terms(self, r_pos, r_neg, g_pos, g_neg):  # noqa: ANN001, ANN201
        pos = F.logsigmoid(r_pos) + F.logsigmoid(-g_pos)
        neg = torch.logaddexp(F.logsigmoid(-r_neg), F.logsigmoid(r_neg) + F.logsigmoid(g_neg))
        return pos, neg


@register_objective("nbpo_surrogate")
class NBPOSurrogateLoss(_FlipLoss):
    """Surrogate likelihood: the probabilities without the logs."""

    def terms(self, r_pos, r_neg, g_pos, g_neg):  # noqa: ANN001, ANN201
        y_pos, y_neg = torch.sigmoid(r_pos), torch.sigmoid(r_neg)
        pos = y_pos * torch.sigmoid(-g_pos)
        neg = torch.sigmoid(-r_neg) + y_neg * torch.sigmoid(g_neg)
        return pos, neg
