"""Interaction filters (rating threshold, iterative k-core), dense re-indexing, and frame <-> RecData conversion.

An *interaction frame* is a DataFrame with int64 ``user``/``item``, int8 ``label`` (0 train, 1 valid, 2 test)
and, where the source has one, a float ``rating`` column.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from raymmrec.data.schema import SPLITS, DataError, Interactions, RecData
from raymmrec.data.validate import check_splits_nonempty, cold_user_rows


def rating_filter(frame: pd.DataFrame, threshold: float, source: str) -> pd.DataFrame:
    """Keep rows with ``rating >= threshold``."""
    if "rating" not in frame.columns:
        raise DataError(
            f"{source}: rating_threshold={threshold} needs a rating column, but this source stores implicit "
            "interactions only (ratings are kept only when reading an MMRec .inter file)"
        )
    keep = frame["rating"].to_numpy() >= threshold
    return frame.loc[keep].reset_index(drop=True)


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Rows kept by an iterative k-core on non-negative int ids, and the number of rounds that removed rows.

    Each round drops, at once, every row of a user or an item with fewer than ``k`` rows left (MMRec's
    ``filter_by_k_core``), until every user and item left has at least ``k``.
    """
    keep = np.ones(users.shape[0], dtype=bool)
    if k <= 1:
        return keep, 0
    rounds = 0
    while True:
        u_cnt = np.bincount(users[keep], minlength=int(users.max(initial=-1)) + 1)
        i_cnt = np.bincount(items[keep], minlength=int(items.max(initial=-1)) + 1)
        new_keep = keep & (u_cnt[users] >= k) & (i_cnt[items] >= k)
        if new_keep.sum() == keep.sum():
            return keep, rounds
        keep = new_keep
        rounds += 1


def kcore_filter(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` rows (all splits counted) until none are left."""
    if k <= 1:
        return frame
    keep, _ = kcore_mask(frame["user"].to_numpy(), frame["item"].to_numpy(), k)
    return frame.loc[keep].reset_index(drop=True)


def reindex(
    frame: pd.DataFrame, features: dict[str, np.ndarray]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], int, int]:
    """Map the users and items still present to dense ids (keeping their order); subset feature rows to match."""
    user_ids, users = np.unique(frame["user"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(frame["item"].to_numpy(), return_inverse=True)
    out = frame.copy()
    out["user"] = users.astype(np.int64)
    out["item"] = items.astype(np.int64)
    feats = {m: np.ascontiguousarray(f[item_ids]) for m, f in features.items()}
    return out, feats, int(user_ids.size), int(item_ids.size)


def apply_filters(
    frame: pd.DataFrame,
    features: dict[str, np.ndarray],
    *,
    rating_threshold: float | None = None,
    kcore: int | None = None,
    source: str = "dataset",
) -> tuple[pd.DataFrame, dict[str, np.ndarray], int, int]:
    """Filter, drop validation/test rows of users left without training rows (warning), and re-index densely.

    k-core filtering and the cold-user drop alternate until neither removes anything, so the result is a
    true k-core in which every user has a training row. Returns ``(frame, features, n_users, n_items)``.
    """
    if rating_threshold is not None:
        frame = rating_filter(frame, rating_threshold, source)
    dropped = 0
    while True:
        if kcore is not None:
            frame = kcore_filter(frame, int(kcore))
        cold = cold_user_rows(frame)
        if not cold.any():
            break
        dropped += int(cold.sum())
        frame = frame.loc[~cold].reset_index(drop=True)
    if dropped:
        warnings.warn(
            f"{source}: dropped {dropped} validation/test row(s) of users left without training rows by the filters",
            stacklevel=2,
        )
    if len(frame) == 0:
        raise DataError(
            f"{source}: no interactions left after filtering (rating_threshold={rating_threshold}, kcore={kcore})"
        )
    check_splits_nonempty(frame["label"].to_numpy(), f"{source} (after filtering)")
    return reindex(frame, features)


def frame_to_recdata(
    name: str, frame: pd.DataFrame, features: dict[str, np.ndarray], n_users: int, n_items: int
) -> RecData:
    """Build a :class:`RecData` from an interaction frame (ids must already be dense)."""
    users = frame["user"].to_numpy(dtype=np.int64)
    items = frame["item"].to_numpy(dtype=np.int64)
    labels = frame["label"].to_numpy()
    parts = {
        s: Interactions(np.ascontiguousarray(users[labels == c]), np.ascontiguousarray(items[labels == c]))
        for c, s in enumerate(SPLITS)
    }
    return RecData(name, n_users, n_items, parts["train"], parts["valid"], parts["test"], dict(features))


def recdata_to_frame(data: RecData) -> pd.DataFrame:
    """Concatenate the three splits of ``data`` into an interaction frame."""
    splits = [data.split(s) for s in SPLITS]
    return pd.DataFrame(
        {
            "user": np.concatenate([s.users for s in splits]).astype(np.int64),
            "item": np.concatenate([s.items for s in splits]).astype(np.int64),
            "label": np.repeat(np.arange(3, dtype=np.int8), [len(s) for s in splits]),
        }
    )


def filter_recdata(data: RecData, *, rating_threshold: float | None = None, kcore: int | None = None) -> RecData:
    """Apply :func:`apply_filters` to an in-memory dataset (no ratings: ``rating_threshold`` raises)."""
    if rating_threshold is None and kcore is None:
        return data
    frame, feats, n_users, n_items = apply_filters(
        recdata_to_frame(data), data.features, rating_threshold=rating_threshold, kcore=kcore, source=data.name
    )
    return frame_to_recdata(data.name, frame, feats, n_users, n_items)
