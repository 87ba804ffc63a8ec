"""Cold-start item evaluation: rank the held-out items only, and a content-kNN baseline beside it.

With ``data.cold_items`` > 0 a fraction of the items is held out with all their interactions
(:func:`raymmrec.data.split.hold_out_cold_items`): models never train on them, and the ``cold``
split holds those interactions. For each user with a held-out interaction, the ``cold`` evaluator
ranks the cold items only (every other item is excluded, like a training item) and computes the
usual metrics with the usual code (:class:`~raymmrec.eval.evaluator.Evaluator`). Only a model
whose item scores depend on item features (``Recommender.scores_cold_items``) is evaluated there;
for the others, a note says why there are no numbers.

The content-kNN baseline (``cold_knn``) needs no training: every item is the concatenation of its
L2-normalised modality features ``v_i = [f_i^1/‖f_i^1‖ ; f_i^2/‖f_i^2‖ ; …]`` (so each modality
weighs the same whatever its width or scale), a user's profile is the mean ``v`` of their
training items, and score(u, i) = cos(profile_u, v_i) (0 where either vector is zero, e.g. a user
whose training items were all held out). It is computed once per process on the same split with
the same evaluator.

Example::

    ev = cold_evaluator(data, ks=(10, 20))
    model_metrics = ev.evaluate(model.scorer())
    knn_metrics = ev.evaluate(content_knn_scorer(data))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from raymmrec.data.schema import COLD, RecData
from raymmrec.eval.evaluator import Evaluator, ScoreFn

#: The content-kNN baseline's key in results (``cold_knn/recall@20``).
COLD_KNN = "cold_knn"
#: Result keys of cold-start evaluation, in the order tables show them.
COLD_SPLITS = (COLD, COLD_KNN)


def cold_evaluator(data: RecData, ks: Sequence[int] = (10, 20, 50), max_batch_elems: int = 2**25,
                   device: torch.device | str | None = None) -> Evaluator:
    """An evaluator of ``data.cold`` whose candidates are the cold items only."""
    return Evaluator(data.n_items, data.seen(), data.cold, ks=ks, max_batch_elems=max_batch_elems,
                     device=device, candidates=data.cold_items())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def content_knn_scorer(data: RecData) -> ScoreFn:
    """``users [B] -> cosine scores [B × I]`` of the content-kNN baseline (see the module doc)."""
    if not data.features:
        raise ValueError(f"the content-kNN baseline needs item features; {data.name!r} has none")
    items = np.hstack([_unit_rows(np.asarray(data.features[m], dtype=np.float64)) for m in sorted(data.features)])
    key = np.unique(data.train.users.astype(np.int64) * data.n_items + data.train.items)
    users, train_items = key // data.n_items, key % data.n_items
    member = sp.csr_matrix((np.ones(key.size), (users, train_items)), shape=(data.n_users, data.n_items))
    count = np.asarray(member.sum(axis=1))
    profiles = np.asarray(member @ items) / np.maximum(count, 1)
    profiles_t = torch.from_numpy(_unit_rows(profiles).astype(np.float32))
    items_t = torch.from_numpy(_unit_rows(items).astype(np.float32)).t().contiguous()
    return lambda u: profiles_t[u.cpu()] @ items_t


def content_knn_metrics(data: RecData, ks: Sequence[int] = (10, 20, 50), max_batch_elems: int = 2**25
                        ) -> dict[str, float]:
    """The content-kNN baseline's metrics on ``data.cold`` (on the CPU, once; no training)."""
    return cold_evaluator(data, ks, max_batch_elems).evaluate(content_knn_scorer(data))


def cold_notes(method: str, scores_cold_items: bool, cold_items: float) -> dict[str, str]:
    """``{"cold": why}`` when cold-start items are held out but ``method`` cannot score them, else ``{}``.

    What results.json records under ``cold`` instead of numbers, and the line a run prints.
    """
    if cold_items > 0 and not scores_cold_items:
        return {COLD: f"{method} has no feature path for items; cold-start metrics not computed"}
    return {}
