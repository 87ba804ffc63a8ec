"""A trained run held ready for live top-K queries (no Ray: the Ray Serve layer wraps this).

:class:`Ranker` loads a run's best model once, computes its scoring tables once, and answers
"these users, K items each" with :func:`raymmrec.recommend.top_k`, so a live answer is the same
list, in the same tie order, as ``raymmrec recommend`` and evaluation give. Requests are checked
here too: :class:`RequestError` names the field that is wrong and the HTTP status that fits.

Example::

    ranker = Ranker.load("runs/lightgcn-lfm2k")
    ranker.recommend([3, 17], k=10)   # [[{"item": 512, "score": 4.1, "name": "..."}, ...], [...]]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor

MAX_USERS_PER_REQUEST = 10_000
NAME_CHARS = 80  # item names are cut as `raymmrec recommend` cuts them
MAX_K = 1_000  # items per user per answer; fewer come back where a user has fewer left to show


class RequestError(ValueError):
    """A bad request: ``status`` (HTTP 4xx) and a one-line ``message`` that starts with the field name."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.status = field, status


class _TablesOnly:
    """Stands in for the model in :func:`~raymmrec.recommend.top_k`: the scorer with tables computed once."""

    def __init__(self, score: Callable[[Tensor], Tensor]) -> None:
        self._score = score

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return self._score


class Ranker:
    """One trained run ready to rank: scoring tables precomputed, item names read, request checks."""

    def __init__(self, trained: Any, run: str) -> None:
        from raymmrec.recommend import item_names, seen_by_user

        self.run = str(run).rstrip("/")
        with torch.no_grad():
            score = trained.model.scorer()  # user and item tables computed here, once
        self._trained = dataclasses.replace(trained, model=_TablesOnly(score))
        self._seen = seen_by_user(trained)  # each user's training items, as top_k masks them
        self.names = item_names(trained) or {}
        data = trained.data
        self.n_users, self.n_items = int(data.n_users), int(data.n_items)
        self.max_k = MAX_K
        self.info = {"run": self.run, "method": trained.spec.method, "dataset": trained.spec.data.source,
                     "epoch": int(trained.epoch), "users": self.n_users, "items": self.n_items,
                     "forgotten_items": int(data.forgotten_items.size), "max_k": self.max_k,
                     "names": bool(self.names)}

    @classmethod
    def load(cls, run: str, device: str = "cpu") -> "Ranker":
        """Load ``run``'s best model (folder or URL) and precompute its scoring tables."""
        from raymmrec.train.trained import load_trained

        return cls(load_trained(run, device=device), run)

    # ---- request checks (each raises RequestError naming the field) ----
    def check_user(self, value: Any, field: str = "user") -> int:
        if isinstance(value, bool):
            raise RequestError(field, f"expected an integer user id, got {value!r}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise RequestError(field, f"expected an integer user id, got {value!r}") from None
        if not isinstance(value, int):
            raise RequestError(field, f"expected an integer user id, got {value!r}")
        if not 0 <= value < self.n_users:
            raise RequestError(field, f"unknown user {value}: expected an id in [0, {self.n_users})", 404)
        return value

    def check_k(self, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise RequestError("k", f"expected an integer in [1, {self.max_k}], got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.max_k:
            raise RequestError("k", f"expected an integer in [1, {self.max_k}], got {value!r}")
        return value

    def check_users(self, value: Any) -> list[int]:
        if not isinstance(value, list) or not value:
            raise RequestError("users", f"expected a non-empty list of integer user ids, got {value!r}"[:200])
        if len(value) > MAX_USERS_PER_REQUEST:
            raise RequestError("users", f"expected at most {MAX_USERS_PER_REQUEST} users, got {len(value)}")
        return [self.check_user(u, "users") for u in value]

    # ---- ranking ----
    def top_k(self, users: list[int], k: int) -> tuple[Tensor, Tensor]:
        """``raymmrec recommend``'s ranking (:func:`~raymmrec.recommend.top_k`) on the precomputed tables."""
        from raymmrec.recommend import top_k

        return top_k(self._trained, torch.tensor(users, dtype=torch.long), k, seen=self._seen)

    def recommend(self, users: list[int], k: int) -> list[list[dict[str, Any]]]:
        """Each user's top ``k`` as ``{"item", "score"[, "name"]}`` dicts, best first (checked ids only)."""
        if not users:
            return []
        items, scores = self.top_k(users, k)
        out = []
        for row, srow in zip(items[:, :k].tolist(), scores[:, :k].tolist()):
            answer = []
            for i, s in zip(row, srow):
                if i < 0 or s == float("-inf"):  # padding: the user has fewer items left to show than k
                    break
                entry: dict[str, Any] = {"item": i, "score": s}
                if self.names:
                    entry["name"] = self.names.get(i, "")[:NAME_CHARS]
                answer.append(entry)
            out.append(answer)
        return out
