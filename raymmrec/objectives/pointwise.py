"""BPO and NBPO (Yu & Qin, "Sampler Design for Implicit Feedback Data by Noisy-label Robust Learning",
SIGIR 2020; code: Wenhui-Yu/NBPO), as objectives on autograd for any pairwise model.

With ``R`` a model's score of (user, item) and ``ŷ = σ(R)`` the preference probability, NBPO adds a
label-flip model ``γ = σ(g)``, ``g_ui = P_u · Q_i`` (its own ``U × K1`` and ``I × K1`` tables): the
probability that an item the user prefers is nevertheless unlabelled. An observed pair then has
probability ``ŷ (1 − γ)`` and an unlabelled one ``(1 − ŷ) + ŷ γ``. Per positive (u, i) and each of
its S sampled unlabelled items j, the maximised per-triple objectives (Yu & Qin,
SIGIR 2020; their code Wenhui-Yu/NBPO):

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
from raymmrec.models.base import Batch, Indexed, LossOutput, ModelOutput, gather
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

    indexed = {"P": Indexed("users"), "Q": Indexed("items")}  # per-user / per-item rows (unlearning resets them)

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        scale = 5.0 / math.sqrt(dim)
        self.P = nn.Parameter(torch.rand(n_users, dim) * scale)
        self.Q = nn.Parameter(torch.rand(n_items, dim) * -scale)

    def forward(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Flip logits ``B × (1 + S)`` of (user, item) pairs, ``items`` = [positive, S negatives] per
        row, and the batch's sum of ``‖P_u‖² + ‖Q_i‖² + Σ_j ‖Q_j‖² / S`` over its rows (a scalar)."""
        if self.P.device.type == "cpu":
            return _FlipScores.apply(self.P, self.Q, users, items)
        # elsewhere autograd's gathers: F.embedding's CUDA backward is deterministic, index_add_'s is not
        p, q = gather(self.P, users), gather(self.Q, items)
        qq = q.pow(2).sum(-1)
        return (q * p.unsqueeze(1)).sum(-1), p.pow(2).sum() + qq[:, 0].sum() + qq[:, 1:].mean(1).sum()


