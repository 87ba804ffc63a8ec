"""Use a trained model: top-K recommendations and re-evaluation, from a run folder or URL.

Example::

    from raymmrec.train.trained import load_trained
    trained = load_trained("runs/bm3-lfm2k-seed999")
    items, scores = top_k(trained, torch.tensor([3, 17]), k=20)   # 2 × 20 each (fewer: padded with -1)
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from raymmrec.config import RunSpec
from raymmrec.errors import UserError
from raymmrec.eval import Evaluator, items_by_user, mask_unrankable, topk_ordered
from raymmrec.eval.cold import cold_evaluator
from raymmrec.files import join, read_bytes
from raymmrec.train.trained import Trained
from raymmrec.train.build import ranked_items

NAME_FILES = ("item_text.tsv", "item_names.tsv")  # itemID <tab> ... <tab> title|name|text
NAME_COLUMNS = ("title", "name", "text")


def parse_users(text: str, n_users: int) -> Tensor:
    """``"3,17"`` -> tensor([3, 17]); every id must lie in ``[0, n_users)``; a repeated id is kept once."""
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--users: expected comma-separated integer user ids, got {text!r}") from None
    bad = [u for u in ids if not 0 <= u < n_users]
    if not ids or bad:
        raise UserError(f"--users: expected ids in [0, {n_users}), got {bad or text!r}")
    return torch.tensor(list(dict.fromkeys(ids)), dtype=torch.long)  # first occurrences, in order


def seen_by_user(trained: Trained) -> tuple[Tensor, Tensor]:
    """(indptr, indices) of each user's items that :func:`top_k` leaves out; a service computes it once."""
    data = trained.data
    return items_by_user(data.seen(), data.n_users, data.n_items)


@torch.no_grad()
def top_k(trained: Trained, users: Tensor, k: int,
          seen: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Each user's ``k`` best items (ids, scores), ranked exactly as evaluation ranks them.

    The items evaluation never ranks are left out: the user's training items (and hidden positives,
    :meth:`~raymmrec.data.schema.RecData.seen`) and an item-wise forget request's items. Ties go to the
    lower item id (:func:`~raymmrec.eval.metrics.topk_ordered`, the evaluator's rule). Each row is
    ranked on its own, so a user listed twice gets the same list twice.

    Returns ``[B × k']`` tensors with ``k' = min(k, most items any of these users can be shown)``; a
    user with fewer unseen items than ``k'`` has its row padded with item ``-1`` and score ``-inf``.
    NaN or ±inf scores for a rankable item raise ``FloatingPointError`` (as in evaluation).
    ``seen``: :func:`seen_by_user` of ``trained``, where the caller keeps it (computed here otherwise).
    """
    if k < 1:
        raise UserError(f"--k: expected an integer >= 1, got {k}")
    data = trained.data
    users = torch.as_tensor(users, dtype=torch.long).cpu()
    seen = seen if seen is not None else seen_by_user(trained)
    excluded = torch.from_numpy(np.asarray(data.forgotten_items, dtype=np.int64)) if data.forgotten_items.size else None
    score = trained.model.scorer()
    batch = max(1, trained.spec.eval.max_batch_elems // max(data.n_items, 1))
    items, values = [], []
    for s in range(0, users.numel(), batch):
        ub = users[s:s + batch]
        scores = mask_unrankable(score(ub.to(trained.device)).float().cpu(), ub, seen, excluded)
        rankable = torch.isfinite(scores).sum(dim=1)  # every other score is finite (mask_unrankable checks)
        vals, idx = topk_ordered(scores, k)
        idx[torch.arange(idx.shape[1]) >= rankable[:, None]] = -1
        items.append(idx)
        values.append(vals)
    idx, vals = torch.cat(items), torch.cat(values)
    width = int((idx >= 0).sum(dim=1).max()) if idx.numel() else 0
    return idx[:, :width], vals[:, :width]


def item_names(spec: RunSpec) -> dict[int, str] | None:
    """Item names from ``spec``'s dataset folder's ``item_text.tsv`` (or ``item_names.tsv``), if it has one.

    Only for folders whose ids are used as they are (no rating or k-core filter re-indexing them).
    """
    d = spec.data
    if d.rating_threshold is not None or d.kcore is not None or d.source.startswith(("synthetic", "ml100k")):
        return None
    for name in NAME_FILES:
        path = join(d.source, name)
        try:
            raw = read_bytes(path)
        except FileNotFoundError:
            continue
        frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False)
        col = next((c for c in NAME_COLUMNS if c in frame.columns), None)
        if "itemID" in frame.columns and col is not None:
            return dict(zip(frame["itemID"].astype(int), frame[col]))
    return None


def evaluate(trained: Trained, ks: list[int] | None = None) -> dict[str, dict[str, float]]:
    """Validation and test metrics of the trained model (full ranking, training items masked).

    A run with cold-start items (``data.cold_items``) adds ``cold`` when the model can score them.
    """
    data = trained.data
    ks = ks or trained.spec.eval.ks
    score = trained.model.scorer()
    opts = {"ks": tuple(ks), "max_batch_elems": trained.spec.eval.max_batch_elems, "device": trained.device}
    out = {split: Evaluator(data.n_items, data.seen(), data.split(split), candidates=ranked_items(data),
                            **opts).evaluate(score)
           for split in ("valid", "test")}
    if len(data.cold) and trained.model.scores_cold_items:
        out["cold"] = cold_evaluator(data, **opts).evaluate(score)
    return out
