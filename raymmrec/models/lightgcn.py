"""LightGCN: linear graph convolution over the user-item graph, trained with BPR.

Reference: He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020, https://arxiv.org/abs/2002.02126. Full-graph propagation
(``torch.sparse`` CSR SpMM) every step; the readout is the mean over layers 0..L. Trained by the
``bpr`` objective, whose EmbLoss acts on the batch's layer-0 (ego) embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raymmrec.graph import propagate_mean
from raymmrec.models.base import Batch, ModelOutput, RecGraph, Recommender, gather, xavier_embedding
from raymmrec.registry import register
from raymmrec.search import Grid, IntRange, LogUniform, SearchSpaces


@dataclass(frozen=True)
class LightGCNConfig:
    embedding_size: int = 64  # width of the layer-0 tables
    n_layers: int = 3  # propagation layers (MMRec grid 1..4)
    reg_weight: float = 1e-4  # EmbLoss weight on ego embeddings (MMRec grid 1e-2 .. 1e-6)


@register("lightgcn")
class LightGCN(Recommender):
    """score(u, i) = h_u · h_i with H = mean_l Â^l E."""

    config_cls = LightGCNConfig
    search_spaces = SearchSpaces(
        # MMRec configs/model/LightGCN.yaml: 4 x 5 = 20 runs
        paper={"model.n_layers": Grid((1, 2, 3, 4)),
               "model.reg_weight": Grid((1e-2, 1e-3, 1e-4, 1e-5, 1e-6))},
        wide={"model.n_layers": IntRange(1, 4), "model.reg_weight": LogUniform(1e-7, 1e-1),
              "train.lr": LogUniform(1e-4, 1e-2)},
    )
    static_tensors = ("adj",)
    column_sharding = True  # propagation acts on each column alone; scores are partial dot products

    @classmethod
    def prepared_inputs(cls, cfg: LightGCNConfig) -> dict:
        return {"adj": ("norm_adj", {})}

    def __init__(self, cfg: LightGCNConfig, graph: RecGraph) -> None:
        super().__init__(cfg, graph)
        self.adj = graph.prepared["adj"]
        self.user_emb = xavier_embedding(graph.n_users, cfg.embedding_size)
        self.item_emb = xavier_embedding(graph.n_items, cfg.embedding_size)

    def propagate(self) -> tuple[Tensor, Tensor]:
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        h = propagate_mean(self.adj, ego, self.cfg.n_layers)
        return h[: self.n_users], h[self.n_users :]

    def forward(self, batch: Batch) -> ModelOutput:
        hu, hi = self.propagate()
        neg = batch.neg_items
        users, items = self.user_emb.weight, self.item_emb.weight
        ego = (gather(users, batch.users), gather(items, batch.pos_items))
        if neg is not None:
            ego = (*ego, gather(items, neg))
        return ModelOutput(gather(hu, batch.users), gather(hi, batch.pos_items),
                           None if neg is None else gather(hi, neg), ego=ego,
                           reduce=self.score_reduce)

    def column_layout(self) -> dict[str, int]:
        return {"user_emb.weight": 1, "item_emb.weight": 1}

    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        hu, hi = self.propagate()
        d = self.cfg.embedding_size
        return self.full_columns(hu, d), self.full_columns(hi, d)
