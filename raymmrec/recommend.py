"""Use a trained model: top-K recommendations and re-evaluation, from a run folder or URL.

Example::

    from raymmrec.train.artifacts import load_trained
    trained = load_trained("runs/bm3-lfm2k-seed999")
    items, scores = top_k(trained, torch.tensor([3, 17]), k=20)   # 2 × 20 each
"""

from __future__ import annotations

import io

import pandas as pd
import torch
from torch import Tensor

from raymmrec.errors import UserError
from raymmrec.eval import Evaluator
from raymmrec.eval.cold import cold_evaluator
from raymmrec.train.artifacts import Trained, join, read_bytes
from raymmrec.train.build import ranked_items

NAME_FILES = ("item_text.tsv", "item_names.tsv")  # itemID <tab> ... <tab> title|name|text
NAME_COLUMNS = ("title", "name", "text")


def parse_users(text: str, n_users: int) -> Tensor:
    """``"3,17"`` -> tensor([3, 17]); every id must lie in ``[0, n_users)``."""
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--users: expected comma-separated integer user ids, got {text!r}") from None
    bad = [u for u in ids if not 0 <= u < n_users]
    if not ids or bad:
        raise UserError(f"--users: expected ids in [0, {n_users}), got {bad or text!r}")
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def top_k(trained: Trained, users: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each user's ``k`` best items (ids, scores), the user's training items excluded."""
    if k < 1:
        raise UserError(f"--k: expected an integer >= 1, got {k}")
    data = trained.data
    scores = trained.model.scorer()(users.to(trained.device)).float().cpu()
    train_users = torch.tensor(data.train.users, dtype=torch.long)  # copies: the arrays may be read-only
    train_items = torch.tensor(data.train.items, dtype=torch.long)
    seen = torch.isin(train_users, users)
    rows = torch.searchsorted(users.sort().values, train_users[seen])
    order = users.argsort()
    scores[order[rows], train_items[seen]] = float("-inf")
    if data.forgotten_items.size:  # an item-wise forget request's items are never recommended
        scores[:, torch.from_numpy(data.forgotten_items)] = float("-inf")
    k = min(k, data.n_items - int(data.forgotten_items.size))
    best = scores.topk(k, dim=1)
    return best.indices, best.values


def item_names(trained: Trained) -> dict[int, str] | None:
    """Item names from the dataset folder's ``item_text.tsv`` (or ``item_names.tsv``), if it has one.

    Only for folders whose ids are used as they are (no rating or k-core filter re-indexing them).
    """
    d = trained.spec.data
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
