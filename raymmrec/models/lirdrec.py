"""LIRDRec: Learning Item Representations Directly from Multimodal Features (Zhou, Zhang, Niyato,
Shen; arXiv 2505.04960, 2025).

Reference code: enoche/LIRDRec (its grid: ``src/configs/model/LIRDRec.yaml``); see docs/methods/lirdrec.md. There is no item ID table: items are represented from their features only. The graph
model is shared with CM3 (:mod:`raymmrec.models.feature_graph`: node input ``[rownorm(P_b ; F_b)]``,
LightGCN with the sum readout, ``i = r_i + Â_mm r_i``, users ``[β_b r^b_u]``).

* **Branches.** One per modality (sorted names; ``F_m = f_m(x_m)``, the modality encoders) plus
  ``shared``: ``F_s = f_s(z)`` with ``z = [DCT(x_m1) ‖ DCT(x_m2) ‖ …]``, the orthonormal DCT-II of
  each modality's raw features, concatenated in the same sorted order (the ``dct_features``
  prepared input, computed once and cached), and ``f_s`` an encoder of the same shape
  ``Linear(Σ d_m → 256) → LeakyReLU → Linear(256 → D, no bias)``.
* **Progressive weight copying (PWC) user fusion.** Per branch a score ``a_b = MLP_b(r^b_u)``
  (``Linear(D → 16) → LeakyReLU → Linear(16 → 1)``); ``β = softmax(w1 · [a_b]_b + w2 · Θ_u)`` with
  ``Θ`` a free ``U × B`` table (Xavier-normal). Before every epoch ``e = 1, 2, …``:
  ``(w1, w2) ← (w1 · decay_base^e, w2) / (w1 · decay_base^e + w2)`` (cumulative: the MLP's share
  decays like ``decay_base^{e(e+1)/2}``), then ``Θ ← β`` of the most recent training forward (all
  users; before the first epoch none has run and Θ keeps its initial values). Adam's state for Θ is
  kept, as published. ``w1``, ``w2`` and the last ``β`` are buffers, so checkpoints, ``best.pt`` and
  resumed runs carry them exactly, and the update is broadcast from rank 0 under DDP.
* **Loss** (objective ``lirdrec``): BPR on raw dot products of the ``B · D``-wide tables plus
  ``reg_weight · (mean(U∘U) + mean(I∘I))`` over the full final tables.

Published hyperparameters: n_ui_layers {2, 3, 4}, mm_image_weight {0.1, 0.2}, reg_weight {1e-2,
1e-3, 1e-4}, decay_weight {0.9, 0.95, 0.99}, decay_base 0.9, knn_k 10, and **Adam lr 1e-4**. That rate
is not this method's default: on lfm2k (text + Whisper) it measured below the project's 1e-3 (test
Recall@20 0.4082 vs 0.4179 after 205 vs 182 epochs); set ``train.lr=1e-4`` to follow the paper (the
``paper`` search space fixes it). The model defaults below are the grid's middle values
(mm_image_weight 0.1, as CM3 fixes it) until they are tuned on real data.

Column-sharded (``train.shard=columns``): besides the shared graph model's split
(:mod:`raymmrec.models.feature_graph`), the shared encoder is split like the modality encoders (its
hidden units), and each score MLP's first layer is row-parallel (its ``D`` input columns split, the
``U × 16`` partial products summed over the ranks, the bias and the rest replicated); ``Θ`` and the
PWC state are replicated. The prepared DCT features are not split: they are the shared encoder's
input, and a column-parallel first layer needs every input column on every rank (splitting them instead
would make the first layer row-parallel and sum ``I × 256`` partial products per step, four times
the ``I × D`` its second layer sums).

Ablations (the paper's): ``dct=False`` (the shared encoder reads the raw features) and
``weight_copying=False`` (Θ is never overwritten by β); see :class:`LIRDRecConfig`.

``epoch_logs`` reports, after every epoch, each branch's fusion weight β (mean and std over users, of
the epoch's last training forward) and ``w1``, the MLP scores' share: ``model/fusion/<branch>_mean``,
``model/fusion/<branch>_std`` and ``model/fusion/w1`` in TensorBoard.

Deviations from the published code:

* scoring uses a fresh forward in eval mode (deterministic), not the tables cached by the epoch's
  last training batch (one optimizer step stale); ``eval_from_last_batch=True`` restores that;
* the grid's ``weight_decay`` {0, 1e-6, 1e-5} is left out of the search space: the published trainer
  never passes it to Adam, so its 162 runs are 54 distinct ones;
* any number of modalities (the code has image + text); the DCT blocks and branches follow the
  sorted modality names, which for image and text is the published ``[DCT(x_v) ‖ DCT(x_t)]``;
* the PWC weights are float32 buffers, so that they follow the model to any device (the published
  code keeps Python floats, float64); FREEDOM's
  degree-sensitive edge pruning, off in every published config, is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from raymmrec.models.base import Batch, Indexed, ModelOutput, RecGraph
from raymmrec.models.feature_graph import FeatureGraphModel, encoder_layout, modality_encoder, xavier_normal_table
from raymmrec.registry import register
from raymmrec.search import Grid, IntRange, LogUniform, SearchSpaces, Uniform

SHARED = "shared"


@dataclass(frozen=True)
class LIRDRecConfig:
    """LIRDRec's options (``model.<option>=value``).

    Two options rebuild the paper's ablations (Zhou, Zhang, Niyato, Shen, arXiv 2505.04960):

    * ``dct``: ``False`` feeds the shared encoder the raw features ``[x_m1 ‖ x_m2 ‖ …]`` (same sorted
      order, same width) instead of their orthonormal DCT-II; the DCT is then not computed.
    * ``weight_copying``: ``False`` leaves Θ to the optimizer alone: before each epoch the MLP's share
      ``w1`` still decays, but Θ is never overwritten by the last forward's β (progressive weight
      copying without the copy).
    """

    embedding_size: int = 64  # width of every branch (embedding_size = feat_embed_dim = 64)
    n_ui_layers: int = 3  # LightGCN layers, sum readout (grid 2, 3, 4)
    reg_weight: float = 1e-3  # weight of mean(U∘U) + mean(I∘I) over the full tables (grid 1e-2, 1e-3, 1e-4)
    decay_weight: float = 0.95  # initial w1, the MLP scores' share of the fusion logits (grid 0.9, 0.95, 0.99)
    decay_base: float = 0.9  # w1 <- w1 * decay_base^e before epoch e, then (w1, w2) renormalised
    knn_k: int = 10  # neighbours per item in the item-item graph (the item itself included)
    mm_image_weight: float = 0.1  # share of the non-text modalities' graphs (text gets the rest; grid 0.1, 0.2)
    mm_weights: dict[str, float] | None = None  # explicit per-modality graph weights (sum 1)
    eval_from_last_batch: bool = False  # published scoring: the last training batch's tables
    dct: bool = True  # ablation: False gives the shared encoder the raw features, no DCT
    weight_copying: bool = True  # ablation: False never copies β into Θ before an epoch

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay_weight <= 1.0 or not 0.0 < self.decay_base <= 1.0:
            raise ValueError(f"need 0 <= decay_weight <= 1 and 0 < decay_base <= 1, "
                             f"got {self.decay_weight}, {self.decay_base}")
        if self.reg_weight < 0:
            raise ValueError(f"reg_weight must be >= 0, got {self.reg_weight}")


def score_mlp(d_in: int, hidden: int = 16) -> nn.Sequential:
    """PWC's per-branch scorer ``Linear(d_in → 16) → LeakyReLU → Linear(16 → 1)``."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(), nn.Linear(hidden, 1))


