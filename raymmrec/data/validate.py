"""Checks on raw interaction tables and feature matrices, each raising :class:`DataError` with a precise message.

The functions work on an *interaction frame*: a pandas DataFrame with int64 columns ``user`` and ``item``,
an int8 column ``label`` (0 = train, 1 = valid, 2 = test) and optionally a float column ``rating``.
Messages name the file, the column or row, the offending ids and what was expected. Row numbers are
1-based line numbers of the source file (the header is line 1).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from raymmrec.data.schema import INTER_COLUMNS, SPLITS, DataError, RecData

#: Columns an MMRec ``.inter`` file must have (``rating`` / ``timestamp`` are optional unless a filter needs them).
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
_MAX_LISTED = 5


def _few(values: np.ndarray | list, total: int | None = None) -> str:
    """At most a handful of values for an error message, with a count of the rest (of ``total``, if given)."""
    values = list(values)
    total = len(values) if total is None else total
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    return shown + (f", ... ({total - _MAX_LISTED} more)" if total > _MAX_LISTED else "")


def check_inter_columns(columns: list[str], file: str, *, need_rating: bool = False) -> None:
    """Raise unless the header of ``file`` has the MMRec columns (``rating`` too when ``need_rating``)."""
    required = REQUIRED_COLUMNS + (("rating",) if need_rating else ())
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"{file}: missing column(s) {missing}; expected a tab-separated header with "
            f"{list(INTER_COLUMNS)} (at least {list(required)}), found {list(columns)}"
        )


def parse_int_column(values: pd.Series, column: str, file: str) -> np.ndarray:
    """Return ``values`` as int64, raising on the first non-integer, negative or beyond-int64 entry (with its line)."""
    if pd.api.types.is_unsigned_integer_dtype(values.dtype):  # pandas reads 2**63 and above as uint64
        raw = values.to_numpy()
        bad = np.flatnonzero(raw > np.iinfo(np.int64).max)
        arr = raw.astype(np.int64)
    elif pd.api.types.is_integer_dtype(values.dtype):
        arr = values.to_numpy(dtype=np.int64)
        bad = np.flatnonzero(arr < 0)
    else:
        num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(num) | (num != np.round(num)) | (num < 0) | (num >= 2.0**63))
        arr = None if bad.size else num.astype(np.int64)
    if bad.size:
        row = int(bad[0])
        value = values.iloc[row]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise DataError(
            f"{file}: column {column!r} must hold non-negative integers below 2**63; line {row + 2} has "
            f"{shown} ({bad.size} bad row(s) in total)"
        )
    assert arr is not None
    return arr


def check_labels(labels: np.ndarray, file: str) -> None:
    """Raise unless every ``x_label`` is 0, 1 or 2."""
    bad = np.flatnonzero((labels < 0) | (labels > 2))
    if bad.size:
        raise DataError(
            f"{file}: column 'x_label' must be 0 (train), 1 (valid) or 2 (test); line {int(bad[0]) + 2} has "
            f"{int(labels[bad[0]])} ({bad.size} bad row(s) in total)"
        )


def _first_missing(distinct: np.ndarray, limit: int = _MAX_LISTED) -> list[int]:
    """The first ``limit`` non-negative integers below ``distinct[-1]`` missing from sorted unique ``distinct``."""
    step = np.diff(distinct, prepend=-1)
    out: list[int] = []
    for pos in np.flatnonzero(step > 1)[:limit]:
        start = int(distinct[pos] - step[pos]) + 1
        out.extend(range(start, min(int(distinct[pos]), start + limit - len(out))))
        if len(out) >= limit:
            break
    return out


def check_dense(ids: np.ndarray, column: str, file: str) -> int:
    """Raise unless the (non-negative) ids cover ``0..max`` without gaps; return ``max + 1`` (0 for no ids).

    Memory stays proportional to the number of ids, not to the largest id (a corrupt id such as 10**12
    gives this error, not a huge allocation).
    """
    if ids.size == 0:
        return 0
    top = int(ids.max())
    if top < ids.size:  # can only be dense if max < number of ids; the mask is then no larger than ``ids``
        seen = np.zeros(top + 1, dtype=bool)
        seen[ids] = True
        if seen.all():
            return top + 1
    distinct = np.unique(ids)
    missing = top + 1 - int(distinct.size)
    raise DataError(
        f"{file}: {column} ids must be dense 0..{top} (MMRec sets the count to max+1; {distinct.size} distinct "
        f"id(s) found), but {missing} id(s) never appear: {_few(_first_missing(distinct), missing)}"
    )


def check_id_range(ids: np.ndarray, column: str, file: str, n: int, expected_by: str) -> None:
    """Raise unless every id lies in ``[0, n)``; ``expected_by`` says where ``n`` comes from (e.g. ``meta.json``)."""
    bad = np.flatnonzero((ids < 0) | (ids >= n))
    if bad.size:
        raise DataError(
            f"{file}: column {column!r} must hold ids in [0, {n}) ({expected_by}), but row {int(bad[0])} "
            f"(0-based) has {int(ids[bad[0]])} ({bad.size} bad row(s) in total)"
        )


def check_features(features: np.ndarray, modality: str, file: str, n_items: int | None = None) -> np.ndarray:
    """Return ``features`` as float32 ``[n_items, d]`` after shape and finiteness checks."""
    if features.ndim != 2:
        raise DataError(f"{file}: {modality} features must be a 2-d [n_items, d] array, got shape {features.shape}")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise DataError(f"{file}: {modality} features must be numeric, got dtype {features.dtype}")
    if n_items is not None and features.shape[0] != n_items:
        raise DataError(
            f"{file}: {modality} features have {features.shape[0]} rows but the interactions have "
            f"{n_items} items (row i must belong to item i)"
        )
    out = np.ascontiguousarray(features, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"{file}: {modality} features contain NaN or inf; first bad row (item) {int(bad[0])}, "
            f"{bad.size} bad row(s) in total"
        )
    return out


def drop_duplicates(frame: pd.DataFrame, file: str) -> pd.DataFrame:
    """Warn about repeated (user, item) pairs and keep only the first row of each."""
    dup = frame.duplicated(["user", "item"], keep="first").to_numpy()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        warnings.warn(
            f"{file}: dropped {int(dup.sum())} duplicate (user, item) row(s), keeping the first of each "
            f"(first duplicate: user {frame['user'].iat[first]}, item {frame['item'].iat[first]})",
            stacklevel=3,
        )
        frame = frame.loc[~dup].reset_index(drop=True)
    return frame


def cold_user_rows(frame: pd.DataFrame) -> np.ndarray:
    """Boolean mask of validation/test rows whose user has no training row."""
    train_users = np.unique(frame["user"].to_numpy()[frame["label"].to_numpy() == 0])
    return (frame["label"].to_numpy() != 0) & ~np.isin(frame["user"].to_numpy(), train_users)


def check_no_cold_users(frame: pd.DataFrame, file: str) -> None:
    """Raise if some user has validation or test rows but no training row."""
    cold = cold_user_rows(frame)
    if cold.any():
        users = np.unique(frame["user"].to_numpy()[cold])
        raise DataError(
            f"{file}: {users.size} user(s) have validation/test rows but no training rows: user ids {_few(users)} "
            "(every evaluated user needs at least one row with x_label 0; use a filter option to drop them)"
        )


def check_splits_nonempty(labels: np.ndarray, file: str) -> None:
    """Raise if the train, validation or test split has no rows."""
    counts = np.bincount(labels.astype(np.int64), minlength=3)
    for code, name in enumerate(SPLITS):
        if counts[code] == 0:
            raise DataError(
                f"{file}: the {name} split is empty (no rows with x_label {code}); expected rows in all three"
            )


def validate_recdata(data: RecData) -> None:
    """Check the invariants of a :class:`RecData`; raise :class:`DataError` naming the dataset and the problem."""
    where = f"dataset {data.name!r}"
    for name in SPLITS:
        inter = data.split(name)
        if len(inter) == 0:
            raise DataError(f"{where}: the {name} split is empty")
        for col, arr, n in (("user", inter.users, data.n_users), ("item", inter.items, data.n_items)):
            if arr.dtype != np.int64:
                raise DataError(f"{where}: {name} {col} ids must be int64, got {arr.dtype}")
            if arr.min() < 0 or arr.max() >= n:
                raise DataError(f"{where}: {name} {col} ids must lie in 0..{n - 1}, found {arr.min()}..{arr.max()}")
    users = np.concatenate([data.split(s).users for s in SPLITS])
    items = np.concatenate([data.split(s).items for s in SPLITS])
    frame = pd.DataFrame({"user": users, "item": items})
    frame["label"] = np.repeat(np.arange(3, dtype=np.int8), [len(data.split(s)) for s in SPLITS])
    if check_dense(users, "user", where) != data.n_users or check_dense(items, "item", where) != data.n_items:
        raise DataError(f"{where}: n_users/n_items ({data.n_users}/{data.n_items}) do not match the ids")
    if frame.duplicated(["user", "item"]).any():
        raise DataError(f"{where}: {int(frame.duplicated(['user', 'item']).sum())} duplicate (user, item) pairs")
    check_no_cold_users(frame, where)
    for modality, feats in data.features.items():
        if feats.dtype != np.float32:
            raise DataError(f"{where}: {modality} features must be float32, got {feats.dtype}")
        check_features(feats, modality, where, data.n_items)
