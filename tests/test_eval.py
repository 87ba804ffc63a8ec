"""Evaluator vs a plain per-user Python reference (MMRec full-ranking protocol, ties -> lower item id)."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raymmrec.data.schema import Interactions
from raymmrec.eval import (Evaluator, items_by_user, joint_metric_rows, joint_metric_sums, mask_unrankable,
                           metric_names, topk_ordered)


def reference(n_items, train, truth, scores, ks):
    """Loop per user; sort by (-score, item id); textbook formulas; average over users with GT."""
    train_of, truth_of = {}, {}
    for u, i in zip(train.users.tolist(), train.items.tolist()):
        train_of.setdefault(u, set()).add(i)
    for u, i in zip(truth.users.tolist(), truth.items.tolist()):
        truth_of.setdefault(u, set()).add(i)
    totals = {name: 0.0 for name in metric_names(ks)}
    for u in sorted(truth_of):
        s = [float(scores[u][i]) for i in range(n_items)]
        for i in train_of.get(u, ()):
            s[i] = -math.inf
        ranked = sorted(range(n_items), key=lambda i: (-s[i], i))
        gt = truth_of[u]
        for k in ks:
            rel = [1 if i in gt else 0 for i in ranked[:k]]
            hits = sum(rel)
            dcg = sum(r / math.log2(pos + 2) for pos, r in enumerate(rel))
            idcg = sum(1 / math.log2(pos + 2) for pos in range(min(len(gt), k)))
            ap = sum(sum(rel[: pos + 1]) / (pos + 1) * r for pos, r in enumerate(rel))
            totals[f"recall@{k}"] += hits / len(gt)
            totals[f"ndcg@{k}"] += dcg / idcg
            totals[f"precision@{k}"] += hits / k
            totals[f"map@{k}"] += ap / min(len(gt), k)
            totals[f"hit@{k}"] += 1.0 if hits > 0 else 0.0
            p, r = hits / k, hits / len(gt)
            totals[f"f1@{k}"] += 2 * p * r / (p + r) if p + r > 0 else 0.0
    n = len(truth_of)
    return {name: v / n for name, v in totals.items()}


def random_case(seed, n_users=17, n_items=23, tie_range=None):
    rng = np.random.default_rng(seed)
    tr_u, tr_i, gt_u, gt_i = [], [], [], []
    for u in range(n_users):
        perm = rng.permutation(n_items)
        n_tr = int(rng.integers(0, n_items // 2))
        n_gt = int(rng.integers(0, n_items // 2)) if u % 4 else 0  # some users without ground truth
        tr_u += [u] * n_tr
        tr_i += perm[:n_tr].tolist()
        gt_u += [u] * n_gt
        gt_i += perm[n_tr:n_tr + n_gt].tolist()
    if tie_range is None:
        scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    else:
        scores = rng.integers(0, tie_range, (n_users, n_items)).astype(np.float32)
    train = Interactions(np.array(tr_u, dtype=np.int64), np.array(tr_i, dtype=np.int64))
    truth = Interactions(np.array(gt_u, dtype=np.int64), np.array(gt_i, dtype=np.int64))
    return train, truth, scores


def score_fn_of(scores):
    table = torch.from_numpy(scores)
    return lambda users: table[users.cpu()]  # advanced indexing returns a fresh tensor


def assert_metrics_close(got, want, tol=1e-9):
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=tol), key


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tie_range", [None, 2, 3])
def test_random_cases_match_reference(seed, tie_range):
    ks = [(1, 3, 5), (2, 10), (5, 30)][seed % 3]  # K=30 > n_items: padded with misses
    n_items = 12 + seed
    train, truth, scores = random_case(seed, n_items=n_items, tie_range=tie_range)
    ev = Evaluator(n_items, train, truth, ks=ks)
    assert ev.names == metric_names(ks)
    expected_users = sorted(set(truth.users.tolist()))
    assert ev.users.tolist() == expected_users and ev.users.dtype == torch.int64
    assert_metrics_close(ev.evaluate(score_fn_of(scores)), reference(n_items, train, truth, scores, ks))


def test_hand_computed():
    # user 0: train {0}, GT {2, 4}; scores tie between items 2 and 3 -> 2 first.
    #   ranking: 2, 3, 5, 1, 4, 0(masked)   rel = 1 0 0 0 1 0
    # user 1: train {2, 3}, GT {5}; all scores equal -> ranking 0, 1, 4, 5, 2, 3; GT at rank 4
    # user 2: training items only -> skipped
    train = Interactions(np.array([0, 1, 1, 2]), np.array([0, 2, 3, 1]))
    truth = Interactions(np.array([0, 0, 1]), np.array([4, 2, 5]))
    scores = np.array([[9, 2, 5, 5, 1, 3], [0] * 6, [1, 2, 3, 4, 5, 6]], dtype=np.float32)
    ev = Evaluator(6, train, truth, ks=(1, 2, 5))
    got = ev.evaluate(score_fn_of(scores))
    want = {
        "recall@1": 0.25, "recall@2": 0.25, "recall@5": 1.0,
        # u0: @2 1/(1+1/log2 3) = 0.6131472, @5 (1+1/log2 6)/(1+1/log2 3) = 0.8503449; u1: @5 1/log2 5 = 0.4306766
        "ndcg@1": 0.5, "ndcg@2": 0.3065735964, "ndcg@5": 0.6405107318,
        "precision@1": 0.5, "precision@2": 0.25, "precision@5": 0.3,
        # u0: @2 (1/2)(1) = 0.5, @5 (1/2)(1 + 2/5) = 0.7; u1: @5 (1/1)(1/4) = 0.25
        "map@1": 0.5, "map@2": 0.25, "map@5": 0.475,
        "hit@1": 0.5, "hit@2": 0.5, "hit@5": 1.0,
        # F1 = 2PR/(P+R) per user, then averaged: u0 @1 P=1 R=1/2 -> 2/3, @2 P=1/2 R=1/2 -> 1/2,
        # @5 P=2/5 R=1 -> 4/7; u1 @1, @2 no hit -> 0, @5 P=1/5 R=1 -> 1/3
        "f1@1": 1 / 3, "f1@2": 0.25, "f1@5": (4 / 7 + 1 / 3) / 2,
    }
    assert_metrics_close(got, want, tol=1e-9)
    assert ev.users.tolist() == [0, 1]


def test_topk_ordered_ties():
    s = torch.tensor([[1.0, 3, 3, 3, 0, 3], [5, 4, 3, 2, 1, 0], [0, 0, 0, 0, 0, 0],
                      [-math.inf, 2, -math.inf, 2, 2, -math.inf]])
    v, i = topk_ordered(s, 3)
    assert i.tolist() == [[1, 2, 3], [0, 1, 2], [0, 1, 2], [1, 3, 4]]
    assert v.tolist() == [[3, 3, 3], [5, 4, 3], [0, 0, 0], [2, 2, 2]]
    v, i = topk_ordered(s, 5)
    assert i.tolist() == [[1, 2, 3, 5, 0], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 3, 4, 0, 2]]
    # large random tie-heavy input vs a stable sort
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (300, 200), generator=g).float()
    _, i = topk_ordered(s, 50)
    ref = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :50]
    assert torch.equal(i, ref)


@pytest.mark.parametrize("tie_range", [None, 3])
def test_shards_and_batches(tie_range):
    train, truth, scores = random_case(99, n_users=40, n_items=30, tie_range=tie_range)
    fn = score_fn_of(scores)
    ev = Evaluator(30, train, truth, ks=(1, 5, 10))
    full = ev.evaluate(fn)
    for world in (2, 3):
        shards = [ev.shard_users(r, world) for r in range(world)]
        assert sorted(torch.cat(shards).tolist()) == ev.users.tolist()
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        sums = sum(ev.metric_sums(fn, s) for s in shards)
        assert_metrics_close(ev.finalize(sums, sum(len(s) for s in shards)), full, tol=1e-12)
    for max_elems in (1, 30, 95, 31 * 7):  # batches of 1, 1, 3, 7 users
        small = Evaluator(30, train, truth, ks=(1, 5, 10), max_batch_elems=max_elems)
        assert small.batch_users < 8
        assert small.evaluate(fn) == full  # per-user results summed once: bitwise identical


@pytest.mark.parametrize("tie_range", [None, 3])
def test_joint_splits_rank_each_user_once_and_match_separate_runs(tie_range):
    train, valid, scores = random_case(5, n_users=40, n_items=30, tie_range=tie_range)
    _, test, _ = random_case(6, n_users=40, n_items=30)  # other ground truth, other users, same scores
    cold = Interactions(test.users[test.items >= 15], test.items[test.items >= 15])
    evs = [Evaluator(30, train, valid, ks=(1, 5, 10), max_batch_elems=30 * 7),
           Evaluator(30, train, test, ks=(3, 20), max_batch_elems=30 * 7),
           Evaluator(30, train, cold, ks=(5,), candidates=np.arange(15, 30))]  # ranks otherwise: own pass
    test_only = np.isin(np.arange(40), test.users) & ~np.isin(np.arange(40), valid.users)
    assert test_only.any()  # the union of users is more than either split
    seen = []
    fn = score_fn_of(scores)
    counting = lambda users: seen.append(users.numel()) or fn(users)  # noqa: E731
    got = joint_metric_sums(evs[:2], counting)
    union = torch.unique(torch.cat([evs[0].users, evs[1].users]))
    assert sum(seen) == union.numel()  # each user scored once for both splits
    for ev, sums in zip(evs[:2], got):
        assert_metrics_close(ev.finalize(sums, ev.users.numel()), ev.evaluate(fn), tol=1e-12)
    for world in (1, 3):  # shards, with the cold-start-like evaluator in its own group
        total = [0, 0, 0]
        for r in range(world):
            part = joint_metric_sums(evs, fn, [ev.shard_users(r, world) for ev in evs])
            total = [t + p for t, p in zip(total, part)]
        for ev, sums in zip(evs, total):
            assert_metrics_close(ev.finalize(sums, ev.users.numel()), ev.evaluate(fn), tol=1e-12)



def test_joint_rows_are_each_users_own_metrics_ranking_each_user_once():
    """joint_metric_rows (what joint_metric_sums adds up) gives each split's per-user rows, scoring each user of
    the union once; evaluators that rank otherwise are refused."""
    train, valid, scores = random_case(5, n_users=40, n_items=30)
    _, test, _ = random_case(6, n_users=40, n_items=30)
    evs = [Evaluator(30, train, valid, ks=(1, 5, 10), max_batch_elems=30 * 7), Evaluator(30, train, test, ks=(3, 20))]
    seen = []
    fn = score_fn_of(scores)
    rows = [torch.full((ev.n_users, len(ev.names)), float("nan"), dtype=torch.float64) for ev in evs]
    for j, ub, r in joint_metric_rows(evs, lambda users: seen.append(users.numel()) or fn(users)):
        rows[j][ub] = r
    assert sum(seen) == torch.unique(torch.cat([ev.users for ev in evs])).numel()
    for ev, r in zip(evs, rows):
        assert torch.equal(r[ev.users], ev.per_user(fn))
    cold = Evaluator(30, train, test, ks=(5,), candidates=np.arange(30))  # a candidate list: not ranked alike
    with pytest.raises(ValueError, match="rank alike"):
        joint_metric_rows([evs[0], cold], fn)

def test_users_without_truth_rejected():
    train, truth, scores = random_case(3)
    ev = Evaluator(23, train, truth)
    bad = torch.tensor([0])  # u % 4 == 0 has no ground truth
    with pytest.raises(ValueError, match="ground truth"):
        ev.metric_sums(score_fn_of(scores), bad)


def test_items_by_user_and_mask_unrankable():
    """The two public pieces evaluation and ``raymmrec recommend`` share: each user's items as CSR, and the
    in-place mask of what is never ranked (a user's own items, the excluded columns)."""
    inter = Interactions(np.array([2, 0, 2, 2]), np.array([3, 1, 0, 3]))  # (2, 3) twice: kept once
    indptr, indices = items_by_user(inter, 4, 5)
    assert indptr.tolist() == [0, 1, 1, 3, 3]
    assert indices.tolist() == [1, 0, 3]
    with pytest.raises(ValueError, match="out of range"):
        items_by_user(Interactions(np.array([0]), np.array([5])), 1, 5)

    users = torch.tensor([2, 0, 3])
    scores = torch.arange(15.0).reshape(3, 5)
    assert mask_unrankable(scores, users, (indptr, indices), torch.tensor([4])) is scores
    want = torch.arange(15.0).reshape(3, 5)
    want[0, [0, 3, 4]] = want[1, [1, 4]] = want[2, 4] = float("-inf")
    assert torch.equal(scores, want)
    # NaN or inf is allowed where the mask overwrites it, refused anywhere else
    scores = torch.zeros(1, 5)
    scores[0, 1], scores[0, 4] = float("nan"), float("inf")
    mask_unrankable(scores, torch.tensor([0]), (indptr, indices), torch.tensor([4]))
    assert torch.isinf(scores[0, [1, 4]]).all() and (scores[0, [0, 2, 3]] == 0).all()
    scores[0, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="user 0, item 2"):
        mask_unrankable(scores, torch.tensor([0]), (indptr, indices))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad):
    train = Interactions(np.array([0, 1]), np.array([0, 2]))
    truth = Interactions(np.array([0, 1, 1]), np.array([3, 4, 5]))
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    ev = Evaluator(6, train, truth, ks=(1, 2), max_batch_elems=12)
    want = ev.evaluate(score_fn_of(scores))
    masked = scores.copy()
    masked[0, 0] = masked[1, 2] = bad  # training items: masked to -inf anyway, so allowed
    assert ev.evaluate(score_fn_of(masked)) == want
    scores[1, 1] = bad
    with pytest.raises(FloatingPointError, match=r"NaN/inf for 1 of the 2 users .*\(first: user 1, item 1, score"):
        ev.evaluate(score_fn_of(scores))
    scores[0, 5] = bad
    with pytest.raises(FloatingPointError, match=r"NaN/inf for 2 of the 2 users .*first: user 0, item 5"):
        ev.evaluate(score_fn_of(scores))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train, truth, scores = random_case(7, n_users=50, n_items=40, tie_range=4)
        ev = Evaluator(40, train, truth, ks=(5, 20))
        users = ev.shard_users(rank, world)
        sums = ev.metric_sums(score_fn_of(scores), users)
        count = torch.tensor(len(users), dtype=torch.int64)
        dist.all_reduce(sums)
        dist.all_reduce(count)
        torch.save({"sums": sums, "count": count}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gloo_all_reduce_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    train, truth, scores = random_case(7, n_users=50, n_items=40, tie_range=4)
    ev = Evaluator(40, train, truth, ks=(5, 20))
    full = ev.evaluate(score_fn_of(scores))
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        assert int(res["count"]) == len(ev.users)
        assert_metrics_close(ev.finalize(res["sums"], res["count"]), full, tol=1e-12)


def test_topk_orders_equal_and_nan_values_by_item_id():
    nan, inf = float("nan"), float("inf")
    s = torch.tensor([[nan, 1.0, nan, 0.5, 1.0], [0.1, -inf, 0.3, -inf, -inf], [5.0, 4.0, 3.0, 2.0, 1.0]])
    vals, idx = topk_ordered(s, 4)
    assert idx.tolist() == [[0, 2, 1, 4], [2, 0, 1, 3], [0, 1, 2, 3]]


def test_topk_orders_many_nans_by_item_id():
    torch.manual_seed(0)
    s = torch.randn(50, 300)
    for r in range(50):
        s[r, torch.randperm(300)[:20]] = float("nan")
    _, idx = topk_ordered(s, 20)  # NaN ranks highest, like torch.topk; among NaNs, lower ids first
    want = torch.stack([torch.nonzero(row.isnan()).squeeze(1) for row in s])
    assert torch.equal(idx, want)
