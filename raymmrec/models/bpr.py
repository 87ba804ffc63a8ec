"""BPR-MF: matrix factorisation trained with the Bayesian Personalised Ranking loss.

Reference: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009,
https://arxiv.org/abs/1205.2618. Regularisation follows MMRec's ``EmbLoss``: the (non-squared)
Frobenius norms of the batch's user, positive and negative embeddings, divided by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raymmrec.models.base import Batch, LossOutput, RecGraph, Recommender, bpr_loss, xavier_embedding
from raymmrec.registry import register


@dataclass(frozen=True)
class BPRConfig:
    embedding_size: int = 64  # width of user and item tables
    reg_weight: float = 1e-3  # weight of the embedding-norm penalty (MMRec grid 2.0 .. 1e-5)


def emb_loss(*tables: Tensor) -> Tensor:
    """MMRec's EmbLoss: sum of Frobenius norms divided by the rows of the last table."""
    total = tables[0].norm()
    for t in tables[1:]:
        total = total + t.norm()
    return total / tables[-1].shape[0]


@register("bpr")
class BPR(Recommender):
    """ID-only matrix factorisation; score(u, i) = e_u · e_i."""

    config_cls = BPRConfig
    needs_negatives = True

    def __init__(self, cfg: BPRConfig, graph: RecGraph) -> None:
        super().__init__(cfg, graph)
        self.user_emb = xavier_embedding(graph.n_users, cfg.embedding_size)
        self.item_emb = xavier_embedding(graph.n_items, cfg.embedding_size)

    def forward(self, batch: Batch) -> LossOutput:
        assert batch.neg_items is not None, "BPR needs negative items"
        u = self.user_emb(batch.users)
        p = self.item_emb(batch.pos_items)
        n = self.item_emb(batch.neg_items)
        rank = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = self.cfg.reg_weight * emb_loss(u, p, n)
        return LossOutput(rank + reg, {"bpr": rank.detach(), "reg": reg.detach()})

    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb.weight, self.item_emb.weight
