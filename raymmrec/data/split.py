"""MMRec's per-user random train/validation/test split, vectorised.

MMRec (``preprocessing/1splitting.ipynb``) shuffles all rows, groups them by user in random order, and for a
user with ``n`` interactions assigns:

* ``n < 10``: ``n - 2`` train, 1 validation, 1 test;
* otherwise: ``vt = int(0.2 * n)``, ``valid = vt // 2``, ``test = vt - valid``, the rest train.

Users with fewer than 3 interactions therefore get no training row.
"""

from __future__ import annotations

import numpy as np


def split_sizes(n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(n_train, n_valid, n_test)`` per user for interaction counts ``n`` under MMRec's rule."""
    n = np.asarray(n, dtype=np.int64)
    vt = (2 * n) // 10  # int(0.2 * n) without float rounding
    n_valid = np.where(n < 10, np.minimum(n, 1) * (n >= 2), vt // 2)
    n_test = np.where(n < 10, np.minimum(n, 1), vt - vt // 2)
    n_train = n - n_valid - n_test
    return n_train, n_valid, n_test


def mmrec_split(users: np.ndarray, seed: int | np.random.Generator) -> np.ndarray:
    """Assign an ``x_label`` (0 train, 1 valid, 2 test) to each row of ``users``, randomly within each user.

    Args:
        users: int ``[N]`` user id of each interaction row (any order, need not be dense).
        seed: seed or generator; the same seed and input give the same labels.

    Returns:
        int8 ``[N]`` labels aligned with ``users``.
    """
    rng = np.random.default_rng(seed)
    users = np.asarray(users)
    order = rng.permutation(users.shape[0])
    order = order[np.argsort(users[order], kind="stable")]  # grouped by user, random order within a user
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, sorted_users.shape[0]])
    pos = np.arange(sorted_users.shape[0]) - np.repeat(starts, counts)
    n_train, n_valid, _ = split_sizes(counts)
    n_train, n_valid = np.repeat(n_train, counts), np.repeat(n_valid, counts)
    sorted_labels = np.where(pos < n_train, 0, np.where(pos < n_train + n_valid, 1, 2)).astype(np.int8)
    labels = np.empty_like(sorted_labels)
    labels[order] = sorted_labels
    return labels
