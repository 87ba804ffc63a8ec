"""Sparse graphs used by the models: the normalised user–item bipartite graph and item–item kNN graphs.

All graphs are returned as float32 ``torch.sparse_csr_tensor`` so that ``adj @ X`` (or
``torch.sparse.mm(adj, X)``) is a CSR SpMM on whatever device the graph lives on.

Conventions (BM3: Zhou et al., WWW 2023; CM3: Zhou, Wang, Shen, arXiv 2508.01226, 2025; as in
the authors' code enoche/BM3 and enoche/CM3):

* Bipartite graph: node ``u`` is user ``u``, node ``n_users + i`` is item ``i``; no self-loops;
  Â = D^{-1/2} A D^{-1/2} with degree = number of non-zeros in the row + 1e-7 (MMRec).
* Item–item graph: cosine similarity of the raw features, top-k per row (the item itself is always
  one of the k), binary weights, normalised with row degrees, so every stored weight is 1/k.
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from raymmrec.eval.metrics import topk_ordered

_DEG_EPS = 1e-7


def _as_int64_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _csr(crow: np.ndarray | torch.Tensor, col: np.ndarray | torch.Tensor, val: np.ndarray | torch.Tensor,
         shape: tuple[int, int], device: torch.device | str | None) -> torch.Tensor:
    crow_t = torch.as_tensor(crow, dtype=torch.int64, device=device)
    col_t = torch.as_tensor(col, dtype=torch.int64, device=device)
    val_t = torch.as_tensor(val, dtype=torch.float32, device=device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow_t, col_t, val_t, size=shape, check_invariants=False)


def normalized_adjacency(
    n_users: int,
    n_items: int,
    users: np.ndarray | torch.Tensor,
    items: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Symmetrically normalised bipartite adjacency Â = D^{-1/2} A D^{-1/2}.

    Args:
        n_users, n_items: graph has N = n_users + n_items nodes (user u -> node u, item i -> node n_users + i).
        users, items: int arrays [E] of training (user, item) pairs; duplicate pairs count once.
        device: where to put the result; default: the device of ``users`` if it is a tensor, else CPU.

    Returns:
        float32 sparse CSR tensor [N × N], symmetric, columns sorted within each row.
        Entry (u, n_users+i) = 1 / sqrt((deg_u + 1e-7) (deg_i + 1e-7)).
    """
    if device is None and isinstance(users, torch.Tensor):
        device = users.device
    u = _as_int64_numpy(users)
    i = _as_int64_numpy(items)
    if u.shape != i.shape:
        raise ValueError(f"users {u.shape} and items {i.shape} must have the same length")
    if u.size and (u.min() < 0 or u.max() >= n_users or i.min() < 0 or i.max() >= n_items):
        raise ValueError(f"ids out of range: users must be in [0, {n_users}), items in [0, {n_items})")
    # unique (user, item) pairs, sorted by user then item
    key = np.unique(u * n_items + i)
    u, i = key // n_items, key % n_items
    deg_u = np.bincount(u, minlength=n_users).astype(np.float64) + _DEG_EPS
    deg_i = np.bincount(i, minlength=n_items).astype(np.float64) + _DEG_EPS
    w = (1.0 / np.sqrt(deg_u[u] * deg_i[i])).astype(np.float32)
    # item rows: the same edges sorted by (item, user); stable argsort keeps users ascending
    order = np.argsort(i, kind="stable")
    rows = np.concatenate([u, n_users + i[order]])
    cols = np.concatenate([n_users + i, u[order]])
    vals = np.concatenate([w, w[order]])
    n = n_users + n_items
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    return _csr(crow, cols, vals, (n, n), device)


#: ``map_blocks(fn, shared, spans)``: ``[fn(*shared, start, stop) for (start, stop) in spans]``, in order.
#: :func:`knn_graph` hands its row blocks to one; the default runs them here, and the Ray layer
#: (``raymmrec.ray.item_graph``) runs them as tasks. Any runner must call ``fn`` on exactly these spans:
#: a block's similarities are then computed by the same matrix product, so the graph is the same.
BlockMap = Callable[[Callable[..., torch.Tensor], tuple, list[tuple[int, int]]], Sequence[torch.Tensor]]


