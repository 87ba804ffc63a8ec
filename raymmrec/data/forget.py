"""Forget requests: which users, items or interactions a trained model must unlearn, and the data without them.

A request is a small table (Parquet or CSV, local or a URL) or a Python object:

* **user-wise**: one column ``userID``: every interaction of those users (a right-to-be-forgotten request);
* **item-wise**: one column ``itemID``: every interaction of those items (a revoked licence); the items
  are never recommended afterwards and their features leave the item-item graph;
* **interaction-wise**: both columns: those user-item pairs.

Ids are the dataset's ids as the run uses them (after any rating or k-core filter). An id outside the
dataset, or one that has no interaction to forget, is an error that names the row. Every interaction
counts: train, valid, test, the held-out cold-start items' (``data.cold_items``) and hidden positives.

:func:`apply_forget` removes the forgotten interactions from every split (train, valid, test and cold:
the data is gone, not only its training use) and records the forgotten *training* pairs in
``RecData.forgotten`` (what the model learned and must unlearn) and, for an item-wise request, the
items in ``RecData.forgotten_items`` (left out of negative sampling and of every ranking). A request
may forget no training pair at all (pairs only in valid/test, a cold-start item): the data still goes,
and there is nothing for a model to unlearn. ``RecData.forget_applied`` records that a request was
applied, so that it is applied once. A run whose config sets ``data.forget`` to a request file trains
on the retain data: that is the "Gold" model (retraining from scratch), and the data an unlearned
model is rebuilt with.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raymmrec.data.schema import COLD, SPLITS, DataError, Interactions, RecData

KINDS = ("user", "item", "interaction")


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget: ``kind`` and the ids (``users`` for user-wise, ``items`` for item-wise, both,
    row-aligned, for interaction-wise). ``source`` names where it came from, for error messages."""

    kind: str
    users: np.ndarray
    items: np.ndarray
    source: str = "request"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"{self.source}: request kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @classmethod
    def of(cls, users: Any = None, items: Any = None, source: str = "request") -> "ForgetRequest":
        """From id lists: users only (user-wise), items only (item-wise), or both, row-aligned (pairs)."""
        u = None if users is None else np.asarray(users, dtype=np.int64).reshape(-1)
        i = None if items is None else np.asarray(items, dtype=np.int64).reshape(-1)
        if u is None and i is None:
            raise DataError(f"{source}: expected a userID column, an itemID column, or both; got neither")
        if u is not None and i is not None:
            if u.shape != i.shape:
                raise DataError(f"{source}: userID and itemID must have the same length ({u.size} vs {i.size})")
            return cls("interaction", u, i, source)
        if u is not None:
            return cls("user", np.unique(u), np.zeros(0, np.int64), source)
        return cls("item", np.zeros(0, np.int64), np.unique(i), source)

    def __len__(self) -> int:
        return int(max(self.users.size, self.items.size))

    def describe(self) -> str:
        n = len(self)
        return f"{n:,} {self.kind}{'' if n == 1 else 's'}"

    def to_frame(self) -> pd.DataFrame:
        cols = {"user": {"userID": self.users}, "item": {"itemID": self.items},
                "interaction": {"userID": self.users, "itemID": self.items}}[self.kind]
        return pd.DataFrame(cols)

    def to_parquet_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.to_frame().to_parquet(buf, index=False)
        return buf.getvalue()


