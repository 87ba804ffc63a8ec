"""VBPR: BPR matrix factorisation with a visual (here: any-modality) content factor.

Reference: He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback",
AAAI 2016, https://arxiv.org/abs/1510.01784. As in MMRec, all modality features are
concatenated and projected by one linear layer to ``embedding_size``; an item is
``[γ_i ; W f_i]`` and a user is one ``2·embedding_size`` vector. Trained by the ``bpr``
objective, whose EmbLoss acts on the batch's user, positive and negative representations.

Because ``W f_i`` comes from the item's features, VBPR scores cold-start items
(``scores_cold_items``): for an item never seen in training (neither as a positive nor as a
sampled negative) the projection ``W`` is learned from other items, while its ID half ``γ_i``
is untrained, still its random initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from raymmrec.models.base import Batch, Indexed, ModelOutput, RecGraph, Recommender, gather, xavier_embedding
from raymmrec.registry import register
from raymmrec.search import Grid, LogUniform, SearchSpaces


@dataclass(frozen=True)
class VBPRConfig:
    embedding_size: int = 64  # width of the ID part and of the content part of an item
    reg_weight: float = 1e-3  # EmbLoss weight (MMRec grid 2.0 .. 1e-5)


@register("vbpr")
class VBPR(Recommender):
    """score(u, i) = θ_u · [γ_i ; W f_i]."""

    config_cls = VBPRConfig
    search_spaces = SearchSpaces(
        # MMRec configs/model/VBPR.yaml: 7 runs
        paper={"model.reg_weight": Grid((2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5))},
        wide={"model.reg_weight": LogUniform(1e-6, 2.0), "train.lr": LogUniform(1e-4, 1e-2)},
    )
    static_tensors = ("content",)
    indexed: dict[str, Indexed | None] = {"item_linear.": None}  # W: features -> D, not one row per item
    scores_cold_items = True  # the projected features W f_i; γ_i of a cold item is untrained
    column_sharding = True  # each half ([γ ; W f] and θ's two halves) split over the ranks on its own

    def __init__(self, cfg: VBPRConfig, graph: RecGraph) -> None:
        super().__init__(cfg, graph)
        if not graph.features:
            raise ValueError("VBPR needs at least one modality feature matrix; the dataset has none")
        d = cfg.embedding_size
        self.content = torch.cat([graph.features[m] for m in sorted(graph.features)], dim=1)
        self.user_emb = xavier_embedding(graph.n_users, 2 * d, parts=2)  # θ's halves: see column_layout
        self.item_emb = xavier_embedding(graph.n_items, d)
        self.item_linear = nn.Linear(self.content.shape[1], d)
        nn.init.xavier_normal_(self.item_linear.weight)

    def item_table(self, items: Tensor | None = None) -> Tensor:
        ids = self.item_emb.weight if items is None else gather(self.item_emb.weight, items)
        feats = self.content if items is None else gather(self.content, items)
        return torch.cat([ids, self.item_linear(feats)], dim=-1)

    def forward(self, batch: Batch) -> ModelOutput:
        u = gather(self.user_emb.weight, batch.users)
        pos, neg = batch.pos_items, batch.neg_items
        # each distinct item of the batch (positives and negatives) is projected once, then gathered;
        # the whole table when the batch touches most items (no copy of the feature rows then)
        ids = pos if neg is None else torch.cat([pos, neg.reshape(-1)])
        distinct, index = torch.unique(ids, return_inverse=True)
        if 5 * distinct.numel() >= 4 * self.n_items:
            rows = gather(self.item_table(), ids)
        else:
            rows = gather(self.item_table(distinct), index)
        p = rows[: pos.shape[0]]
        n = None if neg is None else rows[pos.shape[0] :].view(*neg.shape, rows.shape[-1])
        return ModelOutput(u, p, n, ego=(u, p) if n is None else (u, p, n),
                           reduce=self.score_reduce)

    def column_layout(self) -> dict[str, int | tuple[int, int]]:
        # θ_u pairs with [γ_i ; W f_i]: a rank holds the same block of both halves of each
        return {"user_emb.weight": (1, 2), "item_emb.weight": 1, "item_linear.weight": 0, "item_linear.bias": 0}

    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        d = 2 * self.cfg.embedding_size
        return self.full_columns(self.user_emb.weight, d, 2), self.full_columns(self.item_table(), d, 2)
