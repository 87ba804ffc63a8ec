"""BM3: Bootstrap Latent Representations for Multi-modal Recommendation (Zhou et al., WWW 2023).

Paper: https://arxiv.org/abs/2207.05969; reference code: enoche/BM3 (``src/models/bm3.py``).
Training regime: full-graph LightGCN propagation every step, no negative samples; DDP shards
only the batch of observed (user, item) pairs. Details that are easy to get wrong, all kept here
(Zhou et al., WWW 2023; see docs/methods/bm3.md):

* item representation ``h_i = mean_l (Â^l E)_i + E_i`` (ID embedding added again);
* modality tables are *trainable* copies of the raw features, projected by ``Linear(d_m → D)``;
* one shared predictor ``p`` for users, items and every modality;
* targets are dropout-perturbed copies of the same forward pass, under no-grad, never through
  the predictor; the modality "mask" target is the projected feature itself;
* ``L_reg = (‖H_U‖_F + ‖H_I‖_F) / n_items`` over the full final tables, not squared;
* the losses live in the ``bm3`` objective (:mod:`raymmrec.objectives.bm3`); the model hands it
  online and target views by name;
* score(u, i) = p(h_u) · p(h_i), recomputed without dropout.

Only the rows a batch touches are projected (unique users/items); gradients are identical to
projecting the whole table, at a fraction of the cost for 4096-d image features. Dropout masks are
drawn for the *whole* user and item tables and indexed by the batch's rows (duplicates share one
mask, as with full-table dropout): every rank of a DDP run draws the same masks from the same
per-epoch seed, so N workers compute what one process computes on the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from raymmrec.graph import propagate_mean
from raymmrec.models.base import (Batch, Indexed, ModelOutput, RecGraph, Recommender, gather, trainable_copy,
                                  xavier_embedding)
from raymmrec.registry import register
from raymmrec.search import Grid, IntRange, LogUniform, SearchSpaces, Uniform


@dataclass(frozen=True)
class BM3Config:
    """BM3's options (``model.<option>=value``).

    ``cl_terms`` rebuilds the paper's ablation of its two multimodal terms (Zhou et al., WWW 2023,
    the ablation study of §4): ``"both"`` (the method, ``L_align + L_mask``), ``"align"`` (the
    inter-modality alignment term alone: ``L = L_rec + cl_weight · L_align + reg_weight · L_reg``,
    no masked-feature term) or ``"mask"`` (the intra-modality masking term alone). The left-out
    term is neither computed nor logged.
    """

    embedding_size: int = 64  # width of ID tables, projections and predictor
    n_layers: int = 1  # LightGCN layers (grid 1, 2)
    dropout: float = 0.5  # target-side dropout ratio (grid 0.3, 0.5)
    reg_weight: float = 0.1  # weight of L_reg (grid 0.1, 0.01)
    cl_weight: float = 2.0  # weight of the multimodal terms, L_align + L_mask
    cl_terms: Literal["both", "align", "mask"] = "both"  # ablation: keep one multimodal term only

    def __post_init__(self) -> None:
        if self.cl_terms not in ("both", "align", "mask"):
            raise ValueError(f"cl_terms must be both, align or mask, got {self.cl_terms!r}")


@register("bm3")
class BM3(Recommender):
    """Self-supervised multimodal recommender without negative sampling."""

    config_cls = BM3Config
    search_spaces = SearchSpaces(
        # BM3 README / MMRec configs/model/BM3.yaml: 8 runs
        paper={"model.n_layers": Grid((1, 2)), "model.dropout": Grid((0.3, 0.5)),
               "model.reg_weight": Grid((0.1, 0.01))},
        wide={"model.n_layers": IntRange(1, 3), "model.dropout": Uniform(0.1, 0.8),
              "model.reg_weight": LogUniform(1e-3, 1.0), "model.cl_weight": LogUniform(0.5, 8.0),
              "train.lr": LogUniform(1e-4, 1e-2)},
    )
    default_objective = "bm3"
    provides = frozenset({"bm3"})
    untrained_rows = "zero"  # L_reg over the full final tables decays rows without data
    static_tensors = ("adj",)
    indexed = {"feat.": Indexed("items")}  # the trainable feature copies: one row per item
    # Column-sharded: ID tables by embedding column, feature copies and their projections by feature
    # column (each rank projects its block; the partial projections are summed); the batch's views are
    # then joined into full rows, and the predictor and the loss run replicated on every rank.
    column_sharding = True

    @classmethod
    def prepared_inputs(cls, cfg: BM3Config) -> dict:
        return {"adj": ("norm_adj", {})}

    def __init__(self, cfg: BM3Config, graph: RecGraph) -> None:
        super().__init__(cfg, graph)
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"BM3 dropout must be in [0, 1), got {cfg.dropout}")
        d = cfg.embedding_size
        self.adj = graph.prepared["adj"]
        self.user_emb = xavier_embedding(graph.n_users, d)
        self.item_emb = xavier_embedding(graph.n_items, d)
        self.modalities = sorted(graph.features)
        # Trainable copies of the raw features (MMRec: Embedding.from_pretrained(freeze=False)); a
        # column-sharded worker copies only its block of columns.
        self.feat = nn.ParameterDict({m: trainable_copy(graph.features[m]) for m in self.modalities})
        self.proj = nn.ModuleDict({m: nn.Linear(graph.features[m].shape[1], d) for m in self.modalities})
        for lin in self.proj.values():
            nn.init.xavier_normal_(lin.weight)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Final pre-predictor tables ``H_U`` (U × D) and ``H_I`` (I × D)."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        h = propagate_mean(self.adj, ego, self.cfg.n_layers)
        return h[: self.n_users], h[self.n_users :] + self.item_emb.weight

    def _masks(self, users: Tensor, items: Tensor, n_item_masks: int) -> list[Tensor]:
        """Inverted-dropout masks for the rows ``users`` of a table-wide ``U × D`` draw, then for the
        rows ``items`` of ``n_item_masks`` table-wide ``I × D`` draws (the same on every rank).

        On CPU the uniform draws are 32-bit integers from one PCG64 stream seeded by the torch
        generator (so ``torch.manual_seed`` fixes them), compared with ``round(p · 2³²)``: finer than
        ``torch.rand``'s 24-bit floats and half its cost. Elsewhere ``torch.rand`` on the device.
        """
        p, d = self.cfg.dropout, self.cfg.embedding_size
        sizes = [self.n_users] + [self.n_items] * n_item_masks
        picks = [users] + [items] * n_item_masks
        scale = 1.0 / (1.0 - p)
        if users.device.type != "cpu":
            return [(torch.rand(n, d, device=r.device)[r] >= p).float() * scale for n, r in zip(sizes, picks)]
        seed = int(torch.randint(2**62, (1,)).item())
        total = sum(sizes) * d
        bits = torch.from_numpy(np.random.PCG64(seed).random_raw((total + 1) // 2).view(np.int32)[:total])
        threshold = min(round(p * 2**32) - 2**31, 2**31 - 1)  # a uniform int32 is >= this w.p. 1 - p
        out, at = [], 0
        for n, r in zip(sizes, picks):
            block = bits[at : at + n * d].view(n, d)
            at += n * d
            out.append((block[r] >= threshold).float() * scale)
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        """Views of the batch's *distinct* users and items, stacked; the objective reads them by layout.

        ``online`` and ``target`` hold, row-aligned, the distinct users (``nu`` rows), the distinct
        items (``ni``), then the same items once per modality (``ni`` each): online views through the
        predictor (one product for all), targets as dropout-masked copies without gradient.
        ``layout`` is ``[nu, ni, n_modalities]``; ``u_index``/``i_index`` map batch rows to distinct rows.
        A user or item repeated in the batch is projected, masked and normalised once.
        """
        hu, hi = self.propagate()
        users, u_index = torch.unique(batch.users, return_inverse=True)
        items, i_index = torch.unique(batch.pos_items, return_inverse=True)
        d = self.cfg.embedding_size
        views = torch.cat([self.full_columns(gather(hu, users), d), self.full_columns(gather(hi, items), d),
                           *(self.project(m, gather(self.feat[m], items)) for m in self.modalities)])
        with torch.no_grad():
            target = views * torch.cat(self._masks(users, items, 1 + len(self.modalities)))
        layout = torch.tensor([users.numel(), items.numel(), len(self.modalities)])
        return ModelOutput(extra={"online": self.predictor(views), "target": target, "layout": layout,
                                  "u_index": u_index, "i_index": i_index,
                                  "reg": (self.norm(hu) + self.norm(hi)) / self.n_items})

    def project(self, m: str, x: Tensor) -> Tensor:
        """``proj[m](x)``; column-sharded, ``x`` and the weight hold this rank's feature columns and the
        ranks' partial products are summed before the (replicated) bias."""
        lin = self.proj[m]
        if self.columns is None:
            return lin(x)
        return self.partial_sum(x @ lin.weight.t()) + lin.bias

    def norm(self, t: Tensor) -> Tensor:
        """Frobenius norm of a table, over the column blocks of every rank."""
        return t.norm() if self.columns is None else self.partial_sum(t.pow(2).sum()).sqrt()

    def column_layout(self) -> dict[str, int]:
        layout = {"user_emb.weight": 1, "item_emb.weight": 1}
        for m in self.modalities:
            layout[f"feat.{m}"] = 1
            layout[f"proj.{m}.weight"] = 1
        return layout

    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        hu, hi = self.propagate()
        d = self.cfg.embedding_size
        return self.predictor(self.full_columns(hu, d)), self.predictor(self.full_columns(hi, d))