def _int_column(frame: pd.DataFrame, col: str, where: str) -> np.ndarray:
    values = pd.to_numeric(frame[col], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: row {row + 1}, column {col}: expected an integer id, got {frame[col].iloc[row]!r}")
    return values.to_numpy().astype(np.int64)


def parse_request(raw: bytes, where: str) -> ForgetRequest:
    """A request from the bytes of a Parquet file (by its magic) or a CSV / TSV file with a header."""
    try:
        if raw[:4] == b"PAR1":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            head = raw.split(b"\n", 1)[0]
            frame = pd.read_csv(io.BytesIO(raw), sep="\t" if b"\t" in head else ",", dtype=str)
    except Exception as e:  # noqa: BLE001 - any reader error becomes one line naming the file
        raise DataError(f"{where}: not a readable Parquet or CSV file ({' '.join(str(e).split())[:200]})") from None
    cols = [c for c in ("userID", "itemID") if c in frame.columns]
    extra = [c for c in frame.columns if c not in ("userID", "itemID")]
    if not cols or extra:
        raise DataError(f"{where}: expected columns userID (user-wise), itemID (item-wise) or both "
                        f"(interaction-wise), got {list(frame.columns)}")
    if len(frame) == 0:
        raise DataError(f"{where}: the request has no rows")
    ids = {c: _int_column(frame, c, where) for c in cols}
    return ForgetRequest.of(ids.get("userID"), ids.get("itemID"), source=where)


def read_request(url: str) -> ForgetRequest:
    """Read a request file from a local path or URL (Parquet or CSV)."""
    from raymmrec.files import read_bytes

    try:
        raw = read_bytes(url)
    except FileNotFoundError:
        raise DataError(f"forget request {url} does not exist") from None
    return parse_request(raw, url)


def check_request(req: ForgetRequest, data: RecData) -> None:
    """Every id exists in ``data`` and has something to forget; else a DataError naming the row."""
    pairs = all_pairs(data)
    checks = []
    if req.kind in ("user", "interaction"):
        checks.append(("userID", req.users, data.n_users, pairs.users))
    if req.kind in ("item", "interaction"):
        checks.append(("itemID", req.items, data.n_items, pairs.items))
    for col, ids, n, present in checks:
        outside = np.flatnonzero((ids < 0) | (ids >= n))
        if outside.size:
            r = int(outside[0])
            raise DataError(f"{req.source}: row {r + 1}: {col} {ids[r]} does not exist (the dataset has ids 0..{n - 1})")
        if req.kind != "interaction":
            absent = np.flatnonzero(~np.isin(ids, present))
            if absent.size:
                r = int(absent[0])
                raise DataError(f"{req.source}: {col} {ids[r]} has no interaction in {data.name} to forget")
    if req.kind == "interaction":
        key = pairs.users * data.n_items + pairs.items
        absent = np.flatnonzero(~np.isin(req.users * data.n_items + req.items, key))
        if absent.size:
            r = int(absent[0])
            raise DataError(f"{req.source}: row {r + 1}: user {req.users[r]}, item {req.items[r]} is not an "
                            f"interaction of {data.name}")


def all_pairs(data: RecData) -> Interactions:
    """Every interaction of ``data``: train, valid, test, cold-start and hidden positives."""
    parts = [data.split(s) for s in (*SPLITS, COLD)] + [data.hidden]
    return Interactions(np.concatenate([p.users for p in parts]), np.concatenate([p.items for p in parts]))


def forget_mask(req: ForgetRequest, part: Interactions, n_items: int) -> np.ndarray:
    """Which rows of ``part`` the request forgets."""
    if req.kind == "user":
        return np.isin(part.users, req.users)
    if req.kind == "item":
        return np.isin(part.items, req.items)
    return np.isin(part.users.astype(np.int64) * n_items + part.items, req.users * n_items + req.items)


def apply_forget(data: RecData, req: ForgetRequest) -> RecData:
    """``data`` without the request's interactions in any split (cold-start and hidden pairs too); the
    forgotten training pairs added to ``forgotten`` (and the items of an item-wise request to
    ``forgotten_items``); ``forget_applied`` set. The training pairs may be none (pairs only in
    valid/test, cold-start items)."""
    check_request(req, data)
    kept, forgotten = {}, None
    for s in (*SPLITS, COLD, "hidden"):
        part = getattr(data, s)
        m = forget_mask(req, part, data.n_items)
        kept[s] = Interactions(part.users[~m], part.items[~m])
        if s == "train":
            forgotten = Interactions(np.concatenate([data.forgotten.users, part.users[m]]),
                                     np.concatenate([data.forgotten.items, part.items[m]]))
    if not len(kept["train"]):
        raise DataError(f"{req.source}: the request forgets every training interaction of {data.name}")
    items = np.union1d(data.forgotten_items, req.items) if req.kind == "item" else data.forgotten_items
    return dataclasses.replace(data, **kept, forgotten=forgotten, forgotten_items=items, forget_applied=True)
