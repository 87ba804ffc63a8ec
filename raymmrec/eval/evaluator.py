"""MMRec full-ranking evaluator (Zhou, arXiv 2302.03497, 2023;
enoche/MMRec src/utils/topk_evaluator.py), batched, vectorised, and shardable across processes.

For every user with at least one item in the evaluated split: score all items, set the user's
*training* items to -inf (only those; an evaluator given ``candidates`` also sets every
other item to -inf, see :mod:`raymmrec.eval.cold`), take one top-max(K) with the tie rule of
:func:`raymmrec.eval.metrics.topk_ordered` (equal scores -> lower item id first), and average the
per-user metrics over users.

Distributed use::

    ev = Evaluator(n_items, data.train, data.valid)
    mine = ev.shard_users(rank, world_size)
    sums = ev.metric_sums(score_fn, mine)             # float64 [M]
    count = torch.tensor(len(mine))
    dist.all_reduce(sums); dist.all_reduce(count)      # (move to the backend's device first)
    result = ev.finalize(sums, count)                  # == ev.evaluate(score_fn) up to float64 rounding
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from raymmrec.data.schema import Interactions
from raymmrec.eval.metrics import metric_names, ranking_metrics, topk_ordered

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
#: On CPU a score block stays below 32 MiB, the most glibc serves from its heap (raymmrec.allocator):
#: a larger block is a fresh mmap every time, and touching its pages anew cost a third of an evaluation
#: at 100k items (0.88 against 0.54 ms of CPU per user; benchmarks/bench_growth.py, docs/growth.md).
CPU_BLOCK_BYTES = (32 << 20) - (1 << 20)


def items_by_user(inter: Interactions, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's items as CSR: ``(indptr [n_users+1], indices [nnz])`` int64 on the CPU, duplicates dropped,
    items ascending per user; user ``u``'s items are ``indices[indptr[u]:indptr[u+1]]``.

    Of the training (or seen) interactions it is what :func:`mask_unrankable` takes; of an evaluated
    split, the ground truth. Raises ValueError for a negative id or an item id >= ``n_items``.
    """
    u = np.asarray(inter.users, dtype=np.int64)
    i = np.asarray(inter.items, dtype=np.int64)
    if u.size and (u.min() < 0 or i.min() < 0 or i.max() >= n_items):
        raise ValueError(f"interaction ids out of range (items must be in [0, {n_items}))")
    key = np.unique(u * n_items + i)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // n_items, minlength=n_users), out=indptr[1:])
    return torch.from_numpy(indptr), torch.from_numpy(key % n_items)


def _gather_rows(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """COO (row in 0..B-1, column) of the CSR rows ``users`` [B]."""
    start = indptr[users]
    cnt = indptr[users + 1] - start
    total = int(cnt.sum())
    row = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), cnt, output_size=total)
    offset = torch.arange(total, device=users.device) - torch.repeat_interleave(
        torch.cumsum(cnt, 0) - cnt, cnt, output_size=total)
    col = indices[torch.repeat_interleave(start, cnt, output_size=total) + offset]
    return row, col


def _check_finite(scores: torch.Tensor, r: torch.Tensor, c: torch.Tensor, users: torch.Tensor,
                  excluded: torch.Tensor | None = None) -> None:
    """Raise FloatingPointError if ``scores`` [B × I] has NaN/inf outside the masked entries.

    Masked: the training entries ``(r, c)`` and the ``excluded`` item columns.
    """
    bad = ~torch.isfinite(scores)
    bad[r, c] = False  # training items are set to -inf anyway, whatever the model gave them
    if excluded is not None:
        bad[:, excluded] = False
    bad_users = torch.nonzero(bad.any(dim=1)).squeeze(1)
    if bad_users.numel():
        first = int(bad_users[0])
        item = int(torch.nonzero(bad[first])[0, 0])
        raise FloatingPointError(
            f"model scores contain NaN/inf for {bad_users.numel()} of the {users.numel()} users in an evaluation "
            f"batch (first: user {int(users[first])}, item {item}, score {float(scores[first, item])}); expected "
            "finite scores for every item outside the user's training items (did training diverge?)"
        )