@register("lirdrec")
class LIRDRec(FeatureGraphModel):
    """Feature-only items (modality encoders + a shared DCT encoder), PWC user fusion, BPR."""

    config_cls = LIRDRecConfig
    default_objective = "lirdrec"
    provides = frozenset({"pairwise", "full_table_reg"})
    untrained_rows = "zero"  # the L2 term over the full tables decays rows without data
    indexed = {"theta": Indexed("users"), "last_beta": Indexed("users")}  # Θ_u and the last forward's β_u
    # the authors' lr 1e-4 (LIRDRec.yaml's only value) measured worse than the project's 1e-3 on lfm2k
    # (text + Whisper, seed 0: test Recall@20 0.4082 vs 0.4179, valid 0.4163 vs 0.4265), so none here
    train_defaults: dict = {}
    search_spaces = SearchSpaces(
        # enoche/LIRDRec configs/model/LIRDRec.yaml: 3 x 2 x 3 x 3 = 54 distinct runs at lr 1e-4
        # (its weight_decay {0, 1e-6, 1e-5} is ignored by the published trainer, so it is left out)
        paper={"model.n_ui_layers": Grid((2, 3, 4)), "model.mm_image_weight": Grid((0.1, 0.2)),
               "model.reg_weight": Grid((1e-2, 1e-3, 1e-4)), "train.lr": Grid((1e-4,)),
               "model.decay_weight": Grid((0.9, 0.95, 0.99))},
        wide={"model.n_ui_layers": IntRange(1, 4), "model.mm_image_weight": Uniform(0.0, 0.5),
              "model.reg_weight": LogUniform(1e-5, 1e-1), "model.decay_weight": Uniform(0.5, 1.0),
              "model.decay_base": Uniform(0.5, 1.0), "train.lr": LogUniform(3e-5, 3e-3)},
    )

    @classmethod
    def prepared_inputs(cls, cfg: LIRDRecConfig) -> dict:
        # modalities=None: all of the dataset's modalities in sorted order, the branch order below
        if not cfg.dct:  # the ablation: the raw features, concatenated in __init__
            return super().prepared_inputs(cfg)
        return {**super().prepared_inputs(cfg), "dct": ("dct_features", {"modalities": None})}

    def __init__(self, cfg: LIRDRecConfig, graph: RecGraph) -> None:
        super().__init__(cfg, graph, extra_branches=[SHARED])
        width = sum(graph.features[m].shape[1] for m in self.modalities)
        if cfg.dct:
            shared = graph.prepared["dct"]
            if shared.shape != (graph.n_items, width):
                raise ValueError(f"LIRDRec: the DCT features are {tuple(shared.shape)}, expected "
                                 f"{(graph.n_items, width)} for modalities {self.modalities}")
        else:  # the ablation without the transformation: the raw features in the same order
            shared = torch.cat([graph.features[m] for m in self.modalities], dim=1)
        self.shared_input = shared  # z, the shared encoder's fixed input
        self.static_tensors = (*self.static_tensors, "shared_input")
        d, n_b = cfg.embedding_size, len(self.branches)
        self.shared_encoder = modality_encoder(width, d)
        self.score_mlps = nn.ModuleDict({b: score_mlp(d) for b in self.branches})
        self.theta = xavier_normal_table(graph.n_users, n_b)
        # PWC state: buffers, so that checkpoints and resumed runs carry it exactly
        self.register_buffer("pwc_w", torch.tensor([cfg.decay_weight, 1.0 - cfg.decay_weight]))
        self.register_buffer("last_beta", torch.zeros(graph.n_users, n_b))
        self.register_buffer("beta_seen", torch.zeros((), dtype=torch.bool))

    def item_branches(self) -> list[Tensor]:
        return [*(self.encode(self.encoders[m], self.feature(m)) for m in self.modalities),
                self.encode(self.shared_encoder, self.shared_input)]

    def user_weights(self, hu: Tensor) -> Tensor:
        mlps = [self.score_mlps[b] for b in self.branches]
        # the first layers' products (U × 16 per branch), summed over the column blocks in one all-reduce
        first = self.partial_sum(torch.cat([hu[:, j] @ mlp[0].weight.t() for j, mlp in enumerate(mlps)], dim=1))
        hidden = first.split(mlps[0][0].out_features, dim=1)
        scores = torch.cat([mlp[2](mlp[1](h + mlp[0].bias)) for h, mlp in zip(hidden, mlps)], dim=1)
        beta = torch.softmax(self.pwc_w[0] * scores + self.pwc_w[1] * self.theta, dim=1)
        self._beta = beta.detach()
        if self.training:  # the weights copied into Θ before the next epoch
            self.last_beta.copy_(beta.detach())
            self.beta_seen.fill_(True)
        return beta

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, ctx) -> None:  # type: ignore[no-untyped-def]
        e = epoch + 1  # the published epoch counter starts at 1
        w1, w2 = (float(w) for w in self.pwc_w)
        w1 *= self.cfg.decay_base ** e
        total = w1 + w2
        self.pwc_w.copy_(torch.tensor([w1 / total, w2 / total]))
        if bool(self.beta_seen) and self.cfg.weight_copying:
            self.theta.copy_(self.last_beta)
        ctx.broadcast_(self.pwc_w)  # a safety net: every rank computed the same values
        ctx.broadcast_(self.theta.data)

    def forward(self, batch: Batch) -> ModelOutput:
        users, items = self.tables()
        width = len(self.branches) * self.cfg.embedding_size  # the mean squares of the whole tables
        reg = self.partial_sum(users.pow(2).sum() / (self.n_users * width) + items.pow(2).sum() / (self.n_items * width))
        return self.batch_output(users, items, batch, reg=reg)

    def column_layout(self) -> dict[str, int | tuple[int, int]]:
        layout = {**super().column_layout(), **encoder_layout("shared_encoder")}
        for b in self.branches:  # row-parallel: the D input columns of the first layer
            layout[f"score_mlps.{b}.0.weight"] = 1
        return layout

    @torch.no_grad()
    def fusion_weights(self) -> Tensor:
        """``U × B`` branch weights: the last training forward's, or fresh ones before any has run."""
        if bool(self.beta_seen):
            return self.last_beta
        was_training = self.training
        self.eval()
        try:
            self.tables()  # user_weights keeps the fresh β in self._beta
        finally:
            self.train(was_training)
        return self._beta

    def epoch_logs(self) -> dict[str, float]:
        beta = self.fusion_weights()
        logs = {"fusion/w1": float(self.pwc_w[0])}
        for j, b in enumerate(self.branches):
            logs[f"fusion/{b}_mean"] = float(beta[:, j].mean())
            logs[f"fusion/{b}_std"] = float(beta[:, j].std(unbiased=False))
        return logs
