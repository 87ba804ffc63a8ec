"""A trained run held ready for live top-K queries (no Ray: the Ray Serve layer wraps this).

:class:`Ranker` loads a run's best model once, computes its scoring tables once, and answers
"these users, K items each" with :func:`raymmrec.recommend.top_k`, so a live answer is the same
list, in the same tie order, as ``raymmrec recommend`` and evaluation give. Requests are checked
here too: :class:`RequestError` names the field that is wrong and the HTTP status that fits, and
:class:`Limits` bounds what one request may ask for (users, k, and users x k).

Example::

    ranker = Ranker.load("runs/lightgcn-lfm2k")
    ranker.recommend([3, 17], k=10)   # [[{"item": 512, "score": 4.1, "name": "..."}, ...], [...]]
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Any, Callable

import torch
from torch import Tensor

NAME_CHARS = 80  # item names are cut as `raymmrec recommend` cuts them


class RequestError(ValueError):
    """A bad request: ``status`` (HTTP 4xx) and a one-line ``message`` that starts with the field name."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.status = field, status


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for (``raymmrec serve --max-users/--max-k/--max-results``).

    ``max_users`` users per request, ``max_k`` items per user, and ``max_results`` = users x k items
    per answer (a 1,000-user batch at k=100 is 100,000 entries, about 5 MB of JSON without names).
    A request over one is refused with a 400 that names the limit; fewer items come back where a
    user has fewer left to show.
    """

    max_users: int = 1_000
    max_k: int = 1_000
    max_results: int = 100_000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{field.name.replace('_', '-')}: expected an integer >= 1, got {value!r}")

    @classmethod
    def of(cls, settings: dict[str, Any]) -> "Limits":
        """The limits in ``settings`` (a deployment's settings); a missing one keeps its default."""
        return cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls) if settings.get(f.name) is not None})

    def check(self, n_users: int, k: int) -> None:
        """A RequestError naming the limit when ``n_users`` users at ``k`` items each is over one."""
        if n_users > self.max_users:
            raise RequestError("users", f"{n_users} users; at most {self.max_users} per request (max_users)")
        if k > self.max_k:
            raise RequestError("k", f"expected an integer in [1, {self.max_k}] (max_k), got {k}")
        if n_users * k > self.max_results:
            raise RequestError("users", f"{n_users} users x k={k} = {n_users * k:,} results; at most "
                                        f"{self.max_results:,} per request (max_results): ask for fewer users "
                                        "or a smaller k")


class _TablesOnly:
    """Stands in for the model in :func:`~raymmrec.recommend.top_k`: the scorer with tables computed once."""

    def __init__(self, score: Callable[[Tensor], Tensor]) -> None:
        self._score = score

    def scorer(self) -> Callable[[Tensor], Tensor]:
        return self._score


class Ranker:
    """One trained run ready to rank: scoring tables precomputed, item names read, request checks."""

    def __init__(self, trained: Any, run: str, limits: Limits | None = None,
                 names: dict[int, str] | None = None) -> None:
        from raymmrec.recommend import item_names, seen_by_user

        self.run = str(run).rstrip("/")
        self.name = PurePosixPath(self.run.split("://", 1)[-1]).name  # what answers show: never a path
        self.limits = limits or Limits()
        with torch.no_grad():
            score = trained.model.scorer()  # user and item tables computed here, once
        self._trained = dataclasses.replace(trained, model=_TablesOnly(score))
        self._seen = seen_by_user(trained)  # each user's training items, as top_k masks them
        self.names = (item_names(trained.spec) if names is None else names) or {}
        self.data = data = trained.data  # the dataset (under Serve: read-only views of the object store)
        self.n_users, self.n_items = int(data.n_users), int(data.n_items)
        # the dataset's name (a folder's or a built-in's), never where it is read from
        self._info = {"run": self.name, "method": trained.spec.method, "dataset": data.name,
                      "epoch": int(trained.epoch), "users": self.n_users, "items": self.n_items,
                      "forgotten_items": int(data.forgotten_items.size), "names": bool(self.names)}

    @property
    def info(self) -> dict[str, Any]:
        """What ``/info`` shows: the run's name, method, dataset name, epoch, sizes and the limits."""
        return {**self._info, **dataclasses.asdict(self.limits)}

    @classmethod
    def load(cls, run: str, device: str = "cpu", limits: Limits | None = None, *, data: Any = None,
             prepared: dict[str, Any] | None = None, names: dict[int, str] | None = None) -> "Ranker":
        """Load ``run``'s best model (folder or URL) and precompute its scoring tables.

        ``data``, ``prepared``, ``names``: the run's dataset, prepared inputs and item names
        (:func:`~raymmrec.recommend.item_names`; ``{}``: none) where the caller already has them (a
        Serve replica: from the object store); the dataset is then not read here.
        """
        from raymmrec.train.trained import load_trained

        return cls(load_trained(run, device=device, data=data, prepared=prepared), run, limits, names)

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
        top = self.limits.max_k
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise RequestError("k", f"expected an integer in [1, {top}] (max_k), got {value!r}"[:200]) from None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise RequestError("k", f"expected an integer in [1, {top}] (max_k), got {value!r}"[:200])
        return value

    def check_users(self, value: Any) -> list[int]:
        if not isinstance(value, list) or not value:
            raise RequestError("users", f"expected a non-empty list of integer user ids, got {value!r}"[:200])
        if len(value) > self.limits.max_users:  # before any id is looked at
            raise RequestError("users", f"{len(value)} users; at most {self.limits.max_users} per request "
                                        "(max_users)")
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
