"""MMRec's per-user random train/validation/test split, vectorised.

MMRec (``preprocessing/1splitting.ipynb``) shuffles all rows, groups them by user in random order, and for a
user with ``n`` interactions assigns:

* ``n < 10``: ``n - 2`` train, 1 validation, 1 test;
* otherwise: ``vt = int(0.2 * n)``, ``valid = vt // 2``, ``test = vt - valid``, the rest train.

Users with fewer than 3 interactions therefore get no training row.

:func:`hold_out_cold_items` then optionally moves every interaction of a random set of items into a
fourth, ``cold`` split (cold-start evaluation, ``data.cold_items``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raymmrec.data.schema import DataError, Interactions, RecData


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


def hold_out_cold_items(data: RecData, fraction: float, seed: int) -> RecData:
    """``data`` with ``round(fraction × I')`` random items held out as cold-start items.

    ``I'`` counts the items that have at least one interaction (an item without any would add
    nothing to evaluate). Every interaction of a chosen item, whatever its split, moves to
    ``data.cold``; the item table keeps its size and features, so ``n_items`` and item ids are
    unchanged and models simply never see those items in training. The items are drawn with
    ``numpy.random.default_rng(seed)`` from the filtered dataset, so one dataset and seed always
    hold out the same items (the loader passes the data seed, not ``train.seed``: runs with
    different training seeds share one cold split). Users keep their other interactions, even
    when none of them is left in training. ``data.cold_fraction`` records ``fraction``, so that the
    hold-out is never drawn twice (a forget request may later empty ``cold``; see
    :func:`raymmrec.data.forget.apply_forget`, which removes its pairs from ``cold`` too).

    Raises:
        DataError: ``fraction`` outside [0, 1), a dataset without item features (nothing could
            score a cold item: neither a model nor the content-kNN baseline), no item drawn, or no
            train/valid/test pair left.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.cold_items: expected a fraction in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return data
    if not data.features:
        raise DataError(f"data.cold_items={fraction:g}: {data.name!r} has no item features (data.modalities "
                        "selects none?); cold-start items can only be scored from their features")
    splits = {s: data.split(s) for s in ("train", "valid", "test")}
    seen = np.unique(np.concatenate([p.items for p in splits.values()]))
    n_cold = int(np.floor(fraction * seen.size + 0.5))
    if n_cold == 0:
        raise DataError(f"data.cold_items={fraction:g} holds out no item of {data.name!r} ({seen.size} items "
                        f"with interactions); use a fraction >= {0.5 / max(seen.size, 1):.3g}")
    cold = np.sort(np.random.default_rng(seed).permutation(seen)[:n_cold])
    kept, moved = {}, []
    for name, part in splits.items():
        is_cold = np.isin(part.items, cold)
        kept[name] = Interactions(part.users[~is_cold], part.items[~is_cold])
        moved.append((part.users[is_cold], part.items[is_cold]))
        if len(kept[name]) == 0:
            raise DataError(f"data.cold_items={fraction:g} leaves no {name} interaction in {data.name!r}; "
                            "use a smaller fraction")
    users = np.concatenate([u for u, _ in moved])
    items = np.concatenate([i for _, i in moved])
    order = np.lexsort((items, users))
    return dataclasses.replace(data, **kept, cold=Interactions(users[order], items[order]), cold_fraction=fraction,
                               cold_item_ids=cold)


def hide_positives(data: RecData, fraction: float, seed: int) -> RecData:
    """``data`` with ``round(fraction × n_u)`` random training pairs of each user ``u`` removed.

    The noisy-label study (NBPO): the hidden positives are not trained on; they become unlabelled
    items, i.e. false negatives that a negative sampler may draw. They are kept in ``data.hidden``
    and evaluation leaves them out of the ranking like training items (:meth:`RecData.seen`), so a
    model that ranks them high is not penalised for it. Every user
    keeps at least one training pair. Drawn with ``numpy.random.default_rng(seed)`` (the data seed),
    so every training seed and every method of a study sees the same hidden pairs; validation and
    test are untouched, so results at different rates are measured on the same held-out data.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.hide_positives: expected a fraction in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return data
    users, items = data.train.users, data.train.items
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(users.size), users))  # grouped by user, random order within
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, sorted_users.size])
    n_hide = np.minimum(np.floor(fraction * counts + 0.5).astype(np.int64), counts - 1)
    rank = np.arange(sorted_users.size) - np.repeat(starts, counts)
    kept = rank >= np.repeat(n_hide, counts)
    keep, hide = np.sort(order[kept]), np.sort(order[~kept])
    return dataclasses.replace(data, train=Interactions(users[keep], items[keep]), hidden_positives=fraction,
                               hidden=Interactions(users[hide], items[hide]))
