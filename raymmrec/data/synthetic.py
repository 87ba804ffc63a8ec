"""Fast, vectorised synthetic multimodal datasets with planted structure.

Generative story:

* items belong to ``K`` latent clusters (uneven sizes) and have a log-normal popularity;
* each user likes 1 to 3 clusters with random weights; an interaction picks one of the user's clusters, then an
  item of that cluster with probability proportional to popularity (with a small chance of a globally popular
  item instead);
* each modality ``m`` is ``(cluster centre + item noise) @ W_m + feature noise`` with a random linear map ``W_m``,
  so features tell which cluster (and hence which users) an item belongs to, even for items with one or two
  interactions, where ID embeddings learn little.

Guarantees: exact sizes, every user has at least 3 interactions (so at least one training row), every item id
appears at least once, no duplicate (user, item) pairs, MMRec's per-user random split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raymmrec.data.filters import frame_to_recdata
from raymmrec.data.schema import DataError, RecData
from raymmrec.data.split import mmrec_split

_MIN_PER_USER = 3
_GLOBAL_MIX = 0.1  # chance that a draw ignores the user's clusters and picks a globally popular item
_FEATURE_NOISE = {"text": 1.0, "image": 1.5}  # feature noise std per modality at >= 64 dims (others: 1.0)


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and knobs of a synthetic dataset; ``dims`` maps modality name to feature width."""

    n_users: int
    n_items: int
    n_interactions: int
    dims: dict[str, int] = field(default_factory=lambda: {"text": 64, "image": 128})
    n_clusters: int | None = None  # default: round(sqrt(n_items)), clipped to 2..64
    latent_dim: int = 32
    item_spread: float = 0.5  # std of an item's latent offset from its cluster centre


#: Named presets: ``synthetic`` (default), ``synthetic:tiny`` (unit tests), and the MMRec Baby/Clothing sizes.
PRESETS: dict[str, SyntheticSpec] = {
    "small": SyntheticSpec(600, 400, 12_000, {"text": 64, "image": 128}),
    "tiny": SyntheticSpec(40, 30, 240, {"text": 8, "image": 8}),
    "baby": SyntheticSpec(19_445, 7_050, 160_792, {"image": 4096, "text": 384}),
    "clothing": SyntheticSpec(39_387, 23_033, 278_677, {"image": 4096, "text": 384}),
}


@dataclass
class SyntheticTruth:
    """The planted structure: ``item_cluster [n_items]``, ``user_clusters``/``user_weights [n_users, 3]``."""

    item_cluster: np.ndarray
    user_clusters: np.ndarray
    user_weights: np.ndarray
    item_popularity: np.ndarray