class _FlipScores(torch.autograd.Function):
    """:meth:`FlipModel.forward` on CPU in one step, with its backward written out.

    Autograd's version of the same lines records a dozen nodes and gathers ``Q`` twice; an MF step
    is so small that the number of operations sets its cost. Here each table is gathered once and
    each gradient scattered once (``scatter_add_``, deterministic on CPU); the backward reuses the
    gathered rows' memory for their gradient (autograd refuses a second backward through it). A test
    checks the values and gradients against autograd's.
    """

    @staticmethod
    def forward(ctx, P: Tensor, Q: Tensor, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        b, m = items.shape
        p = P.index_select(0, users)  # B × K
        q = Q.index_select(0, items.reshape(-1)).view(b, m, Q.shape[1])  # B × (1 + S) × K (B may be 0)
        # Σ‖q‖² / S over every item, plus (1 − 1/S) ‖q_pos‖²: a negative's squared norm counts 1 / S
        flat, q0 = q.view(-1), q[:, 0]
        sq = (torch.dot(p.view(-1), p.view(-1)) + torch.dot(flat, flat) / (m - 1)
              + (q0 * q0).sum() * (1 - 1 / (m - 1)))
        ctx.save_for_backward(p, q, users, items)
        ctx.shapes = (P.shape, Q.shape)
        return (q * p.unsqueeze(1)).sum(-1), sq

    @staticmethod
    def backward(ctx, dg: Tensor, dsq: Tensor):  # type: ignore[override]
        p, q, users, items = ctx.saved_tensors
        (p_shape, q_shape), (b, m) = ctx.shapes, items.shape
        two = 2.0 * float(dsq)
        dp = p * two
        for c in range(m):  # one column at a time: broadcasting dg over K in one product is slower
            dp.addcmul_(q[:, c], dg[:, c : c + 1])
        dq = q.mul_(two / (m - 1))  # the gathered rows are this step's own: reused for their gradient
        dq[:, 0] *= m - 1  # d sq / d q: 2 q for the positive, 2 q / S for a negative
        for c in range(m):
            dq[:, c].addcmul_(p, dg[:, c : c + 1])
        k = q_shape[1]
        dP = p.new_zeros(p_shape).scatter_add_(0, users.unsqueeze(1).expand(b, k), dp)
        dQ = q.new_zeros(q_shape).scatter_add_(0, items.reshape(-1, 1).expand(b * m, k), dq.view(b * m, k))
        return dP, dQ, None, None


class PointwiseLoss(Objective):
    """Shared machinery; subclasses define :meth:`terms` (maximised positive and negative terms)."""

    needs_negatives = True
    config_fields = ("reg_weight",)
    options_cls = PointwiseOptions
    uses_flip = False
    # column-sharded: scores and EmbLoss are reduced (ModelOutput.scores, ctx.global_norm); the flip
    # tables are replicated, their gradients averaged over the workers (raymmrec.shard)
    column_sharding = True

    def make_module(self, n_users: int, n_items: int) -> nn.Module | None:
        return FlipModel(n_users, n_items, self.opts.flip_dim) if self.uses_flip else None

    def terms(self, r_pos: Tensor, r_neg: Tensor, g_pos: Tensor | None, g_neg: Tensor | None) -> tuple[Tensor, Tensor]:
        """The maximised per-triple terms: positive ``B`` and unlabelled ``B × S``."""
        raise NotImplementedError

    def data_sum(self, r: Tensor, g: Tensor | None, c: float) -> Tensor:
        """``Σ_rows (c · pos + Σ_j neg_j)`` for scores ``r`` and flip logits ``g`` (``B × (1 + S)``,
        column 0 the positive), from :meth:`terms`; a subclass may compute the same sum faster."""
        pos, neg = self.terms(r[:, 0], r[:, 1:], None if g is None else g[:, 0], None if g is None else g[:, 1:])
        return (c * pos).sum() + neg.sum()

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        opts, n = self.opts, batch.global_rows
        r_pos, r_neg = out.scores()
        r = torch.cat([r_pos.unsqueeze(1), r_neg if r_neg.dim() == 2 else r_neg.unsqueeze(1)], 1)  # B × (1 + S)
        s = r.shape[1] - 1
        g = sq = None
        if self.uses_flip:
            neg_items = batch.neg_items if batch.neg_items.dim() == 2 else batch.neg_items.unsqueeze(1)
            g, sq = self.module(batch.users, torch.cat([batch.pos_items.unsqueeze(1), neg_items], 1))
        if opts.clip:
            r = r.clamp(-CLIP, CLIP)
            g = None if g is None else g.clamp(-CLIP, CLIP)
        maximised = self.data_sum(r, g, float(s if opts.positive_per_negative else 1))
        scale = float(n * s) if opts.reduction == "sum" else 1.0  # sum over the global batch's triples
        data = -maximised * (ctx.world_size * scale / (n * s))  # the global batch's mean per positive, / S
        reg, reg_value = emb_loss(ctx, out.ego, n) if self.cfg.reg_weight else (data.new_zeros(()),) * 2
        w, world = self.cfg.reg_weight, ctx.world_size
        total = data + w * reg * scale
        parts = {"data": data.detach() / world, "reg": w * reg_value * scale / world}
        if self.uses_flip:
            if opts.reduction == "sum":  # full tables: the same on every rank, added as is
                flip = 0.5 * opts.flip_reg * (self.module.P.pow(2).sum() + self.module.Q.pow(2).sum())
            else:
                flip = sq * (0.5 * opts.flip_reg * ctx.world_size / n)  # the global batch's mean
            total = total + flip
            parts["flip_reg"] = flip.detach() / world
            with torch.no_grad():  # the mean flip probability of the batch's pairs, to watch it move
                parts["gamma_pos"] = torch.sigmoid(g[:, 0]).sum() / n
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

    :meth:`terms` is the definition; training takes :meth:`data_sum`, the same sum in fewer steps.
    """

    def terms(self, r_pos, r_neg, g_pos, g_neg):  # noqa: ANN001, ANN201
        ls_rp, ls_rn, ls_gp, ls_gn = (F.logsigmoid(x) for x in (r_pos, r_neg, g_pos, g_neg))
        y_pos, y_neg, gam_pos, gam_neg = (x.detach().exp() for x in (ls_rp, ls_rn, ls_gp, ls_gn))  # ŷ, γ as weights
        pos = (1 - gam_pos) * ls_rp + y_pos * (ls_gp - g_pos)  # log(1 - γ) = log σ(g) - g
        neg = (ls_rn - r_neg) + gam_neg * ls_rn + y_neg * ls_gn  # log(1 - ŷ) = log σ(R) - R
        return pos, neg

    def data_sum(self, r: Tensor, g: Tensor, c: float) -> Tensor:
        """The same sum as :meth:`terms` gives, in a third of the operations (forward and backward).

        With ``w = [c, 1, …, 1]`` and ``s = [−1, 1, …, 1]`` over a row's columns and stop-gradient
        weights ŷ, γ: ``Σ w (1 + s γ) log ŷ − Σ_j R_j + Σ w ŷ log σ(s g)``, because
        ``log(1 − ŷ) = log ŷ − R`` and ``log(1 − γ) = log σ(−g)``. An MF step is so small that the
        number of operations sets its cost.
        """
        ones = [1.0] * (r.shape[1] - 1)
        w, sign = r.new_tensor([c, *ones]), r.new_tensor([-1.0, *ones])
        ls_r = F.logsigmoid(r)
        with torch.no_grad():
            w_r = torch.addcmul(w, torch.sigmoid(g), w * sign)  # w (1 − γ) for the positive, 1 + γ for negatives
            w_g = ls_r.exp().mul_(w)
        return (w_r * ls_r).sum() - r[:, 1:].sum() + (w_g * F.logsigmoid(g * sign)).sum()


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