def mask_unrankable(scores: torch.Tensor, users: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor],
                    excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Set to -inf, in place, every score a ranking leaves out, and return ``scores``.

    ``scores`` [B × I] are the scores of ``users`` [B]; ``seen`` is :func:`items_by_user` of the items
    never ranked for a user (the training items), ``excluded`` the item ids never ranked for anyone
    (the items outside an evaluator's candidates, an item-wise forget request's items), or None. All
    on the device of ``scores``. Evaluation and ``raymmrec recommend`` mask with this one function, so
    both rank the same items. Raises FloatingPointError if any other score is NaN or ±inf.
    """
    r, c = _gather_rows(seen[0], seen[1], users)
    # one pass: a NaN or inf anywhere makes the sum non-finite; details (and the error) only then
    if not bool(torch.isfinite(scores.sum())):
        _check_finite(scores, r, c, users, excluded)
    scores[r, c] = float("-inf")
    if excluded is not None:
        scores[:, excluded] = float("-inf")
    return scores


class Evaluator:
    """Full-ranking top-K evaluator for one split.

    Args:
        n_items: number of items I (columns of the score matrix).
        train: training interactions; these items are masked (-inf) per user.
        truth: interactions of the evaluated split (validation or test); its users are evaluated.
        ks: cutoffs K; all come from one top-max(K).
        max_batch_elems: users are scored in chunks of B with B × I <= max_batch_elems (on CPU also
            B × I × 4 bytes <= ``CPU_BLOCK_BYTES``).
        device: device of ``.users`` and of the users passed to ``score_fn``; default CPU.
            Scores returned on another device are handled there (index structures are copied once).
        candidates: item ids that may be ranked (default: all); every other item is set to -inf
            like a training item. Cold-start evaluation ranks the held-out items only.

    Attributes:
        users: sorted int64 [U] users with >= 1 ground-truth item.
        names: metric keys, e.g. ``["recall@10", ..., "f1@50"]`` (order of :meth:`metric_sums`): Recall,
            NDCG, Precision, MAP, Hit and F1 (NBPO's) at every K; any of them can select the model
            (``eval.valid_metric``, e.g. ``f1@20``).
    """

    def __init__(
        self,
        n_items: int,
        train: Interactions,
        truth: Interactions,
        ks: Sequence[int] = (10, 20, 50),
        max_batch_elems: int = 2**25,
        device: torch.device | str | None = None,
        candidates: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of positive ints, got {ks!r}")
        self.n_items = int(n_items)
        self.kmax = max(self.ks)
        self.names = metric_names(self.ks)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        elems = int(max_batch_elems)
        if self.device.type == "cpu":  # a score block under glibc's mmap threshold is reused, not page-faulted anew
            elems = min(elems, CPU_BLOCK_BYTES // 4)
        self.batch_users = max(1, elems // max(self.n_items, 1))
        n_users = 1 + max(int(np.max(train.users, initial=-1)), int(np.max(truth.users, initial=-1)))
        self.n_users = n_users
        tr_ptr, tr_idx = items_by_user(train, n_users, self.n_items)
        gt_ptr, gt_idx = items_by_user(truth, n_users, self.n_items)
        n_gt = gt_ptr[1:] - gt_ptr[:-1]
        self._cpu = {"tr_ptr": tr_ptr, "tr_idx": tr_idx, "gt_ptr": gt_ptr, "gt_idx": gt_idx, "n_gt": n_gt}
        if candidates is not None:
            keep = np.zeros(self.n_items, dtype=bool)
            keep[np.asarray(candidates, dtype=np.int64)] = True
            if not keep[gt_idx.numpy()].all():
                raise ValueError("candidates must include every ground-truth item of the evaluated split")
            self._cpu["excluded"] = torch.from_numpy(np.flatnonzero(~keep))
        self._cache: dict[torch.device, dict[str, torch.Tensor]] = {}
        self.users = torch.nonzero(n_gt > 0).squeeze(1).to(self.device)

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        device = torch.device(device)
        if device not in self._cache:
            self._cache[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return self._cache[device]

    def to(self, device: torch.device | str) -> "Evaluator":
        """Move ``.users`` (and the users given to score_fn) to ``device``; returns self."""
        self.device = torch.device(device)
        self.users = self.users.to(self.device)
        return self

    def shard_users(self, rank: int, world_size: int) -> torch.Tensor:
        """Interleaved shard ``users[rank::world_size]``: disjoint, covering, sizes differ by <= 1."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        return self.users[rank::world_size]

    def sample_users(self, n: int, seed: int) -> "Evaluator":
        """Rank only a fixed random sample of ``n`` of ``.users`` from now on; returns self.

        Users are drawn uniformly without replacement by ``seed`` alone (the same on every rank, so
        :meth:`shard_users` still splits one sample), and kept sorted; ``n`` >= their number (or 0)
        keeps all. Whole users are sampled, never items, so one evaluation's averaged metric is an
        unbiased estimate of the metric over every user (``eval.valid_users``); the best of many such
        evaluations, as early stopping takes it, is biased upward.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0 (0: all users), got {n}")
        if 0 < n < self.users.numel():
            pick = np.random.default_rng(seed).permutation(self.users.numel())[:n]
            self.users = self.users[torch.from_numpy(np.sort(pick)).to(self.users.device)]
        return self

    def _block_top(self, scores: torch.Tensor, ub: torch.Tensor, k: int) -> torch.Tensor:
        """Top-``k`` item ids [B × min(k, I)] of a score block after masking; validates the block."""
        if scores.shape != (ub.numel(), self.n_items):
            raise ValueError(
                f"score_fn returned shape {tuple(scores.shape)}, expected ({ub.numel()}, {self.n_items})")
        st = self._on(scores.device)
        return topk_ordered(mask_unrankable(scores, ub, (st["tr_ptr"], st["tr_idx"]), st.get("excluded")), k)[1]

    def _block_metrics(self, top: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """float64 [B × M] metrics of users ``ub`` from their ranked item ids ``top`` [B × >= Kmax or all]."""
        st = self._on(top.device)
        ub = ub.to(top.device)
        top = top[:, : self.kmax]
        r, c = _gather_rows(st["gt_ptr"], st["gt_idx"], ub)
        truth = torch.zeros((ub.numel(), self.n_items), dtype=torch.bool, device=top.device)
        truth[r, c] = True
        hits = truth.gather(1, top)
        if hits.shape[1] < self.kmax:  # fewer items than K: pad with misses
            hits = torch.nn.functional.pad(hits, (0, self.kmax - hits.shape[1]), value=False)
        return ranking_metrics(hits, st["n_gt"][ub], self.ks)

    def _check_users(self, ub: torch.Tensor) -> None:
        st = self._on(ub.device)
        if int(ub.min()) < 0 or int(ub.max()) >= self.n_users or bool((st["n_gt"][ub] == 0).any()):
            raise ValueError("metric_sums got users without ground truth in this split; use .users / shard_users()")

    def _scores(self, score_fn: ScoreFn, ub: torch.Tensor) -> torch.Tensor:
        scores = score_fn(ub)
        return scores if scores.is_floating_point() else scores.float()

    def ranks_like(self, other: "Evaluator") -> bool:
        """True when both evaluators rank a user identically (same items, masks and candidates)."""
        if self is other:
            return True
        if self.n_items != other.n_items or self.n_users != other.n_users:
            return False
        a, b = self._cpu, other._cpu
        if ("excluded" in a) != ("excluded" in b):
            return False
        return all(torch.equal(a[k], b[k]) for k in ("tr_ptr", "tr_idx", "excluded") if k in a)

    @torch.no_grad()
    def per_user(self, score_fn: ScoreFn, users: torch.Tensor | None = None) -> torch.Tensor:
        """float64 [U × M] per-user metrics for ``users`` (default ``.users``), columns in ``.names`` order.

        ``score_fn(users [B]) -> scores [B × I]`` is called under no_grad with users on ``.device``;
        the returned tensor is modified in place (training items set to -inf), so it must not alias
        state the caller keeps. NaN or ±inf for any other item raises ``FloatingPointError``.
        """
        users = self.users if users is None else torch.as_tensor(users, dtype=torch.int64).to(self.device)
        out = torch.empty(users.numel(), len(self.names), dtype=torch.float64)
        for s in range(0, users.numel(), self.batch_users):
            ub = users[s:s + self.batch_users]
            scores = self._scores(score_fn, ub)
            ub = ub.to(scores.device)
            self._check_users(ub)
            top = self._block_top(scores, ub, self.kmax)
            out[s:s + ub.numel()] = self._block_metrics(top, ub).cpu()
        return out

    def metric_sums(self, score_fn: ScoreFn, users: torch.Tensor | None = None) -> torch.Tensor:
        """float64 [M] sums of per-user metrics over ``users`` (default ``.users``), in ``.names`` order.

        The matching count is ``len(users)``. Result does not depend on ``max_batch_elems``.
        Returned on CPU.
        """
        return self.per_user(score_fn, users).sum(dim=0)

    def finalize(self, sums: torch.Tensor, count: int | torch.Tensor) -> dict[str, float]:
        """Averages ``sums / count`` as ``{name: value}`` (0.0 for every metric if count == 0)."""
        n = float(count.item() if isinstance(count, torch.Tensor) else count)
        vals = sums.detach().to("cpu", torch.float64)
        return {name: (float(v) / n if n > 0 else 0.0) for name, v in zip(self.names, vals.tolist())}

    def evaluate(self, score_fn: ScoreFn) -> dict[str, float]:
        """Single-process evaluation over all ``.users``: ``finalize(metric_sums(score_fn), len(users))``."""
        return self.finalize(self.metric_sums(score_fn, self.users), self.users.numel())


@torch.no_grad()
def joint_metric_sums(evaluators: Sequence[Evaluator], score_fn: ScoreFn,
                      users: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``[ev.metric_sums(score_fn, u) for ev, u in zip(evaluators, users)]``, ranking each user once.

    Validation and test mask the same training items, so a user's top-K list is the same for both:
    evaluators that :meth:`~Evaluator.ranks_like` each other are grouped, the union of a group's
    users is scored and ranked once, in blocks, and each split's metrics are read off the shared
    lists (half the work of two separate passes). ``users`` default to each evaluator's ``.users``
    (each list without repeats, as ``.users`` and its shards are: a repeated user counts once here);
    sums are float64 on CPU and equal the separate ones up to rounding.
    """
    evaluators = list(evaluators)
    users = [ev.users if u is None else torch.as_tensor(u, dtype=torch.int64).to(ev.device)
             for ev, u in zip(evaluators, users or [None] * len(evaluators))]
    groups: list[list[int]] = []
    for j, ev in enumerate(evaluators):
        home = next((g for g in groups if evaluators[g[0]].ranks_like(ev)), None)
        if home is None:
            groups.append([j])
        else:
            home.append(j)
    sums: list[torch.Tensor] = [torch.zeros(0)] * len(evaluators)
    for g in groups:
        got = _shared_ranking_sums([evaluators[j] for j in g], score_fn, [users[j] for j in g])
        for j, s in zip(g, got):
            sums[j] = s
    return sums


def _shared_ranking_sums(evaluators: list[Evaluator], score_fn: ScoreFn,
                         users: list[torch.Tensor]) -> list[torch.Tensor]:
    if len(evaluators) == 1:
        return [evaluators[0].metric_sums(score_fn, users[0])]
    sums = [torch.zeros(len(ev.names), dtype=torch.float64) for ev in evaluators]
    for j, _, rows in _ranked_rows(evaluators, score_fn, users):
        sums[j] += rows.sum(dim=0).cpu()
    return sums


def joint_metric_rows(evaluators: Sequence[Evaluator], score_fn: ScoreFn,
                      users: Sequence[torch.Tensor] | None = None,
                      ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per-user metrics of evaluators that :meth:`~Evaluator.ranks_like` each other, ranking each user once.

    The union of ``users`` (default: each evaluator's ``.users``) is scored and ranked in blocks, as
    :func:`joint_metric_sums` does; for each block and each evaluator with users in it, yields ``(j, ub,
    rows)``: the index ``j`` of the evaluator, its users ``ub`` in the block and their float64 metric rows
    [len(ub) x M] (columns in ``.names`` order), both on the device the scores came back on.
    """
    evaluators = list(evaluators)
    if not all(evaluators[0].ranks_like(ev) for ev in evaluators[1:]):
        raise ValueError("joint_metric_rows: the evaluators do not rank alike (other training items or candidates)")
    users = [ev.users if u is None else torch.as_tensor(u, dtype=torch.int64).to(ev.device)
             for ev, u in zip(evaluators, users or [None] * len(evaluators))]
    return _ranked_rows(evaluators, score_fn, users)


@torch.no_grad()
def _ranked_rows(evaluators: list[Evaluator], score_fn: ScoreFn,
                 users: list[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    first = evaluators[0]
    for ev, u in zip(evaluators, users):
        if u.numel():
            ev._check_users(u.to(first.device))
    union = torch.unique(torch.cat([u.to(first.device) for u in users]))
    member = [torch.zeros(first.n_users, dtype=torch.bool, device=first.device).index_fill_(0, u.to(first.device), True)
              for u in users]
    k = max(ev.kmax for ev in evaluators)
    for s in range(0, union.numel(), first.batch_users):
        ub = union[s:s + first.batch_users]
        scores = first._scores(score_fn, ub)
        on_scores = ub.to(scores.device)
        top = first._block_top(scores, on_scores, k)
        for j, ev in enumerate(evaluators):
            rows = member[j][ub].to(top.device)
            if bool(rows.any()):
                yield j, on_scores[rows], ev._block_metrics(top[rows], on_scores[rows])
