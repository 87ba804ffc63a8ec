"""CM3: Calibrating Multimodal Recommendation (Zhou, Wang, Shen; arXiv 2508.01226, 2025).

Reference code: enoche/CM3 (``src/models/cm3.py``); see docs/methods/cm3.md. The graph model is shared
with LIRDRec (:mod:`raymmrec.models.feature_graph`); CM3's branches are one per modality (the
modality encoders) plus a fused branch ``MIX``, and its loss is the ``cm3`` objective
(:mod:`raymmrec.objectives.cm3`): alignment plus user uniformity plus *calibrated* item uniformity.

* **Fusion.** ``MIX`` is a spherical Bézier curve through the modalities' projections
  ``normalize(g_m x_m)`` (``g_m``: ``Linear(d_m → D)``, Xavier-normal) at a parameter drawn per
  item, on every training forward, from ``Beta(alpha, alpha)`` (:func:`raymmrec.fusion.fuse`); for
  two modalities it is one slerp, which is all the published code implements. Modalities enter
  the curve in sorted order.
* **Users** weight their branches by ``softmax(Θ_u)``, a free ``U × B`` table of logits.
* **Scores** are dot products of the un-normalised final tables, as published; the loss works on
  the normalised ones.

Column-sharded (``train.shard=columns``): besides the shared graph model's split
(:mod:`raymmrec.models.feature_graph`), each projection ``g_m`` is column-parallel (a rank computes its
block of the ``D`` output columns), the unit normalisations and the slerps' cosines sum partial row
sums over the ranks, and the concatenation ablation's map is row-parallel (its input columns split as
the concatenated blocks are, the partial outputs summed); ``Θ`` is replicated.

Training: early stopping after the authors' 10 evaluations without improvement (their
``stopping_step``; ``train_defaults``), unless ``train.patience`` is set. Ablations (the paper's):
``fusion=mean|concat`` in place of the Bézier curve and ``calibration=false``; see :class:`CM3Config`.

Deviations from the published code, each with an option that restores it:

* scoring uses a fresh forward in eval mode with the mixing parameter at its mean (0.5), not the
  tables cached by the epoch's last training batch (``eval_from_last_batch=True``: stale by one
  step, with that batch's random draws); ``sample_at_eval=True`` draws at evaluation too;
* the slerp is numerically safe at (anti)parallel vectors (the published ``1e-8`` clamp is below
  float32 resolution, so identical vectors give NaN there);
* the published grid's ``weight_decay`` is left out: its trainer never passes it to Adam;
* any number of modalities, not image + text only; with three or more the fusion is a Bézier
  curve of degree ``m - 1`` (the paper's intent; the code has two modalities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from raymmrec.fusion import fuse
from raymmrec.models.base import Batch, Indexed, ModelOutput, RecGraph, gather
from raymmrec.models.feature_graph import FeatureGraphModel, xavier_normal_table
from raymmrec.shard import unit_rows
from raymmrec.registry import register
from raymmrec.search import Grid, IntRange, LogUniform, SearchSpaces, Uniform


@dataclass(frozen=True)
class CM3Config:
    """CM3's options (``model.<option>=value``).

    Two options rebuild the paper's ablations (Zhou, Wang, Shen, arXiv 2508.01226):

    * ``fusion``: how the fused branch ``MIX`` (and the similarity that calibrates item uniformity)
      combines the modalities' unit projections ``p_m = normalize(g_m x_m)``. ``"bezier"`` (the
      method): the spherical Bézier curve at a ``Beta(alpha, alpha)`` draw; ``"mean"``: their plain
      mean ``(1/m) Σ_m p_m`` (no draw; ``alpha`` and ``sample_at_eval`` unused); ``"concat"``: their
      concatenation mapped back to ``embedding_size`` by one learned ``Linear(m·D → D, no bias)``
      (Xavier-normal), ``W [p_1 ‖ … ‖ p_m]``. The paper does not say how its concatenation variant
      returns to ``D``; this linear map is this project's choice. With two modalities the curve's
      evaluation point (``t = 0.5``) is the renormalised mean, and ``MIX`` is only ever used
      row-normalised or through cosines, so ``"mean"`` differs from the method in training (no
      random mixing), not in how a trained model scores.
    * ``calibration``: ``False`` drops the calibration of the item-uniformity term, which becomes the
      plain ``L_I = log mean exp(−t ‖ī_a − ī_b‖²)`` over the negatives (no ``s_ab``; ``min_sim`` and
      ``max_sim`` unused); the fused branch stays in the model.
    """

    embedding_size: int = 64  # width of every branch (embedding_size = feat_embed_dim = 64)
    n_ui_layers: int = 3  # LightGCN layers, sum readout (grid 3, 4)
    gamma: float = 0.5  # weight of the two uniformity terms, L = L_align + gamma/2 (L_U + L_I) (grid 0.5, 0.9)
    alpha: float = 0.5  # Beta(alpha, alpha) shape of the fusion parameter (grid 0.1, 0.5, 0.9)
    max_sim: float = 0.8  # upper clamp of the calibrating similarity (grid 0.8, 1.0)
    min_sim: float = 0.0  # lower clamp of the calibrating similarity
    temperature: float = 2.0  # t of the uniformity kernels exp(-t d^2)
    knn_k: int = 10  # neighbours per item in the item-item graph (the item itself included)
    mm_image_weight: float = 0.1  # share of the non-text modalities' graphs (text gets the rest)
    mm_weights: dict[str, float] | None = None  # explicit per-modality graph weights (sum 1)
    eval_from_last_batch: bool = False  # published scoring: the last training batch's tables
    sample_at_eval: bool = False  # published: random fusion draws at evaluation too
    fusion: Literal["bezier", "mean", "concat"] = "bezier"  # ablation: mean or concatenation fusion
    calibration: bool = True  # ablation: False gives plain (uncalibrated) item uniformity

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_sim <= self.max_sim <= 1.0):
            raise ValueError(f"need 0 <= min_sim <= max_sim <= 1, got {self.min_sim}, {self.max_sim}")
        if self.fusion not in ("bezier", "mean", "concat"):
            raise ValueError(f"fusion must be bezier, mean or concat, got {self.fusion!r}")
        if self.alpha <= 0 or self.temperature <= 0 or self.gamma < 0:
            raise ValueError(f"alpha and temperature must be > 0 and gamma >= 0, "
                             f"got {self.alpha}, {self.temperature}, {self.gamma}")


@register("cm3")
class CM3(FeatureGraphModel):
    """Feature-first graph recommender trained by alignment and calibrated uniformity."""

    config_cls = CM3Config
    default_objective = "cm3"
    provides = frozenset({"pairwise", "cm3"})
    indexed = {"branch_logits": Indexed("users")}  # Θ_u, each user's branch logits
    train_defaults = {"patience": 10}  # the authors' stopping_step (their CM3.yaml overrides MMRec's 20)
    search_spaces = SearchSpaces(
        # enoche/CM3 configs: n_ui_layers x gamma x max_sim x alpha = 24 distinct runs
        # (its weight_decay {0, 1e-6} is ignored by the published trainer, so it is left out)
        paper={"model.n_ui_layers": Grid((3, 4)), "model.gamma": Grid((0.5, 0.9)),
               "model.max_sim": Grid((0.8, 1.0)), "model.alpha": Grid((0.1, 0.5, 0.9))},
        wide={"model.n_ui_layers": IntRange(1, 4), "model.gamma": Uniform(0.1, 1.5),
              "model.max_sim": Uniform(0.5, 1.0), "model.alpha": LogUniform(0.05, 2.0),
              "train.lr": LogUniform(1e-4, 1e-2)},
    )

    def __init__(self, cfg: CM3Config, graph: RecGraph) -> None:
        super().__init__(cfg, graph, extra_branches=["mix"])
        d = cfg.embedding_size
        self.fusion_proj = nn.ModuleDict({m: nn.Linear(graph.features[m].shape[1], d) for m in self.modalities})
        for lin in self.fusion_proj.values():
            nn.init.xavier_normal_(lin.weight)
        if cfg.fusion == "concat":  # the concatenation ablation: [p_1 ‖ … ‖ p_m] back to D
            self.concat_proj = nn.Linear(len(self.modalities) * d, d, bias=False)
            nn.init.xavier_normal_(self.concat_proj.weight)
        self.branch_logits = xavier_normal_table(graph.n_users, len(self.branches))

    def mix(self) -> Tensor:
        """``I × D``: the fusion of the modalities' unit projections (``cfg.fusion``; the method's
        spherical Bézier curve gives unit rows, the mean and concatenation ablations need not)."""
        points = unit_rows(torch.stack([self.fusion_proj[m](self.feature(m)) for m in self.modalities]),
                           self.columns)
        if self.cfg.fusion == "mean":
            return points.mean(0)
        if self.cfg.fusion == "concat":
            return self.block_of_sum(self.concat_proj(torch.cat(list(points), dim=1)), self.cfg.embedding_size)
        return fuse(points, self.cfg.alpha, self.training, sample_at_eval=self.cfg.sample_at_eval, cols=self.columns)

    def item_branches(self, mix: Tensor | None = None) -> list[Tensor]:
        mix = self.mix() if mix is None else mix
        return [*(self.encode(self.encoders[m], self.feature(m)) for m in self.modalities), mix]

    def user_weights(self, hu: Tensor) -> Tensor:
        return torch.softmax(self.branch_logits, dim=1)

    def column_layout(self) -> dict[str, int | tuple[int, int]]:
        layout = super().column_layout()
        for m in self.modalities:  # column-parallel: the output rows (and bias) of g_m
            layout[f"fusion_proj.{m}.weight"] = layout[f"fusion_proj.{m}.bias"] = 0
        if self.cfg.fusion == "concat":  # row-parallel: the m sections of its input, each split
            layout["concat_proj.weight"] = (1, len(self.modalities))
        return layout

    def forward(self, batch: Batch) -> ModelOutput:
        mix = self.mix()
        users, items = self.tables(self.item_branches(mix))
        neg = batch.neg_items
        extra = {} if neg is None else {"neg_mix": gather(mix, neg)}
        return self.batch_output(users, items, batch, **extra)
