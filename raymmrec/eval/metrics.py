"""Deterministic top-k and per-user top-K ranking metrics (MMRec full-ranking formulas: Zhou, arXiv 2302.03497, 2023; enoche/MMRec src/utils/metrics.py).

Tie rule used everywhere: equal scores rank the **lower item id first**. ``torch.topk`` alone leaves the
order of equal values unspecified, so :func:`topk_ordered` re-sorts the selected k by (score desc, id asc)
and, only for rows whose k-th and (k+1)-th largest values are equal, recomputes the selection exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Metric families, in the order used by :func:`metric_names` and :func:`ranking_metrics`.
#: ``f1`` (NBPO's F1@K: Yu and Qin, SIGIR 2020) came last, so earlier columns kept their positions.
METRICS = ("recall", "ndcg", "precision", "map", "hit", "f1")

# rows × columns handled at once by the exact tie fallback (bounds its int32 cumsum buffer)
_TIE_CHUNK_ELEMS = 1 << 22


def metric_names(ks: Sequence[int]) -> list[str]:
    """Metric keys, metric-major: ``["recall@10", "recall@20", ..., "f1@50"]``."""
    return [f"{m}@{k}" for m in METRICS for k in ks]


def _exact_topk_rows(sub: torch.Tensor, kth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (ties -> lower id) for rows whose boundary value ``kth`` [R] is tied. sub: [R × N]."""
    orig = sub
    nan = torch.isnan(sub)
    if bool(nan.any()):  # topk ranks NaN highest
        sub = sub.masked_fill(nan, float("inf"))
    gt = sub > kth[:, None]
    eq = sub == kth[:, None]
    need = k - gt.sum(dim=1, dtype=torch.int32)
    # keep every value above the boundary plus the first `need` boundary values in id order
    sel = gt | (eq & (eq.cumsum(dim=1, dtype=torch.int32) <= need[:, None]))
    cols = sel.nonzero()[:, 1].view(-1, k)  # row-major, so ids ascending within a row
    vals = sub.gather(1, cols)
    _, perm = torch.sort(vals, dim=1, descending=True, stable=True)
    cols = cols.gather(1, perm)
    return orig.gather(1, cols), cols


def topk_ordered(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row ordered by (score desc, item id asc); deterministic under ties.

    Args:
        scores: [B × N] scores (finite or ±inf; NaN is ranked highest, like ``torch.topk``,
            but the choice among several NaNs is not specified).
        k: number of columns to keep; clamped to N.

    Returns:
        (values [B × k], indices [B × k] int64), both on ``scores.device``.
    """
    n = scores.shape[1]
    k = min(int(k), n)
    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    tie = vals[:, k - 1] == vals[:, k] if kk > k else None
    vals, idx = vals[:, :k], idx[:, :k]
    # rows with equal values among the selected: sort by id, then stable sort by value desc
    # -> (value desc, id asc); the other rows are already in order (topk sorts by value)
    dup = ((vals[:, 1:] == vals[:, :-1]) | (vals[:, 1:].isnan() & vals[:, :-1].isnan())).any(dim=1)
    if bool(dup.any()):
        rows = dup.nonzero().squeeze(1)
        r_idx, perm = torch.sort(idx[rows], dim=1)
        r_vals, perm = torch.sort(vals[rows].gather(1, perm), dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = r_vals, r_idx.gather(1, perm)
    if tie is not None and bool(tie.any()):
        rows = tie.nonzero().squeeze(1)
        chunk = max(1, _TIE_CHUNK_ELEMS // max(n, 1))
        for s in range(0, rows.numel(), chunk):
            r = rows[s:s + chunk]
            v, i = _exact_topk_rows(scores[r], vals[r, k - 1], k)
            vals[r] = v.to(vals.dtype)
            idx[r] = i
    return vals, idx


def ranking_metrics(hits: torch.Tensor, n_truth: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Per-user Recall/NDCG/Precision/MAP/Hit/F1 at every K from one top-max(K) hit matrix.

    Args:
        hits: [B × Kmax] bool, ``hits[b, r]`` = the item at rank r+1 is in user b's ground truth.
            Kmax >= max(ks); missing columns (fewer items than K) must be padded with False.
        n_truth: [B] number of ground-truth items per user (|GT| >= 1).
        ks: cutoffs K.

    Returns:
        float64 [B × (6·len(ks))], columns in :func:`metric_names` order, with
        recall = hits@K/|GT|, ndcg = DCG@K / IDCG(min(|GT|, K)) (binary gain, 1/log2(r+1)),
        precision = hits@K/K, map = (1/min(|GT|,K)) Σ_{r≤K} P@r·rel_r, hit = 1[hits@K > 0],
        f1 = 2·P·R/(P + R) of this user's precision and recall at K (0 when both are 0), computed
        as the equal ``2·hits@K/(K + |GT|)``. Like the others it is averaged over users (the mean of
        per-user F1s, not the F1 of the mean precision and recall).
    """
    dev = hits.device
    kmax = hits.shape[1]
    rel = hits.to(torch.float64)
    ranks = torch.arange(1, kmax + 1, dtype=torch.float64, device=dev)
    disc = 1.0 / torch.log2(ranks + 1.0)
    n_hit = rel.cumsum(dim=1)  # [B × Kmax] hits within the top r
    dcg = (rel * disc).cumsum(dim=1)
    ap = (n_hit / ranks * rel).cumsum(dim=1)  # Σ_{r'≤r} P@r'·rel_r'
    idcg = disc.cumsum(dim=0)  # [Kmax], IDCG for n relevant items at n-1
    n_gt = n_truth.to(device=dev, dtype=torch.int64)
    n_gt_f = n_gt.to(torch.float64)
    cols: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    for k in ks:
        c = k - 1
        h = n_hit[:, c]
        denom = torch.clamp(n_gt, max=k)
        cols["recall"].append(h / n_gt_f)
        cols["ndcg"].append(dcg[:, c] / idcg[denom - 1])
        cols["precision"].append(h / k)
        cols["map"].append(ap[:, c] / denom.to(torch.float64))
        cols["hit"].append((h > 0).to(torch.float64))
        cols["f1"].append(2.0 * h / (k + n_gt_f))  # = 2PR/(P+R): 2(h/K)(h/G)/((h/K)+(h/G)) for h > 0
    return torch.stack([t for m in METRICS for t in cols[m]], dim=1)
