"""In-memory form of a recommendation dataset: interactions per split plus modality features."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Column names of an MMRec ``.inter`` file, in order.
INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
#: ``x_label`` values: 0 = train, 1 = validation, 2 = test.
SPLITS = ("train", "valid", "test")
#: The held-out interactions of cold-start items (``data.cold_items``); never stored in a file.
COLD = "cold"


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

    ``features[m]`` is float32 ``[n_items, d_m]``; row ``i`` belongs to item ``i``. ``cold`` holds
    every interaction of the items held out as cold-start items (:func:`raymmrec.data.split.hold_out_cold_items`);
    empty unless ``data.cold_items`` > 0, and then those items have no train/valid/test interaction.
    """

    name: str
    n_users: int
    n_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    features: dict[str, np.ndarray] = field(default_factory=dict)
    cold: Interactions = field(default_factory=lambda: Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64)))
    hidden_positives: float = 0.0  # fraction of each user's training pairs hidden (data.hide_positives)
    hidden: Interactions = field(default_factory=lambda: Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64)))
    # data.forget: the forgotten training pairs (gone from every split) and the items of an item-wise
    # request, which are never negatives and never ranked (raymmrec.data.forget)
    forgotten: Interactions = field(default_factory=lambda: Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64)))
    forgotten_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # what was applied, so that it is never applied twice: the data.cold_items fraction held out (0: none)
    # and whether a forget request was applied (one whose pairs lie only in valid/test forgets no training pair)
    cold_fraction: float = 0.0
    forget_applied: bool = False
    # the items held out as cold-start when they were drawn: a forget request may remove every pair of
    # one, which must not turn it into an ordinary item (a training negative, a smaller cold candidate set)
    cold_item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    #: the pair sets of :meth:`to_arrays`, in order
    PAIRS = ("train", "valid", "test", "cold", "hidden", "forgotten")

    def to_arrays(self) -> dict[str, Any]:
        """Everything in this dataset as a plain dict of numpy arrays and scalars (no copies).

        What a job hands its workers through a shared store: the arrays can come back read-only
        (a view of shared memory) and :meth:`from_arrays` uses them as they are.
        """
        return {
            "meta": {"name": self.name, "n_users": self.n_users, "n_items": self.n_items,
                     "hidden_positives": self.hidden_positives, "cold_fraction": self.cold_fraction,
                     "forget_applied": self.forget_applied},
            "pairs": {k: {"users": getattr(self, k).users, "items": getattr(self, k).items} for k in self.PAIRS},
            "features": dict(self.features),
            "forgotten_items": self.forgotten_items,
            "cold_item_ids": self.cold_item_ids,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> "RecData":
        """The dataset of :meth:`to_arrays`; the arrays are used as they are (never written to)."""
        m = arrays["meta"]
        pairs = {k: Interactions(v["users"], v["items"]) for k, v in arrays["pairs"].items()}
        return cls(m["name"], int(m["n_users"]), int(m["n_items"]), pairs["train"], pairs["valid"], pairs["test"],
                   dict(arrays["features"]), cold=pairs["cold"], hidden_positives=float(m["hidden_positives"]),
                   hidden=pairs["hidden"], forgotten=pairs["forgotten"], forgotten_items=arrays["forgotten_items"],
                   cold_fraction=float(m["cold_fraction"]), forget_applied=bool(m["forget_applied"]),
                   cold_item_ids=arrays["cold_item_ids"])

    def seen(self) -> Interactions:
        """The pairs evaluation never ranks: training pairs plus hidden positives (true preferences
        the model was not shown; counting them as misses would penalise a model that recovers them)."""
        if not len(self.hidden):
            return self.train
        return Interactions(np.concatenate([self.train.users, self.hidden.users]),
                            np.concatenate([self.train.items, self.hidden.items]))

    def split(self, name: str) -> Interactions:
        if name not in (*SPLITS, COLD):
            raise KeyError(f"unknown split {name!r}; expected one of {(*SPLITS, COLD)}")
        return getattr(self, name)

    def cold_items(self) -> np.ndarray:
        """Sorted ids of the held-out cold-start items as drawn, less an item-wise forget request's items
        (empty when none are held out). A user-wise request may empty a cold item: it stays cold."""
        drawn = np.union1d(self.cold_item_ids, self.cold.items).astype(np.int64)
        return np.setdiff1d(drawn, self.forgotten_items) if self.forgotten_items.size else drawn

    def summary(self) -> str:
        feats = ", ".join(f"{m} {a.shape[1]}-d" for m, a in self.features.items()) or "none"
        return (
            f"{self.name}: {self.n_users:,} users, {self.n_items:,} items, "
            f"{len(self.train):,}/{len(self.valid):,}/{len(self.test):,} train/valid/test; features: {feats}"
            + (f"; cold-start: {self.cold_items().size:,} items held out with {len(self.cold):,} interactions"
               if len(self.cold) else "")
            + (f"; {self.hidden_positives:.0%} of each user's training positives hidden" if self.hidden_positives else "")
            + (f"; {len(self.forgotten):,} training interactions forgotten"
               + (f" ({self.forgotten_items.size:,} items)" if self.forgotten_items.size else "")
               if len(self.forgotten) else "")
        )