def _check_sizes(spec: SyntheticSpec) -> int:
    """Validate sizes; return the per-user interaction cap."""
    cap = max(_MIN_PER_USER, spec.n_items // 2)
    if spec.n_users < 1 or spec.n_items < _MIN_PER_USER:
        raise DataError(
            f"synthetic: need n_users >= 1 and n_items >= {_MIN_PER_USER}, got {spec.n_users}, {spec.n_items}"
        )
    lo, hi = max(_MIN_PER_USER * spec.n_users, spec.n_items), spec.n_users * cap
    if not lo <= spec.n_interactions <= hi:
        raise DataError(
            f"synthetic: n_interactions={spec.n_interactions} must lie in [{lo}, {hi}] for {spec.n_users} users and "
            f"{spec.n_items} items (>= {_MIN_PER_USER} per user, every item once, <= {cap} per user)"
        )
    return cap


def _degrees(spec: SyntheticSpec, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed per-user counts, each in [3, cap], summing exactly to ``n_interactions``."""
    deg = np.full(spec.n_users, _MIN_PER_USER, dtype=np.int64)
    weight = rng.lognormal(0.0, 1.0, spec.n_users)
    extra = spec.n_interactions - deg.sum()
    while extra > 0:
        room = cap - deg
        w = np.where(room > 0, weight, 0.0)
        deg += rng.multinomial(extra, w / w.sum())
        extra = int(np.maximum(deg - cap, 0).sum())
        deg = np.minimum(deg, cap)
    return deg


def _sample_pairs(
    deg: np.ndarray, truth: SyntheticTruth, n_items: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``deg[u]`` distinct items for every user from the planted preferences."""
    n_clusters = int(truth.item_cluster.max()) + 1
    by_cluster = np.argsort(truth.item_cluster, kind="stable")
    pop_sorted = truth.item_popularity[by_cluster]
    starts = np.searchsorted(truth.item_cluster[by_cluster], np.arange(n_clusters))
    csum = np.cumsum(pop_sorted)
    before = np.r_[0.0, csum][starts]
    total = np.r_[csum[starts[1:] - 1], csum[-1]] - before
    offset = np.arange(n_clusters, dtype=np.float64)
    cum_in = (
        offset[truth.item_cluster[by_cluster]]
        + (csum - before[truth.item_cluster[by_cluster]]) / total[truth.item_cluster[by_cluster]]
    )  # cluster k occupies (k, k+1]
    global_cdf = np.cumsum(truth.item_popularity) / truth.item_popularity.sum()
    cum_w = np.cumsum(truth.user_weights, axis=1)

    keys = np.empty(0, dtype=np.int64)
    for round_ in range(30):
        have = np.bincount(keys // n_items, minlength=deg.size)
        need = deg - have
        if not need.any():
            break
        draws = np.where(need > 0, np.ceil(need * 1.3).astype(np.int64) + 1, 0)
        users = np.repeat(np.arange(deg.size), draws)
        slot = (rng.random(users.size)[:, None] > cum_w[users]).sum(axis=1).clip(max=2)
        cluster = truth.user_clusters[users, slot]
        pick = np.searchsorted(cum_in, cluster + rng.random(users.size), side="right")
        local = by_cluster[pick.clip(max=n_items - 1)]
        mix = _GLOBAL_MIX if round_ < 10 else 0.5
        glob = np.searchsorted(global_cdf, rng.random(users.size), side="right")
        items = np.where(rng.random(users.size) < mix, glob, local).clip(max=n_items - 1)
        keys = _keep_first(np.r_[keys, users * n_items + items], deg, n_items)
    users, items = keys // n_items, keys % n_items
    need = deg - np.bincount(users, minlength=deg.size)
    extra_u, extra_i = [], []
    for u in np.flatnonzero(need):  # rare fallback: fill from the items the user does not have yet
        free = np.setdiff1d(np.arange(n_items), items[users == u])
        extra_u.append(np.full(need[u], u))
        extra_i.append(rng.choice(free, need[u], replace=False))
    if extra_u:
        users, items = np.concatenate([users, *extra_u]), np.concatenate([items, *extra_i])
    return users.astype(np.int64), items.astype(np.int64)


def _keep_first(keys: np.ndarray, deg: np.ndarray, n_items: int) -> np.ndarray:
    """Drop repeated keys (first occurrence wins), then keep each user's first ``deg[u]`` keys in order."""
    _, first = np.unique(keys, return_index=True)
    keys = keys[np.sort(first)]
    users = keys // n_items
    order = np.argsort(users, kind="stable")
    su = users[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    pos = np.arange(su.size) - np.repeat(starts, np.diff(np.r_[starts, su.size]))
    return keys[np.sort(order[pos < deg[su]])]


def _cover_items(users: np.ndarray, items: np.ndarray, cluster: np.ndarray, rng: np.random.Generator) -> None:
    """Give every unseen item one row, taken from a repeat row of an item in the same cluster (in place)."""
    n_items = cluster.size
    counts = np.bincount(items, minlength=n_items)
    missing = np.flatnonzero(counts == 0)
    if missing.size == 0:
        return
    _, first = np.unique(items, return_index=True)
    spare = np.ones(items.size, dtype=bool)
    spare[first] = False  # each item keeps its first row, so no item is emptied
    donors = rng.permutation(np.flatnonzero(spare))
    left: list[np.ndarray] = []
    used = np.zeros(items.size, dtype=bool)
    for k in np.unique(cluster[missing]):
        want = missing[cluster[missing] == k]
        pool = donors[(cluster[items[donors]] == k) & ~used[donors]][: want.size]
        items[pool] = want[: pool.size]
        used[pool] = True
        left.append(want[pool.size :])
    rest = np.concatenate(left)
    pool = donors[~used[donors]][: rest.size]
    items[pool] = rest  # sizes were checked: n_interactions >= n_items, so enough spare rows exist


def generate_synthetic(spec: SyntheticSpec, seed: int = 0, name: str = "synthetic") -> tuple[RecData, SyntheticTruth]:
    """Generate a dataset and its planted structure. Deterministic in ``(spec, seed)``."""
    cap = _check_sizes(spec)
    rng = np.random.default_rng(seed)
    n_clusters = spec.n_clusters or int(np.clip(round(np.sqrt(spec.n_items)), 2, 64))
    n_clusters = min(n_clusters, spec.n_items)
    share = rng.dirichlet(np.full(n_clusters, 3.0))
    cluster = np.r_[np.arange(n_clusters), rng.choice(n_clusters, spec.n_items - n_clusters, p=share)]
    cluster = rng.permutation(cluster)
    share = np.bincount(cluster, minlength=n_clusters) / spec.n_items
    popularity = rng.lognormal(0.0, 1.0, spec.n_items)
    n_fav = min(3, n_clusters)
    gumbel = np.log(share)[None, :] - np.log(-np.log(rng.random((spec.n_users, n_clusters))))
    favs = np.argsort(-gumbel, axis=1)[:, :n_fav]
    if n_fav < 3:
        favs = np.pad(favs, ((0, 0), (0, 3 - n_fav)), mode="edge")
    n_liked = rng.choice([1, 2, 3], spec.n_users, p=[0.5, 0.3, 0.2])
    weights = rng.dirichlet(np.ones(3), spec.n_users) * (np.arange(3)[None, :] < n_liked[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    truth = SyntheticTruth(cluster, favs, weights, popularity)

    deg = _degrees(spec, cap, rng)
    users, items = _sample_pairs(deg, truth, spec.n_items, rng)
    _cover_items(users, items, cluster, rng)
    labels = mmrec_split(users, rng)
    frame = pd.DataFrame({"user": users, "item": items, "label": labels})

    centres = rng.standard_normal((n_clusters, spec.latent_dim))
    latent = centres[cluster] + spec.item_spread * rng.standard_normal((spec.n_items, spec.latent_dim))
    latent = latent.astype(np.float32)
    features: dict[str, np.ndarray] = {}
    for m, d in spec.dims.items():
        w = rng.standard_normal((spec.latent_dim, d), dtype=np.float32) / np.float32(np.sqrt(spec.latent_dim))
        feats = rng.standard_normal((spec.n_items, d), dtype=np.float32)
        feats *= np.float32(_FEATURE_NOISE.get(m, 1.0) * np.sqrt(min(d, 64) / 64))  # narrow features: less noise
        feats += latent @ w
        features[m] = feats
    return frame_to_recdata(name, frame, features, spec.n_users, spec.n_items), truth


def make_synthetic(
    n_users: int,
    n_items: int,
    n_interactions: int,
    dims: dict[str, int] | None = None,
    *,
    seed: int = 0,
    name: str = "synthetic",
) -> RecData:
    """Generate a synthetic dataset of exactly the requested size (see the module docstring)."""
    spec = SyntheticSpec(
        n_users, n_items, n_interactions, dict(dims) if dims is not None else {"text": 64, "image": 128}
    )
    return generate_synthetic(spec, seed, name)[0]
