"""The contract every model follows, and the typed inputs it receives.

A model is a pure ``nn.Module``: it is built from a typed config and a :class:`RecGraph`
(no file I/O, no device hard-coding, no Ray), its ``forward(batch)`` returns the batch's
representations as a :class:`ModelOutput`, a registered objective (:mod:`raymmrec.objectives`)
turns them into a loss with named parts, and :meth:`Recommender.scoring_embeddings` gives the
user and item tables whose dot products rank items at evaluation time.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from raymmrec.config import validate_options
from raymmrec.shard import building_columns, drawn_columns, made_block


@dataclass
class RecGraph:
    """Everything a model may read about the training data, already on the target device.

    Attributes:
        n_users, n_items: table sizes.
        features: modality name -> float32 ``I × d_m`` feature matrix.
        train_users, train_items: the training pairs (int64, length N).
        prepared: inputs the model asked for in ``prepared_inputs`` (built once, cached), e.g.
            ``"adj"``: the symmetric-normalised user-item adjacency, sparse CSR ``(U+I) × (U+I)``.
    """

    n_users: int
    n_items: int
    features: dict[str, Tensor] = field(default_factory=dict)
    train_users: Tensor | None = None
    train_items: Tensor | None = None
    prepared: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """One training batch of this rank: ``B`` users, their positive items and sampled negatives.

    Attributes:
        users, pos_items: ``B`` ids.
        neg_items: ``B`` ids (one negative per positive), ``B × S`` (S negatives), or None.
        global_rows: rows of the *global* batch this one is a share of (all ranks together);
            objectives divide by it so that DDP's gradient average is the single-process gradient.
    """

    users: Tensor
    pos_items: Tensor
    neg_items: Tensor | None = None
    global_rows: int = -1

    def __post_init__(self) -> None:
        if self.global_rows < 0:
            self.global_rows = int(self.users.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.users.to(device, non_blocking=True),
            self.pos_items.to(device, non_blocking=True),
            None if self.neg_items is None else self.neg_items.to(device, non_blocking=True),
            self.global_rows,
        )

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class ModelOutput:
    """What a model's forward pass hands to an objective (named, never positional).

    Attributes:
        users, pos, neg: representations of the batch's users (``B × D``), positives (``B × D``)
            and negatives (``B × D`` or ``B × S × D``) as scored, for ranking objectives.
        ego: tables an embedding-norm regulariser acts on (MMRec's EmbLoss), row-aligned with the batch.
        extra: anything else a method-specific objective reads (e.g. BM3's online and target views).
    """

    users: Tensor | None = None
    pos: Tensor | None = None
    neg: Tensor | None = None
    ego: tuple[Tensor, ...] = ()
    extra: dict[str, Tensor] = field(default_factory=dict)
    #: Set when ``users``/``pos``/``neg`` hold this rank's column block (a column-sharded run): sums
    #: the ranks' partial dot products (:meth:`raymmrec.shard.Columns.reduce`).
    reduce: Callable[[Tensor], Tensor] | None = None

    def scores(self) -> tuple[Tensor, Tensor]:
        """Positive (``B``) and negative (``B`` or ``B × S``) dot-product scores."""
        if self.users is None or self.pos is None or self.neg is None:
            raise ValueError("this objective needs user, positive and negative representations")
        pos = (self.users * self.pos).sum(-1)
        u = self.users if self.neg.dim() == 2 else self.users.unsqueeze(1)
        neg = (u * self.neg).sum(-1)
        if self.reduce is not None:  # one all-reduce of the batch's B × (1 + S) partial scores
            both = self.reduce(torch.cat([pos.unsqueeze(-1), neg.reshape(pos.shape[0], -1)], -1))
            return both[:, 0], both[:, 1:].reshape(neg.shape)
        return pos, neg


@dataclass
class LossOutput:
    """The scalar to minimise plus its named parts (each becomes a TensorBoard scalar).

    ``total`` is this rank's surrogate: its gradient, averaged by DDP, is the global gradient.
    ``parts`` hold this rank's *contribution* to each part of the global loss (they sum to the
    global value over ranks; in one process they are the values), and ``value`` that of the total.
    """

    total: Tensor
    parts: dict[str, Tensor]
    value: Tensor | None = None

    def __post_init__(self) -> None:
        if self.value is None:
            self.value = self.total.detach()


class Indexed(NamedTuple):
    """A state tensor (parameter or buffer) indexed by users or items: slice ``i`` along ``axis`` is
    user (item) ``i``'s own. ``derived``: a cache recomputed from the rest of the state by
    :meth:`Recommender.refresh_derived`, never reset slice by slice."""

    who: str  # "users" | "items"
    axis: int = 0
    derived: bool = False


#: The conventional names: a top-level attribute named ``user_*`` / ``item_*`` whose first dimension
#: is the user / item count (``user_emb.weight``, CM3's ``user_branch.<b>``).
CONVENTIONAL = {"user_": "users", "item_": "items"}


def declared_state(module: nn.Module, keys: Any) -> dict[str, Indexed | None]:
    """The ``indexed`` declarations of ``module`` and of every submodule (keys prefixed by its path;
    a class's own merged over its bases'), each matched against the state-dict ``keys``: an exact
    key, or a prefix ending in "."."""
    out: dict[str, Indexed | None] = {}
    keys = list(keys)
    for path, sub in module.named_modules():
        decls: dict[str, Indexed | None] = {}
        for cls in reversed(type(sub).__mro__):
            decls.update(vars(cls).get("indexed", {}))
        for decl, how in decls.items():
            full = f"{path}.{decl}" if path else decl
            for k in keys:
                if k == full or (full.endswith(".") and k.startswith(full)):
                    out[k] = how
    return out


class Recommender(nn.Module, ABC):
    """Base class of every model: it embeds and scores; a registered objective computes the loss.

    Subclasses set ``config_cls`` (a frozen dataclass) and ``default_objective`` (a name in the
    objective registry), and are registered with :func:`raymmrec.registry.register`.

    Extension points, each with a default that the four baseline methods use:

    * :meth:`prepared_inputs` names inputs built once per dataset and cached (e.g. the user-item
      adjacency, an item-item kNN graph); they arrive in ``graph.prepared``;
    * :meth:`configure_optimizer` picks the optimizer and per-epoch schedule (Adam by default);
    * :meth:`on_epoch_start` runs after the epoch's seeding, with the distributed context, so
      per-epoch state can be kept identical on every rank.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type]
    default_objective: ClassVar[str] = "bpr"
    provides: ClassVar[frozenset[str]] = frozenset({"pairwise"})  # output kinds objectives may require
    static_tensors: ClassVar[tuple[str, ...]] = ()
    #: True when an item's score depends on its features, so items never seen in training (cold-start
    #: items, ``data.cold_items``) get meaningful scores; False: their cold-start metrics are not computed.
    scores_cold_items: ClassVar[bool] = False
    #: What the method's own training leaves of a user with no training data: ``"init"`` (its rows
    #: are never touched) or ``"zero"`` (a regulariser over the whole tables decays them, as BM3's
    #: does). Unlearning gives a forgotten user the same (``raymmrec.unlearning``, ``reset=auto``).
    untrained_rows: ClassVar[str] = "init"
    #: State indexed by users or items besides the conventional names (:data:`CONVENTIONAL`):
    #: state-dict key (or a prefix ending in ".") -> :class:`Indexed`, or None for a conventionally
    #: named entry that is not. Any submodule may declare its own (an objective's module: NBPO's flip
    #: tables). Unlearning resets the forgotten users' / items' slices of every entry
    #: (:mod:`raymmrec.unlearning.reset`); a test fails on a user- or item-sized tensor of any
    #: registered method and objective that :meth:`indexed_state` leaves out.
    indexed: ClassVar[dict[str, Indexed | None]] = {}
    #: The method's own ``train`` settings (its paper's), e.g. ``{"patience": 10}``: they replace the
    #: project's defaults for this method, under the user's YAML and ``train.key=value`` overrides
    #: (:func:`raymmrec.config.method_train_defaults`); ``config.json`` records the values used.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: True when the method trains column-sharded (``train.shard=columns``, :mod:`raymmrec.shard`): it
    #: names its split tensors in :meth:`column_layout` and computes on its blocks once ``columns`` is set.
    column_sharding: ClassVar[bool] = False
    columns: Any = None  # this rank's raymmrec.shard.Columns in a column-sharded run, else None

    def __init__(self, cfg: Any, graph: RecGraph) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users = graph.n_users
        self.n_items = graph.n_items

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Graph tensors are plain attributes (kept out of state_dict: they are rebuilt from
        # the data, never loaded from a file) but must follow the model across devices.
        super()._apply(fn, recurse)
        for name in self.static_tensors:
            setattr(self, name, fn(getattr(self, name)))
        return self

    @classmethod
    def prepared_inputs(cls, cfg: Any) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{name: (builder, params)}`` of the cached inputs this model reads from ``graph.prepared``."""
        return {}

    @classmethod
    def configure_optimizer(cls, params: list[Any], train: Any) -> tuple[torch.optim.Optimizer, Any]:
        """Optimizer and an optional per-epoch LR scheduler (``None``); Adam, fused where available.

        ``params`` are parameters or parameter groups (dicts, e.g. an objective's own parameters
        with their own weight decay). Fused Adam computes the same update (to float rounding) in
        one pass over memory: 5x faster per step on CPU for BM3 at Amazon Baby scale, where the
        trainable feature tables make the optimizer step the largest cost of an epoch.

        ``train.optimizer = "sgd"``: plain SGD whose ``weight_decay`` adds ``λ θ`` to every
        parameter's gradient, i.e. decays the *full* tables at every step (NBPO's authors' recipe).
        ``train.lr_decay < 1`` multiplies the rate by ``lr_decay^(epoch + 1)``: already at the first
        epoch, as the NBPO code decays before training.
        """
        kwargs = {"lr": train.lr, "weight_decay": train.weight_decay}
        if getattr(train, "optimizer", "adam") == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, **kwargs)
        else:
            try:
                opt = torch.optim.Adam(params, fused=True, **kwargs)
            except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
                opt = torch.optim.Adam(params, **kwargs)
        decay = getattr(train, "lr_decay", 1.0)
        if decay == 1.0:
            return opt, None
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: decay ** (epoch + 1))

    @abstractmethod
    def forward(self, batch: Batch) -> ModelOutput:
        """Representations of one batch (``forward`` so that DDP can wrap the model)."""

    @abstractmethod
    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        """Final ``U × D`` user and ``I × D`` item tables; score(u, i) = their dot product."""

    def score_tables(self) -> tuple[Tensor, Tensor]:
        """The scoring tables with gradients, as training would compute them (for objectives on the
        model's own scores, e.g. unlearning); by default :meth:`scoring_embeddings`."""
        return self.scoring_embeddings()

    def epoch_logs(self) -> dict[str, float]:
        """Scalars about the model's own state, logged after every training epoch as ``model/<key>``.

        They go wherever the epoch's losses go (TensorBoard, the Ray Train report), e.g. LIRDRec's
        per-modality user fusion weights. Called on every rank; return the same values on each.
        """
        return {}

    def column_layout(self) -> dict[str, int | tuple[int, int]]:
        """State-dict key -> the dimension split over the ranks of a column-sharded run (or
        ``(dim, parts)``: ``parts`` equal sections split each on its own); unlisted tensors are replicated."""
        return {}

    def full_columns(self, t: Tensor, width: int, parts: int = 1) -> Tensor:
        """``t``'s last dimension joined over the ranks into ``width`` columns (itself in one process)."""
        return t if self.columns is None else self.columns.gather(t, width, -1, parts)

    def partial_sum(self, t: Tensor) -> Tensor:
        """Sum over the column blocks of a per-rank partial sum (itself in one process)."""
        return t if self.columns is None else self.columns.reduce(t)

    def block_of_sum(self, t: Tensor, width: int) -> Tensor:
        """This rank's block of the ``width`` last-dimension columns of the sum over the ranks of ``t``,
        a row-parallel layer's partial output (itself in one process)."""
        return t if self.columns is None else self.columns.scatter(t, width)

    def shared(self, t: Tensor) -> Tensor:
        """A replicated tensor applied to every rank's block: its gradient summed over the ranks (itself in one
        process)."""
        return t if self.columns is None else self.columns.share(t)

    @property
    def score_reduce(self) -> Any:
        """What :class:`ModelOutput` sums partial scores with: the column all-reduce, or None in one process."""
        return None if self.columns is None else self.columns.reduce

    def on_epoch_start(self, epoch: int, ctx: Any) -> None:
        """Hook run before each training epoch (epoch counts from 0), after seeding.

        ``ctx`` is the :class:`~raymmrec.train.dist.DistContext`; state rewritten here must be
        made identical on every rank (``ctx.broadcast_``), or N ranks silently diverge.
        """

    def indexed_state(self) -> dict[str, Indexed]:
        """``{state-dict key: Indexed}`` of every parameter and buffer (an attached objective's module's
        included) indexed by users or items: the conventional names, then every ``indexed`` declaration."""
        state = self.state_dict(keep_vars=True)
        sizes = {"users": self.n_users, "items": self.n_items}
        out: dict[str, Indexed | None] = {}
        for k, t in state.items():
            who = next((w for pre, w in CONVENTIONAL.items() if k.startswith(pre)), None)
            if who is not None and t.dim() >= 1 and t.shape[0] == sizes[who]:
                out[k] = Indexed(who)
        out.update(declared_state(self, state))
        return {k: how for k, how in out.items() if how is not None}

    def refresh_derived(self) -> None:
        """Recompute the ``derived`` entries of :meth:`indexed_state` (caches) from the current state,
        after unlearning reset the others; none by default."""

    @torch.no_grad()
    def scorer(self) -> Callable[[Tensor], Tensor]:
        """A function ``users (B) -> scores (B × I)``, with the tables computed once, in eval mode."""
        was_training = self.training
        self.eval()
        users_emb, items_emb = self.scoring_embeddings()
        self.train(was_training)
        items_t = items_emb.t().contiguous()
        return lambda users: users_emb[users] @ items_t


def build_config(cls: type[Recommender], overrides: dict[str, Any] | None) -> Any:
    """The model's typed config with ``overrides`` applied; unknown keys and bad values are errors."""
    return validate_options(cls.config_cls, overrides, "model")


def gather(table: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (any shape) of ``table`` (``N × D``): ``idx.shape + (D,)``, same values as ``table[idx]``.

    On CPU through ``index_select``, whose backward accumulates with ``index_add_``: three times faster
    than the backward of ``table[idx]`` (``index_put_`` with accumulation), which was the largest cost
    of a BM3 training step after the matrix products. Elsewhere through ``F.embedding``, whose CUDA
    backward is deterministic (``index_add_`` there accumulates with atomics, in varying order).
    """
    flat = idx.reshape(-1)
    rows = torch.index_select(table, 0, flat) if table.device.type == "cpu" else F.embedding(flat, table)
    return rows.view(*idx.shape, table.shape[-1])


def xavier_embedding(n: int, dim: int, parts: int = 1) -> nn.Embedding:
    """An ``n × dim`` embedding table with Xavier-uniform initialisation (MMRec's choice).

    Built for a column-sharded worker (inside :func:`raymmrec.shard.building_blocks`) it holds only the
    worker's block of columns (``parts`` sections split each on its own, as the model's ``column_layout``
    says), with the values of the full table's columns: the same draws (``nn.Embedding``'s own normal
    initialisation, then Xavier's) made row chunk by row chunk (:func:`raymmrec.shard.drawn_columns`).
    """
    cols = building_columns()
    if cols is None:
        emb = nn.Embedding(n, dim)
        nn.init.xavier_uniform_(emb.weight)
        return emb
    bound = math.sqrt(3.0) * math.sqrt(2.0 / float(dim + n))  # nn.init.xavier_uniform_'s: fan in dim, fan out n
    block = drawn_columns(n, dim, (lambda t: t.normal_(), lambda t: t.uniform_(-bound, bound)), cols, parts)
    emb = nn.Embedding(n, block.shape[1], _weight=block)
    made_block(emb.weight, width=dim, dim=1, parts=parts)
    return emb


def trainable_copy(t: Tensor) -> nn.Parameter:
    """A trainable copy of a frozen ``n × d`` table (BM3's feature copies): always a new tensor, never a
    view of ``t`` (which may map memory shared read-only by a node's workers).

    Built for a column-sharded worker (inside :func:`raymmrec.shard.building_blocks`) it holds only the
    worker's block of columns (split as ``column_layout``'s ``dim`` 1 says), copied from ``t`` without
    copying the whole table first.
    """
    cols = building_columns()
    if cols is None:
        return nn.Parameter(t.detach().clone())
    p = nn.Parameter(cols.local(t.detach(), 1))
    made_block(p, width=t.shape[1], dim=1)
    return p
