"""The proof in every unlearning report: forgetting, utility, membership and exposure figures.

For a model (original, unlearned or Gold) and a request applied to the original data:

* ``forget``: Recall/NDCG@K of the forgotten *training* pairs, each user's retained training items
  left out of the ranking (the forgotten ones are what is looked for, so they are not masked: the
  pitfall of measuring with the original training mask). Raw model scores: nothing else excluded.
* ``retain``: Recall/NDCG@K of the retained training pairs, nothing masked (the model still fits
  what it kept).
* ``test``: the retain data's test split, the ranking as served (retained training items masked;
  an item-wise request's items never ranked). The same evaluation for all three models.
* ``membership_auc``: how well the scores separate forgotten training pairs from held-out pairs of
  the same users (user- and interaction-wise) or items (item-wise) that no model trained on (the
  test split): ``P(s_forgotten > s_held_out)``. 0.5: indistinguishable, i.e. forgotten.
* ``auc_vs_unseen``: the same against items the user never interacted with (drawn uniformly): how
  well the model still recovers the forgotten interactions (Gold recovers some through what it
  learned from everyone else).
* ``top50_exposure`` (item-wise): how many users have a forgotten item in their top-50 by the raw
  scores, before the served ranking drops them.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from raymmrec.data import Interactions, RecData
from raymmrec.data.forget import ForgetRequest, all_pairs, forget_mask
from raymmrec.eval import Evaluator
from raymmrec.eval.metrics import topk_ordered

EMPTY = Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney ``P(pos > neg) + ½ P(pos = neg)``; NaN when either side is empty."""
    if not pos.size or not neg.size:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def never_seen_pairs(original: RecData, forgotten: Interactions, seed: int = 0) -> Interactions:
    """For each forgotten pair ``(u, i)``, ``(u, j)`` with ``j`` drawn uniformly among the items ``u``
    never interacted with in any split: how the model scores what it has no reason to recommend."""
    rng = np.random.default_rng(seed)
    every = all_pairs(original)
    known = np.unique(every.users.astype(np.int64) * original.n_items + every.items)
    users = forgotten.users.astype(np.int64)
    items = rng.integers(0, original.n_items, users.size)
    for _ in range(100):
        bad = np.isin(users * original.n_items + items, known)
        if not bad.any():
            break
        items[bad] = rng.integers(0, original.n_items, int(bad.sum()))
    return Interactions(users, items)


def held_out_pairs(original: RecData, req: ForgetRequest, split: str) -> Interactions:
    """Never-trained interactions to compare forgotten ones with: ``split`` pairs of the request's
    users (user- and interaction-wise) or items (item-wise), minus the request's own pairs."""
    part = original.split(split)
    if req.kind == "item":
        m = np.isin(part.items, req.items)
    else:
        m = np.isin(part.users, np.unique(req.users))
        if req.kind == "interaction":
            m &= ~forget_mask(req, part, original.n_items)
    return Interactions(part.users[m], part.items[m])


@torch.no_grad()
def pair_scores(tables: tuple[Tensor, Tensor], pairs: Interactions) -> np.ndarray:
    users, items = tables
    u = torch.as_tensor(pairs.users, dtype=torch.long, device=users.device)
    i = torch.as_tensor(pairs.items, dtype=torch.long, device=items.device)
    return (users[u] * items[i]).sum(-1).float().cpu().numpy()


def membership_auc(tables: tuple[Tensor, Tensor], forgotten: Interactions, held_out: Interactions) -> float:
    return auc(pair_scores(tables, forgotten), pair_scores(tables, held_out))


def retained_valid_slice(retain: RecData, max_users: int | None = 4096, seed: int = 0) -> Interactions:
    """The retain data's validation interactions (what the unlearning stop rule may watch: never
    trained on, never the test split), from at most ``max_users`` of its users drawn with ``seed``."""
    v = retain.valid
    users = np.unique(v.users)
    if max_users is not None and users.size > max_users:
        users = np.random.default_rng(seed).choice(users, max_users, replace=False)
        m = np.isin(v.users, users)
        return Interactions(v.users[m], v.items[m])
    return Interactions(v.users, v.items)


