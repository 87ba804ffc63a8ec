"""What CM3 and LIRDRec share: items represented from their modality features, never by an ID table.

Both methods (CM3: Zhou, Wang, Shen, arXiv 2508.01226; LIRDRec: Zhou, Zhang, Niyato, Shen, arXiv 2505.04960;
code: enoche/CM3, enoche/LIRDRec) build the same graph model and differ
in the item branches they feed it, in how a user's branches are weighted, and in the loss:

* **Branches.** Each branch ``b`` has a free user vector ``P_b`` (Xavier-normal) and an item side
  ``F_b`` computed from the fixed features (one branch per modality, plus CM3's fused ``MIX`` or
  LIRDRec's shared DCT encoder). The node input is ``[rownorm(P_b ; F_b)]_b``, each branch's rows
  L2-normalised on their own, so ``(U + I) × (B · D)``.
* **User-item graph.** LightGCN on Â with the *sum* readout over layers 0..L (not the mean).
* **Items.** ``i = r_i + Â_mm r_i``: one layer over the item-item multimodal kNN graph, with a
  residual. Â_mm is a prepared input (per-modality cosine top-k of the raw features, binary,
  normalised, mixed with ``mm_image_weight`` or ``mm_weights``), built once per dataset and
  parameters and cached by content hash.
* **Users.** ``u = [w_b r^b_u]_b`` with per-user branch weights ``w`` (a softmax) from the subclass.
* **Modality encoders** ``Linear(d_m → 256) → LeakyReLU → Linear(256 → D, no bias)`` with torch's
  default initialisation, applied to the fixed features (not trainable copies).

Any number of modalities: the branches follow the dataset's modalities in sorted order.

Column-sharded (``train.shard=columns``, :mod:`raymmrec.shard`): a worker holds its block of the ``D``
columns of every branch (the user tables ``P_b``, built as blocks) and computes its block of every
``F_b``: a modality encoder's first layer is column-parallel (the worker's block of the 256 hidden
units, from the whole fixed features) and its second row-parallel (the partial products summed over the
workers, each keeping its block of ``D``; Shoeybi et al., "Megatron-LM", 2019, §3). The row
normalisations sum their squared norms over the blocks, propagation acts on each column alone, and the
per-user branch weights (replicated) scale every worker's blocks, their gradient summed over the workers.

Scoring (a deviation from the published code, documented in each model): by default the tables come
from a fresh forward in eval mode, which is deterministic. The published code scores with the
output cached by the epoch's *last training batch*: one optimizer step stale, with that batch's
random draws. ``eval_from_last_batch=True`` reproduces that; the cache is a buffer, so ``best.pt``
and checkpoints carry it and a reloaded model scores exactly as it did.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from raymmrec.graph import fixed_spmm, propagate_sum
from raymmrec.models.base import Batch, Indexed, ModelOutput, RecGraph, Recommender, gather
from raymmrec.shard import building_columns, drawn_columns, made_block, unit_rows


def modality_encoder(d_in: int, d_out: int, hidden: int = 256) -> nn.Sequential:
    """``Linear(d_in → hidden) → LeakyReLU → Linear(hidden → d_out, no bias)``, default init."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(), nn.Linear(hidden, d_out, bias=False))


def xavier_normal_table(n: int, dim: int, split: bool = False) -> nn.Parameter:
    """An ``n × dim`` free table, Xavier-normal (the authors' choice for user branch vectors).

    ``split``: a table split by columns in a column-sharded run (the model's ``column_layout`` names it
    along dim 1); built for a worker (inside :func:`raymmrec.shard.building_blocks`) it holds only the
    worker's block, with the values of the full table's columns (:func:`raymmrec.shard.drawn_columns`)."""
    cols = building_columns() if split else None
    if cols is None:
        return nn.Parameter(nn.init.xavier_normal_(torch.empty(n, dim)))
    std = math.sqrt(2.0 / float(dim + n))  # nn.init.xavier_normal_'s: fan in dim, fan out n
    p = nn.Parameter(drawn_columns(n, dim, (lambda t: t.normal_(0.0, std),), cols))
    return made_block(p, width=dim, dim=1)


