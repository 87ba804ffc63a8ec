"""Batching and negative sampling over the training interactions: one code path for every run.

Every epoch's order and negatives come from a generator seeded by ``(seed, epoch)`` through
``numpy.random.SeedSequence`` (no collisions between seeds, epochs or streams), so an epoch can be
replayed exactly after a resume without saving sampler state. The single-process runner and
every Ray worker call :func:`epoch_batches` on the same pairs in the same canonical order: rank
``r`` of ``N`` takes an interleaved share of each *global* batch, so the pairs move across workers
every epoch and the union over ranks is exactly the single-process batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from raymmrec.models.base import Batch


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed determined by the integers given (seed, epoch, stream, ...), via SeedSequence."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint64)
    return int((int(state[0]) << 1 ^ int(state[1])) % (2**63 - 1))


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream): batch order and negatives."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, epoch, 0, stream))
    return g


def dropout_seed(seed: int, epoch: int) -> int:
    """Seed of the global torch RNG (dropout and other in-model randomness) for one epoch.

    The same on every rank: a model that draws its randomness for whole tables (not per batch
    row) then makes the same draws on N ranks as in one process.
    """
    return derive_seed(seed, epoch, 1)


@dataclass
class NegativeSampler:
    """Negative items for each positive: a strategy, vectorised, with rejection in rounds.

    Attributes:
        pool: ``"train"`` (items seen in training, MMRec's choice) or ``"all"`` items.
        num_negatives: S negatives per positive (``B`` ids when 1, ``B × S`` otherwise).
        replace: whether one row's S negatives may repeat.
        exclude_train: never return one of the user's training items.
        exclude_items: items never returned (e.g. the items an unlearning request forgets).
        weights: None for uniform draws over the pool, else each candidate's probability weight
            (``popularity=True``: its number of training pairs, so an item never seen in training is
            never drawn, whatever the pool).

    Example::

        s = NegativeSampler.from_pairs(n_items, users, items, num_negatives=4, replace=False)
        neg = s.sample(batch_users, torch.Generator().manual_seed(0))   # B × 4
    """

    n_items: int
    keys: Tensor  # sorted user * n_items + item of the training pairs
    candidates: Tensor  # the pool minus exclude_items
    num_negatives: int = 1
    replace: bool = True
    exclude_train: bool = True
    weights: Tensor | None = None

    @classmethod
    def from_pairs(cls, n_items: int, train_users: Tensor, train_items: Tensor, *, pool: str = "train",
                   num_negatives: int = 1, replace: bool = True, exclude_train: bool = True,
                   exclude_items: Tensor | None = None, popularity: bool = False) -> "NegativeSampler":
        if pool not in ("train", "all"):
            raise ValueError(f"negative pool must be 'train' or 'all', got {pool!r}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        keys = torch.unique(train_users.long() * n_items + train_items.long())
        cand = torch.unique(train_items.long()) if pool == "train" else torch.arange(n_items)
        if exclude_items is not None and exclude_items.numel():
            cand = cand[~torch.isin(cand, exclude_items.long())]
        weights = None
        if popularity:
            counts = torch.bincount(train_items.long(), minlength=n_items).to(torch.float64)
            cand = cand[counts[cand] > 0]
            weights = counts[cand]
        if cand.numel() == 0 or (not replace and cand.numel() < num_negatives):
            raise ValueError(f"negative pool has {cand.numel()} items, fewer than the {num_negatives} needed")
        return cls(n_items, keys, cand, num_negatives, replace, exclude_train, weights)

    def is_train_pair(self, users: Tensor, items: Tensor) -> Tensor:
        q = users.long() * self.n_items + items.long()
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def _bad(self, users: Tensor, neg: Tensor) -> Tensor:
        bad = self.is_train_pair(users.unsqueeze(1).expand_as(neg), neg) if self.exclude_train \
            else torch.zeros_like(neg, dtype=torch.bool)
        if not self.replace:
            for j in range(1, neg.shape[1]):  # a repeat of an earlier column in the same row
                bad[:, j] |= (neg[:, :j] == neg[:, j : j + 1]).any(1)
        return bad

    def sample(self, users: Tensor, generator: torch.Generator) -> Tensor:
        s = self.num_negatives
        if self.weights is None:
            draw = lambda n: self.candidates[torch.randint(self.candidates.numel(), (n,), generator=generator)]  # noqa: E731
        else:
            draw = lambda n: self.candidates[torch.multinomial(self.weights, n, replacement=True,  # noqa: E731
                                                               generator=generator)]
        neg = draw(users.numel() * s).view(-1, s)
        bad = self._bad(users, neg)
        for _ in range(1000):
            if not bool(bad.any()):
                return neg[:, 0] if s == 1 else neg
            idx = bad.nonzero(as_tuple=True)
            neg[idx] = draw(idx[0].numel())
            # only the redrawn rows can change: check those, not the whole batch (at 10M training pairs
            # the lookup in the sorted keys is the sampler's whole cost, and few rows are ever redrawn)
            rows = torch.unique(idx[0])
            bad = torch.zeros_like(bad)
            bad[rows] = self._bad(users[rows], neg[rows])
        raise RuntimeError("negative sampling did not converge: some user has interacted with every item")


def canonical_pairs(users: Tensor, items: Tensor, n_items: int) -> tuple[Tensor, Tensor]:
    """The pairs sorted by (user, item): the order batching starts from, whatever the source order."""
    order = torch.argsort(users.long() * n_items + items.long(), stable=True)
    return users[order].long(), items[order].long()


def epoch_batches(
    users: Tensor,
    items: Tensor,
    batch_size: int,
    generator: torch.Generator,
    sampler: NegativeSampler | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Shuffle the pairs and yield this rank's share of each *global* batch of ``batch_size``.

    Rank ``r`` takes rows ``r, r + N, ...`` of every global batch, so the union over ranks is
    exactly the single-process batch; negatives are drawn for the whole global batch first, so
    they match the single-process run too. ``Batch.global_rows`` carries the global batch size.
    """
    perm = torch.randperm(users.numel(), generator=generator)
    for start in range(0, perm.numel(), batch_size):
        idx = perm[start : start + batch_size]
        u, i = users[idx], items[idx]
        neg = sampler.sample(u, generator) if sampler is not None else None
        rows = int(idx.numel())
        if world_size > 1:
            u, i = u[rank::world_size], i[rank::world_size]
            neg = None if neg is None else neg[rank::world_size]
        yield Batch(u, i, neg, global_rows=rows)
