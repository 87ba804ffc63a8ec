"""The contract every model follows, and the typed inputs it receives.

A model is a pure ``nn.Module``: it is built from a typed config and a :class:`RecGraph`
(no file I/O, no device hard-coding, no Ray), its ``forward(batch)`` returns the training
loss with named parts, and :meth:`Recommender.scoring_embeddings` gives the user and item
tables whose dot products rank items at evaluation time.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from raymmrec.config import coerce_value


@dataclass
class RecGraph:
    """Everything a model may read about the training data, already on the target device.

    Attributes:
        n_users, n_items: table sizes.
        norm_adj: symmetric-normalised user-item adjacency, sparse CSR ``(U+I) × (U+I)``.
        features: modality name -> float32 ``I × d_m`` feature matrix.
        train_users, train_items: the training pairs (int64, length N).
    """

    n_users: int
    n_items: int
    norm_adj: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    train_users: Tensor | None = None
    train_items: Tensor | None = None


@dataclass
class Batch:
    """One training batch: ``B`` users, their positive items and (optionally) sampled negatives."""

    users: Tensor
    pos_items: Tensor
    neg_items: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.users.to(device, non_blocking=True),
            self.pos_items.to(device, non_blocking=True),
            None if self.neg_items is None else self.neg_items.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class LossOutput:
    """The scalar to minimise plus its named parts (each becomes a TensorBoard scalar)."""

    total: Tensor
    parts: dict[str, Tensor]


class Recommender(nn.Module, ABC):
    """Base class of every model.

    Subclasses set ``config_cls`` (a frozen dataclass) and ``needs_negatives``, and are
    registered with :func:`raymmrec.registry.register`.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type]
    needs_negatives: ClassVar[bool] = True
    static_tensors: ClassVar[tuple[str, ...]] = ()

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

    @abstractmethod
    def forward(self, batch: Batch) -> LossOutput:
        """Training loss for one batch (``forward`` so that DDP can wrap the model)."""

    @abstractmethod
    def scoring_embeddings(self) -> tuple[Tensor, Tensor]:
        """Final ``U × D`` user and ``I × D`` item tables; score(u, i) = their dot product."""

    def pre_epoch(self, epoch: int) -> None:
        """Hook run before each training epoch (epoch counts from 0)."""

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
    """The model's typed config with ``overrides`` applied; unknown keys are an error."""
    cfg_cls = cls.config_cls
    overrides = dict(overrides or {})
    known = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {cls.name!r}; valid options: {sorted(known)}"
        )
    defaults = cfg_cls()
    for key, value in list(overrides.items()):
        overrides[key] = coerce_value(value, getattr(defaults, key), f"model.{key}")
    return cfg_cls(**overrides)


def xavier_embedding(n: int, dim: int) -> nn.Embedding:
    """An ``n × dim`` embedding table with Xavier-uniform initialisation (MMRec's choice)."""
    emb = nn.Embedding(n, dim)
    nn.init.xavier_uniform_(emb.weight)
    return emb


def propagate_mean(adj: Tensor, ego: Tensor, n_layers: int) -> Tensor:
    """LightGCN propagation: mean over layers 0..L of ``Â^l · ego`` (``N × D``)."""
    acc = ego
    h = ego
    for _ in range(n_layers):
        h = torch.sparse.mm(adj, h)
        acc = acc + h
    return acc / (n_layers + 1)


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Mean of ``-log σ(pos - neg)``, computed stably."""
    return nn.functional.softplus(neg_scores - pos_scores).mean()