def item_graph_request(cfg: Any) -> tuple[str, dict[str, Any]]:
    """The prepared-input request of the item-item graph for a config with the shared fields."""
    if cfg.mm_weights:
        return "item_knn", {"k": cfg.knn_k, "weights": dict(cfg.mm_weights)}
    return "item_knn", {"k": cfg.knn_k, "non_text_weight": cfg.mm_image_weight}


def check_shared_options(cfg: Any, name: str) -> None:
    """One-line errors for the options every feature-graph model has."""
    if cfg.n_ui_layers < 0 or cfg.knn_k < 1 or cfg.embedding_size < 1:
        raise ValueError(f"{name}: n_ui_layers must be >= 0, knn_k and embedding_size >= 1 "
                         f"(got {cfg.n_ui_layers}, {cfg.knn_k}, {cfg.embedding_size})")
    if not 0.0 <= cfg.mm_image_weight <= 1.0:
        raise ValueError(f"{name}: mm_image_weight must be in [0, 1], got {cfg.mm_image_weight}")


def encoder_layout(prefix: str) -> dict[str, int]:
    """A :func:`modality_encoder`'s column layout: its hidden units split (the first layer's output rows
    and bias, the second layer's input columns)."""
    return {f"{prefix}.0.weight": 0, f"{prefix}.0.bias": 0, f"{prefix}.2.weight": 1}


