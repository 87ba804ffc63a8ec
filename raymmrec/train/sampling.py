"""Vectorised batching and uniform negative sampling over the training interactions.

Every epoch's order and negatives come from a generator seeded by ``(seed, epoch)``, so an
epoch can be replayed exactly after a resume without saving sampler state.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from raymmrec.models.base import Batch


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1))
    return g


def dropout_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Seed of the global torch RNG (dropout and other in-model randomness) for one epoch."""
    return seed * 1_000_003 + epoch * 31 + stream


class NegativeSampler:
    """Uniform negatives from the items seen in training, never one of the user's training items.

    Rejection is vectorised: all rows are drawn at once, and only the rows that hit a training
    item are redrawn, in rounds, until none is left.
    """

    def __init__(self, n_items: int, train_users: Tensor, train_items: Tensor) -> None:
        self.n_items = n_items
        self.keys = torch.unique(train_users.long() * n_items + train_items.long())  # sorted
        self.pool = torch.unique(train_items.long())

    def is_train_pair(self, users: Tensor, items: Tensor) -> Tensor:
        q = users.long() * self.n_items + items.long()
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def sample(self, users: Tensor, generator: torch.Generator) -> Tensor:
        neg = self.pool[torch.randint(self.pool.numel(), users.shape, generator=generator)]
        bad = self.is_train_pair(users, neg)
        for _ in range(1000):
            if not bool(bad.any()):
                return neg
            idx = bad.nonzero().squeeze(1)
            neg[idx] = self.pool[torch.randint(self.pool.numel(), idx.shape, generator=generator)]
            bad[idx] = self.is_train_pair(users[idx], neg[idx])
        raise RuntimeError("negative sampling did not converge: some user has interacted with every item")


def epoch_batches(
    users: Tensor,
    items: Tensor,
    batch_size: int,
    generator: torch.Generator,
    sampler: NegativeSampler | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Shuffle the pairs and yield batches of ``batch_size`` (the *global* batch size).

    With ``world_size > 1`` each rank takes an interleaved ``1/world_size`` of every global
    batch, so the union over ranks is exactly the single-process batch. Negatives are drawn for
    the whole global batch first, so they too match the single-process run.
    """
    perm = torch.randperm(users.numel(), generator=generator)
    for start in range(0, perm.numel(), batch_size):
        idx = perm[start : start + batch_size]
        u, i = users[idx], items[idx]
        neg = sampler.sample(u, generator) if sampler is not None else None
        if world_size > 1:
            u, i = u[rank::world_size], i[rank::world_size]
            neg = None if neg is None else neg[rank::world_size]
        yield Batch(u, i, neg)
