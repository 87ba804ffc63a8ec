"""LIRDRec's objective: BPR on raw dot products plus an L2 term over the *full* final tables.

``L = mean over the batch of softplus(u·i− − u·i+) + reg_weight · (mean(U∘U) + mean(I∘I))``:
``softplus(−x) = −log σ(x)``, the stable form of ``−log σ(u·i+ − u·i−)``; the two means are
elementwise means of squares over every user, every item and every dimension of the final tables
(Zhou, Zhang, Niyato, Shen, arXiv 2505.04960, 2025; the authors' code enoche/LIRDRec), which the
model hands over as ``extra["reg"]``.

DDP: the ranking term is a batch mean (:meth:`~raymmrec.dist.DistContext.batch_mean`); the
full-table term is the same on every rank, so it enters each rank's total un-scaled and DDP's
gradient average leaves its gradient as it is (as BM3's ``reg``).
"""

from __future__ import annotations

from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, LossOutput, ModelOutput
from raymmrec.objectives.base import Objective
from raymmrec.objectives.bpr import ranking_term
from raymmrec.registry import register_objective


@register_objective("lirdrec")
class LIRDRecLoss(Objective):
    """Reads the batch's users, positives, negatives and ``extra["reg"]`` (full tables)."""

    needs_negatives = True
    requires = frozenset({"pairwise", "full_table_reg"})
    column_sharding = True  # exact on column blocks: the model reduces the scores and the full tables' squares
    config_fields = ("reg_weight",)

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        if "reg" not in out.extra:
            raise ValueError("the lirdrec objective needs the full tables' mean square (ModelOutput.extra['reg'])")
        rank = ranking_term(out, batch, ctx)
        reg = out.extra["reg"]  # the same on every rank
        w, n = self.cfg.reg_weight, ctx.world_size
        parts = {"bpr": rank.detach() / n, "reg": w * reg.detach() / n}  # this rank's shares of the values
        return LossOutput(rank + w * reg, parts, parts["bpr"] + parts["reg"])