class FeatureGraphModel(Recommender):
    """Base of CM3 and LIRDRec. Subclasses set ``self.branches`` and implement the hooks below.

    Hooks: :meth:`item_branches` (the items' side of every branch, ``I × D`` each, in branch
    order) and :meth:`user_weights` (``U × B`` branch weights from the propagated user branches).
    """

    static_tensors = ("adj", "mm_adj", "mm_adj_t")
    scores_cold_items: ClassVar[bool] = True
    column_sharding = True  # every branch split by its D columns; see the module's docstring
    # eval_from_last_batch's cached tables: recomputed after an unlearning reset (refresh_derived)
    indexed = {"last_users": Indexed("users", derived=True), "last_items": Indexed("items", derived=True)}

    @classmethod
    def prepared_inputs(cls, cfg: Any) -> dict:
        return {"adj": ("norm_adj", {}), "mm_adj": item_graph_request(cfg)}

    def __init__(self, cfg: Any, graph: RecGraph, extra_branches: list[str]) -> None:
        super().__init__(cfg, graph)
        check_shared_options(cfg, type(self).__name__)
        if not graph.features:
            raise ValueError(f"{type(self).__name__} represents items by their modality features; "
                             "the dataset has none (check data.modalities)")
        self.modalities = sorted(graph.features)
        self.branches = [*self.modalities, *extra_branches]
        d = cfg.embedding_size
        self.adj = graph.prepared["adj"]
        self.mm_adj = graph.prepared["mm_adj"]
        self.mm_adj_t = self.mm_adj.t().to_sparse_csr()  # top-k graphs are not symmetric; transposed once
        # the fixed features: plain attributes that follow the model across devices, not parameters
        self.static_tensors = (*type(self).static_tensors, *(f"feat_{m}" for m in self.modalities))
        for m in self.modalities:
            setattr(self, f"feat_{m}", graph.features[m])
        self.encoders = nn.ModuleDict({m: modality_encoder(graph.features[m].shape[1], d) for m in self.modalities})
        self.user_branch = nn.ParameterDict({b: xavier_normal_table(graph.n_users, d, split=True)
                                             for b in self.branches})
        if cfg.eval_from_last_batch:
            width = len(self.branches) * d
            self.register_buffer("last_users", torch.zeros(graph.n_users, width))
            self.register_buffer("last_items", torch.zeros(graph.n_items, width))

    def feature(self, m: str) -> Tensor:
        return getattr(self, f"feat_{m}")

    def encode(self, encoder: nn.Module, x: Tensor) -> Tensor:
        """``encoder(x)`` (``I × D``), or this rank's block of its ``D`` columns: column-sharded, the
        encoder holds its block of the hidden units (the first layer's output rows, the second's input
        columns), and the partial outputs are summed over the ranks."""
        return self.block_of_sum(encoder(x), self.cfg.embedding_size)

    def column_layout(self) -> dict[str, int | tuple[int, int]]:
        layout: dict[str, int | tuple[int, int]] = {f"user_branch.{b}": 1 for b in self.branches}
        for m in self.modalities:
            layout.update(encoder_layout(f"encoders.{m}"))
        if self.cfg.eval_from_last_batch:  # B sections of D columns, each split on its own
            layout["last_users"] = layout["last_items"] = (1, len(self.branches))
        return layout

    # -- hooks ----------------------------------------------------------------------------------
    def item_branches(self) -> list[Tensor]:
        """The item side ``F_b`` of every branch (``I × D``), in ``self.branches`` order."""
        raise NotImplementedError

    def user_weights(self, hu: Tensor) -> Tensor:
        """``U × B`` branch weights (rows sum to 1) from the propagated users ``hu`` (``U × B × D``; column-sharded,
        this rank's block of ``D``); the same on every rank."""
        raise NotImplementedError

    # -- the shared graph model -----------------------------------------------------------------
    def tables(self, item_side: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Final user (``U × B·D``) and item (``I × B·D``) tables, un-normalised, as scored."""
        item_side = self.item_branches() if item_side is None else item_side
        rows = unit_rows(torch.stack([torch.cat([self.user_branch[b], f]) for b, f in zip(self.branches, item_side)]),
                         self.columns)  # B × (U + I) × D, every branch's rows on their own
        h = propagate_sum(self.adj, torch.cat(list(rows), dim=1), self.cfg.n_ui_layers)
        hu, hi = h[: self.n_users], h[self.n_users :]
        items = hi + fixed_spmm(self.mm_adj, hi, self.mm_adj_t)
        n_b = len(self.branches)
        hu = hu.view(self.n_users, n_b, -1)  # -1: D, or this rank's block of it
        w = self.shared(self.user_weights(hu))  # U × B, the same on every rank
        users = (hu * w.unsqueeze(-1)).reshape(self.n_users, -1)
        return users, items

    def remember(self, users: Tensor, items: Tensor) -> None:
        """Keep the training forward's tables for the published scoring behaviour."""
        if self.cfg.eval_from_last_batch and self.training:
            self.last_users.copy_(users.detach())
            self.last_items.copy_(items.detach())

    def batch_output(self, users: Tensor, items: Tensor, batch: Batch, **extra: Tensor) -> ModelOutput:
        self.remember(users, items)
        neg = batch.neg_items
        return ModelOutput(gather(users, batch.users), gather(items, batch.pos_items),
                           None if neg is None else gather(items, neg),
                           extra=dict(extra), reduce=self.score_reduce)

    def forward(self, batch: Batch) -> ModelOutput:
        users, items = self.tables()
        return self.batch_output(users, items, batch)

    def score_tables(self) -> tuple[Tensor, Tensor]:
        users, items = self.tables()
        self.remember(users, items)  # the published scoring then uses these tables
        return users, items

    @torch.no_grad()
    def refresh_derived(self) -> None:
        """The cached scoring tables (``eval_from_last_batch``) from the current weights, in eval mode,
        so that a reloaded unlearned model scores with its reset rows, not the fine-tuning's last step."""
        if not self.cfg.eval_from_last_batch:
            return
        was_training = self.training
        self.eval()
        try:
            users, items = self.tables()
        finally:
            self.train(was_training)
        self.last_users.copy_(users)
        self.last_items.copy_(items)

    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = (self.last_users, self.last_items) if self.cfg.eval_from_last_batch else self.tables()
        n_b = len(self.branches)
        width = n_b * self.cfg.embedding_size
        return self.full_columns(users, width, n_b), self.full_columns(items, width, n_b)