def retained_utility(retain: RecData, k: int = 20, max_users: int | None = 4096, seed: int = 0,
                     device: torch.device | str | None = None, max_batch_elems: int = 2**25):
    """``metric(model) -> Recall@k`` of :func:`retained_valid_slice`, ranked as served (the retained
    training items masked, an item-wise request's items never ranked): the utility the unlearning
    stop rule keeps. NaN when the slice is empty."""
    truth = retained_valid_slice(retain, max_users, seed)
    keep = None
    if retain.forgotten_items.size:
        keep = np.setdiff1d(np.arange(retain.n_items), retain.forgotten_items)
    if not len(truth):
        return lambda model: float("nan")
    ev = Evaluator(retain.n_items, retain.train, truth, ks=(k,), max_batch_elems=max_batch_elems, device=device,
                   candidates=keep)

    @torch.no_grad()
    def metric(model) -> float:  # noqa: ANN001
        users, items = model.scoring_embeddings()
        items_t = items.t().contiguous()
        return float(ev.evaluate(lambda u: users[u] @ items_t)[f"recall@{k}"])

    return metric


@torch.no_grad()
def exposure(score, users: Tensor, items: np.ndarray, seen: Interactions, n_items: int, k: int = 50,
             batch: int = 1024) -> int:
    """Users whose raw top-``k`` (their training items masked) holds any of ``items``."""
    if not items.size:
        return 0
    bad = torch.zeros(n_items, dtype=torch.bool)
    bad[torch.as_tensor(items)] = True
    seen_u, seen_i = torch.as_tensor(seen.users), torch.as_tensor(seen.items)
    count = 0
    for start in range(0, users.numel(), batch):
        us = users[start : start + batch].cpu()
        s = score(us.to(users.device)).float().cpu()
        m = torch.isin(seen_u, us)
        rows = torch.searchsorted(us, seen_u[m])
        s[rows, seen_i[m]] = float("-inf")
        _, top = topk_ordered(s, min(k, n_items))
        count += int(bad[top].any(1).sum())
    return count


def report_for(model, original: RecData, retain: RecData, req: ForgetRequest, ks: tuple[int, ...],
               device: torch.device, max_batch_elems: int = 2**25) -> dict[str, float]:
    """Every figure of one model (see the module docstring), flat: ``forget recall@20``, ..."""
    model.eval()
    with torch.no_grad():  # the tables once, for the rankings and the pair scores
        tables = model.scoring_embeddings()
    items_t = tables[1].t().contiguous()
    score = lambda users: tables[0][users] @ items_t  # noqa: E731 - as Recommender.scorer ranks
    opts = {"ks": ks, "max_batch_elems": max_batch_elems, "device": device}
    keep = None
    if retain.forgotten_items.size:
        keep = np.setdiff1d(np.arange(retain.n_items), retain.forgotten_items)
    out: dict[str, float] = {}
    evals = {"forget": Evaluator(retain.n_items, retain.train, retain.forgotten, **opts),
             "retain": Evaluator(retain.n_items, EMPTY, retain.train, candidates=keep, **opts),
             "test": Evaluator(retain.n_items, retain.train, retain.test, candidates=keep, **opts)}
    for name, ev in evals.items():
        out.update({f"{name} {k}": v for k, v in ev.evaluate(score).items()})
    out["membership_auc"] = membership_auc(tables, retain.forgotten, held_out_pairs(original, req, "test"))
    out["auc_vs_unseen"] = membership_auc(tables, retain.forgotten, never_seen_pairs(original, retain.forgotten))
    if req.kind == "item":
        users = torch.arange(retain.n_users, device=device)
        out["top50_exposure"] = float(exposure(score, users, req.items, retain.train, retain.n_items))
    return out