def local_blocks(fn: Callable[..., torch.Tensor], shared: tuple, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The default :data:`BlockMap`: every block in this process, one after another."""
    return [fn(*shared, start, stop) for start, stop in spans]


def knn_block(x: torch.Tensor, inv: torch.Tensor, banned: torch.Tensor | None, k: int,
              start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of :func:`knn_graph`: ``[stop - start, k]`` int64 neighbour ids, ascending in each row.

    ``x``: the features as :func:`knn_graph` computes with; ``inv``: 1 / row norm (0 for a zero row);
    ``banned``: item ids no row may pick (or None). Peak extra memory ≈ (stop - start) × I × 4 bytes.
    """
    with torch.no_grad():
        sim = x[start:stop] @ x.T  # [b × I]
        sim.mul_(inv[start:stop, None]).mul_(inv[None, :])
        rows = torch.arange(stop - start, device=x.device)
        if banned is not None:
            sim[:, banned] = float("-inf")
        sim[rows, rows + start] = float("inf")  # the item itself always counts
        _, idx = topk_ordered(sim, k)
        del sim
        # CSR wants column indices sorted within a row
        return torch.sort(idx, dim=1).values


def knn_graph(features: torch.Tensor | np.ndarray, k: int = 10, block_size: int = 1024,
              exclude: np.ndarray | torch.Tensor | None = None,
              map_blocks: BlockMap | None = None) -> torch.Tensor:
    """Normalised top-k cosine-similarity item–item graph, built in row blocks.

    Row i keeps the k items with the largest cosine similarity to item i, always including i itself;
    ties rank the lower item id first. Weights are binary, normalised D^{-1/2} A D^{-1/2} with row
    degrees (all equal to k), so every stored weight is 1/k and every row sums to 1.
    Zero-norm rows have similarity 0 to everything (no NaN), so they keep themselves plus the
    k-1 lowest-id other items.

    Peak extra memory ≈ block_size × I × 4 bytes (plus the I-vector of norms and the I × k result);
    I × I is never built.

    Args:
        features: [I × d] raw item features (any float dtype; computed in float32 unless float64).
        k: neighbours per row (clamped to I).
        block_size: rows of the similarity matrix computed at once.
        exclude: items no row may pick as a neighbour (an item-wise forget request's); each still
            keeps itself.
        map_blocks: runs :func:`knn_block` over the row blocks (:data:`BlockMap`); default: here, in turn.

    Returns:
        float32 sparse CSR tensor [I × I] on the device of ``features``.
    """
    x = torch.as_tensor(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-d [I × d], got shape {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    n = x.shape[0]
    k = min(int(k), n)
    if k < 1 or block_size < 1:
        raise ValueError(f"k ({k}) and block_size ({block_size}) must be >= 1")
    norms = torch.linalg.vector_norm(x, dim=1)
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    banned = None
    if exclude is not None and len(exclude):
        banned = torch.as_tensor(np.asarray(exclude), dtype=torch.int64, device=x.device)
        k = max(1, min(k, n - int(banned.unique().numel())))
    spans = [(start, min(start + block_size, n)) for start in range(0, n, block_size)]
    blocks = (map_blocks or local_blocks)(knn_block, (x, inv, banned, k), spans)
    if len(blocks) != len(spans):
        raise ValueError(f"map_blocks returned {len(blocks)} blocks for {len(spans)} spans")
    cols = torch.cat([torch.as_tensor(b, dtype=torch.int64, device=x.device) for b in blocks]).reshape(-1)
    if cols.numel() != n * k:
        raise ValueError(f"map_blocks returned {cols.numel()} neighbour ids, expected {n} items x {k}")
    crow = torch.arange(0, n * k + 1, k, dtype=torch.int64, device=x.device)
    # row degrees are all k  ->  weight 1/sqrt(k·k) = 1/k
    vals = torch.full((n * k,), 1.0 / k, dtype=torch.float32, device=x.device)
    return _csr(crow, cols, vals, (n, n), x.device)


def modality_weights(names: list[str] | tuple[str, ...], non_text_weight: float = 0.1) -> dict[str, float]:
    """Default mixing weights of per-modality item-item graphs for any set of modalities.

    The authors of CM3 and LIRDRec mix an image graph and a text graph as ``0.1 / 0.9``
    (``mm_image_weight``). Generalised: when the modalities include ``text`` and at least one other,
    the non-text modalities share ``non_text_weight`` equally and ``text`` gets the rest (lfm2k's
    text + audio: audio 0.1, text 0.9); otherwise every modality gets the same weight.
    """
    names = sorted(names)
    if not names:
        raise ValueError("an item-item graph needs at least one modality; the dataset has none")
    if not 0.0 <= non_text_weight <= 1.0:
        raise ValueError(f"the non-text modalities' share must be in [0, 1], got {non_text_weight}")
    others = [m for m in names if m != "text"]
    if "text" not in names or not others:
        return {m: 1.0 / len(names) for m in names}
    return {"text": 1.0 - non_text_weight, **{m: non_text_weight / len(others) for m in others}}


def mixed_knn_graph(
    features: Mapping[str, torch.Tensor | np.ndarray],
    weights: Mapping[str, float] | None = None,
    k: int = 10,
    block_size: int = 1024,
    exclude: np.ndarray | torch.Tensor | None = None,
    map_blocks: BlockMap | None = None,
) -> torch.Tensor:
    """Weighted sum of per-modality kNN graphs: Â_mm = Σ_m w_m · knn_graph(features[m], k).

    Args:
        features: modality name -> [I × d_m] features (same I for all).
        weights: modality name -> weight, same keys as ``features``, summing to 1
            (e.g. ``{"image": 0.1, "text": 0.9}``). Default: equal weights.
        k, block_size, exclude, map_blocks: passed to :func:`knn_graph`.

    Returns:
        float32 sparse CSR [I × I]; each row sums to 1.
    """
    if not features:
        raise ValueError("mixed_knn_graph needs at least one modality")
    names = list(features)
    if weights is None:
        weights = {m: 1.0 / len(names) for m in names}
    if set(weights) != set(names):
        raise ValueError(f"weights cover modalities {sorted(weights)} but features have {sorted(names)}")
    total = float(sum(weights.values()))
    if abs(total - 1.0) > 1e-6:
        parts = ", ".join(f"{m}={weights[m]}" for m in names)
        raise ValueError(f"modality weights must sum to 1, got {total} ({parts})")
    n_items = {m: int(torch.as_tensor(features[m]).shape[0]) for m in names}
    if len(set(n_items.values())) != 1:
        raise ValueError(f"modalities have different item counts: {n_items}")
    acc = None
    for m in names:
        g = knn_graph(features[m], k=k, block_size=block_size, exclude=exclude,
                      map_blocks=map_blocks).to_sparse_coo()
        g = g * float(weights[m])
        acc = g if acc is None else acc + g
    return acc.coalesce().to_sparse_csr()
