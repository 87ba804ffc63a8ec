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


#: Keys of a sized spec (``synthetic:users=U,items=I,interactions=N[,dims=m:d,...]``); the first three are required.
SIZE_KEYS = ("users", "items", "interactions", "dims")
_DEFAULT_DIMS = {"text": 64, "image": 128}


def interaction_range(n_users: int, n_items: int) -> tuple[int, int]:
    """The interaction counts a synthetic dataset of this many users and items can have: ``[lo, hi]``."""
    cap = max(_MIN_PER_USER, n_items // 2)
    return max(_MIN_PER_USER * n_users, n_items), n_users * cap


def _spec_int(source: str, key: str, value: str, least: int) -> int:
    text = value.strip().replace("_", "")
    if not text.isdigit():
        raise DataError(f"{source}: {key}={value!r} must be an integer >= {least}")
    n = int(text)
    if n < least:
        raise DataError(f"{source}: {key}={value} must be an integer >= {least}")
    return n


def _spec_dims(source: str, entries: list[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for entry in entries:
        name, sep, width = entry.partition(":")
        name = name.strip()
        if not sep or not name or not name.isidentifier():
            raise DataError(f"{source}: dims entry {entry!r} must be modality:width, e.g. dims=text:384,image:512")
        if name in dims:
            raise DataError(f"{source}: dims names modality {name!r} twice")
        if not width.strip().replace("_", "").isdigit() or int(width.strip().replace("_", "")) < 1:
            raise DataError(f"{source}: dims entry {entry!r} needs a width that is an integer >= 1")
        dims[name] = int(width.strip().replace("_", ""))
    if not dims:
        raise DataError(f"{source}: dims= is empty; expected modality:width entries, e.g. dims=text:384,image:512")
    return dims


def parse_synthetic(source: str) -> SyntheticSpec:
    """The :class:`SyntheticSpec` of ``synthetic``, ``synthetic:<preset>`` or a sized spec.

    Sized: ``synthetic:users=1000000,items=100000,interactions=10000000`` with an optional trailing
    ``dims=text:384,image:512`` (feature width per modality; default ``text:64,image:128``). Integers may
    use ``_`` separators. Anything else is a one-line :class:`DataError` naming the key and what was expected.
    """
    body = source.split(":", 1)[1] if ":" in source else "small"
    if "=" not in body:
        if body not in PRESETS:
            raise DataError(
                f"unknown synthetic preset {body!r} in {source!r}; expected one of {', '.join(PRESETS)} or "
                "users=U,items=I,interactions=N[,dims=text:384,image:512]"
            )
        return PRESETS[body]
    values: dict[str, str] = {}
    dims: list[str] | None = None
    for token in body.split(","):
        key, sep, value = token.partition("=")
        key = key.strip()
        if not sep:
            if dims is None:
                raise DataError(f"{source}: {token!r} is not key=value; expected users=, items=, interactions=, dims=")
            dims.append(token)  # a further modality of dims=...
            continue
        if key not in SIZE_KEYS:
            raise DataError(f"{source}: unknown key {key!r}; expected {', '.join(SIZE_KEYS)}")
        if key in values or (key == "dims" and dims is not None):
            raise DataError(f"{source}: {key}= is given twice")
        if key == "dims":
            dims = [value]
        elif dims is not None:
            raise DataError(f"{source}: dims= must come last (its entries are comma-separated too)")
        else:
            values[key] = value
    missing = [k for k in SIZE_KEYS[:3] if k not in values]
    if missing:
        raise DataError(
            f"{source}: missing {', '.join(k + '=' for k in missing)}; expected users=U,items=I,interactions=N"
        )
    n_users = _spec_int(source, "users", values["users"], 1)
    n_items = _spec_int(source, "items", values["items"], _MIN_PER_USER)
    n_inter = _spec_int(source, "interactions", values["interactions"], 1)
    lo, hi = interaction_range(n_users, n_items)
    if not lo <= n_inter <= hi:
        raise DataError(
            f"{source}: interactions={n_inter} must lie in [{lo}, {hi}] for users={n_users}, items={n_items} "
            f"(>= {_MIN_PER_USER} per user, every item once, <= {hi // n_users} per user)"
        )
    dims_out = _spec_dims(source, dims) if dims is not None else dict(_DEFAULT_DIMS)
    return SyntheticSpec(n_users, n_items, n_inter, dims_out)


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
    lo, hi = interaction_range(spec.n_users, spec.n_items)
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
        # four uniform draws per candidate, each drawn whole and used up before the next (peak memory:
        # a few arrays of the candidates, not all the intermediate ones at once)
        r = rng.random(users.size)
        slot = np.zeros(users.size, dtype=np.int8)
        for j in range(cum_w.shape[1]):  # (r > cum_w[users]).sum(1) without the [N x 3] temporaries
            slot += r > cum_w[:, j][users]
        np.minimum(slot, 2, out=slot)
        r = truth.user_clusters[users, slot].astype(np.float64)  # the cluster drawn from the user's favourites
        del slot
        r += rng.random(users.size)
        local = by_cluster[np.searchsorted(cum_in, r, side="right").clip(max=n_items - 1)]
        mix = _GLOBAL_MIX if round_ < 10 else 0.5
        r = rng.random(users.size)
        glob = np.searchsorted(global_cdf, r, side="right")
        rng.random(users.size, out=r)
        local = np.where(r < mix, glob, local)
        del r, glob
        np.minimum(local, n_items - 1, out=local)
        users *= n_items
        users += local  # the candidate keys user * n_items + item
        del local
        keys = _keep_first(np.concatenate([keys, users]), deg, n_items)
        del users
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
    first.sort()
    keys = keys[first]
    del first
    users = keys // n_items
    order = np.argsort(users, kind="stable")
    su = users[order]
    del users
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    pos = np.arange(su.size)
    pos -= np.repeat(starts, np.diff(np.r_[starts, su.size]))
    keep = order[pos < deg[su]]
    del order, su, pos
    keep.sort()
    return keys[keep]


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
    # the donors grouped by their item's cluster in one stable sort (random order kept within a cluster);
    # each cluster is visited once, so none of its donors is used yet when it is
    donor_cluster = cluster[items[donors]]
    by = np.argsort(donor_cluster, kind="stable")
    grouped, donor_cluster = donors[by], donor_cluster[by]
    del by
    for k in np.unique(cluster[missing]):
        want = missing[cluster[missing] == k]
        lo, hi = np.searchsorted(donor_cluster, [k, k + 1])
        pool = grouped[lo:hi][: want.size]
        items[pool] = want[: pool.size]
        used[pool] = True
        left.append(want[pool.size :])
    rest = np.concatenate(left)
    pool = donors[~used[donors]][: rest.size]
    items[pool] = rest  # sizes were checked: n_interactions >= n_items, so enough spare rows exist


def _favourite_clusters(log_share: np.ndarray, n_users: int, n_fav: int, rng: np.random.Generator,
                        block: int = 1 << 14) -> np.ndarray:
    """Each user's ``n_fav`` clusters, drawn without replacement in proportion to ``share`` (Gumbel top-k).

    Drawn in blocks of users (the same stream as one ``[n_users x K]`` draw), so memory stays
    ``block x K`` rather than ``n_users x K``; the top ``n_fav`` come out in descending order.
    """
    k = log_share.size
    favs = np.empty((n_users, n_fav), dtype=np.int64)
    for s in range(0, n_users, block):
        g = log_share[None, :] - np.log(-np.log(rng.random((min(block, n_users - s), k))))
        g = -g
        top = np.argpartition(g, n_fav - 1, axis=1)[:, :n_fav] if n_fav < k else np.argsort(g, axis=1)
        favs[s : s + g.shape[0]] = np.take_along_axis(top, np.argsort(np.take_along_axis(g, top, 1), axis=1), 1)
    return favs


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
    favs = _favourite_clusters(np.log(share), spec.n_users, n_fav, rng)
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
    spec = SyntheticSpec(n_users, n_items, n_interactions, dict(dims) if dims is not None else dict(_DEFAULT_DIMS))
    return generate_synthetic(spec, seed, name)[0]
