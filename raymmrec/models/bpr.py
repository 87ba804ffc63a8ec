"""BPR-MF: matrix factorisation trained with the Bayesian Personalised Ranking loss.

Reference: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009,
https://arxiv.org/abs/1205.2618. Trained by the ``bpr`` objective (:mod:`raymmrec.objectives.bpr`);
its regulariser is MMRec's ``EmbLoss`` on the batch's user, positive and negative embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raymmrec.models.base import Batch, ModelOutput, RecGraph, Recommender, gather, xavier_embedding
from raymmrec.registry import register
from raymmrec.search import Grid, LogUniform, SearchSpaces


@dataclass(frozen=True)
class BPRConfig:
    embedding_size: int = 64  # width of user and item tables
    reg_weight: float = 1e-3  # weight of the embedding-norm penalty (MMRec grid 2.0 .. 1e-5)


@register("bpr")
class BPR(Recommender):
    """ID-only matrix factorisation; score(u, i) = e_u · e_i."""

    config_cls = BPRConfig
    search_spaces = SearchSpaces(
        # MMRec configs/model/BPR.yaml: 7 runs
        paper={"model.reg_weight": Grid((2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5))},
        wide={"model.reg_weight": LogUniform(1e-6, 2.0), "train.lr": LogUniform(1e-4, 1e-2)},
    )

    column_sharding = True  # scores are partial dot products over the column blocks

    def __init__(self, cfg: BPRConfig, graph: RecGraph) -> None:
        super().__init__(cfg, graph)
        self.user_emb = xavier_embedding(graph.n_users, cfg.embedding_size)
        self.item_emb = xavier_embedding(graph.n_items, cfg.embedding_size)

    def forward(self, batch: Batch) -> ModelOutput:
        u = gather(self.user_emb.weight, batch.users)
        p = gather(self.item_emb.weight, batch.pos_items)
        n = None if batch.neg_items is None else gather(self.item_emb.weight, batch.neg_items)
        return ModelOutput(u, p, n, ego=(u, p) if n is None else (u, p, n),
                           reduce=self.score_reduce)

    def column_layout(self) -> dict[str, int]:
        return {"user_emb.weight": 1, "item_emb.weight": 1}

    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        d = self.cfg.embedding_size
        return self.full_columns(self.user_emb.weight, d), self.full_columns(self.item_emb.weight, d)
