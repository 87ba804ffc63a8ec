"""In-memory form of a recommendation dataset: interactions per split plus modality features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Column names of an MMRec ``.inter`` file, in order.
INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
#: ``x_label`` values: 0 = train, 1 = validation, 2 = test.
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data. The message names the file (or column / row) and what was expected."""


@dataclass(frozen=True)
class Interactions:
    """Parallel int64 arrays of (user, item) pairs."""

    users: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        if self.users.shape != self.items.shape or self.users.ndim != 1:
            raise ValueError(f"users {self.users.shape} and items {self.items.shape} must be equal 1-d arrays")

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class RecData:
    """A dataset ready for training: dense 0-based ids, three splits, one feature matrix per modality.

    ``features[m]`` is float32 ``[n_items, d_m]``; row ``i`` belongs to item ``i``.
    """

    name: str
    n_users: int
    n_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def split(self, name: str) -> Interactions:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def summary(self) -> str:
        feats = ", ".join(f"{m} {a.shape[1]}-d" for m, a in self.features.items()) or "none"
        return (
            f"{self.name}: {self.n_users:,} users, {self.n_items:,} items, "
            f"{len(self.train):,}/{len(self.valid):,}/{len(self.test):,} train/valid/test; features: {feats}"
        )
