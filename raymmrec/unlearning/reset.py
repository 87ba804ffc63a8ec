"""Reset the forgotten users' or items' slices of every state tensor indexed by them.

A user-wise (item-wise) unlearning request ends by overwriting what the model holds of each
forgotten user (item) on its own: every entry of :meth:`Recommender.indexed_state`, parameters and
buffers, the model's and an attached objective's module's (NBPO's flip tables ``P`` and ``Q``, held as
``objective_module.*`` and saved with the model in ``best.pt``). What is written there:

* ``zero``: zeros;
* ``init``: the same slices of a freshly initialised model of the run's seed (``fresh()``), i.e.
  exactly what an untrained model holds;
* ``mean``: the mean over the other users' (items') slices.

Entries declared ``derived`` (caches of tables computed from the others: CM3's and LIRDRec's
``last_users``/``last_items`` under ``eval_from_last_batch``) are then recomputed from the reset state by
:meth:`Recommender.refresh_derived`, so the model as served scores with the reset rows.

The declarations are structural: a test builds every registered method with every compatible
objective and fails on any tensor with a user- or item-sized axis that :meth:`indexed_state` leaves out.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from raymmrec.models.base import Indexed, Recommender

HOWS = ("init", "mean", "zero")


def indexed_tensors(model: Recommender, who: str) -> dict[str, tuple[Tensor, Indexed]]:
    """``{key: (tensor, declaration)}`` of the state indexed by ``who`` (``"users"`` or ``"items"``)."""
    state = model.state_dict(keep_vars=True)
    return {k: (state[k], how) for k, how in model.indexed_state().items() if how.who == who}


@torch.no_grad()
def reset_state(model: Recommender, who: str, ids: Sequence[int] | np.ndarray | Tensor, how: str,
                fresh: Callable[[], Recommender] | None = None) -> list[str]:
    """Overwrite users' (``who="users"``) or items' slices ``ids`` of every indexed tensor with ``how``
    (``zero``, ``init`` from ``fresh()``, ``mean``), then recompute the derived ones.

    Returns the keys written (reset, then recomputed).
    """
    if who not in ("users", "items"):
        raise ValueError(f"who must be 'users' or 'items', got {who!r}")
    if how not in HOWS:
        raise ValueError(f"reset must be one of {', '.join(HOWS)} here, got {how!r}")
    if how == "init" and fresh is None:
        raise ValueError("reset='init' needs a freshly initialised model (fresh)")
    entries = indexed_tensors(model, who)
    new = {k: v.detach() for k, v in fresh().state_dict().items()} if how == "init" else {}
    idx_cpu = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
    written, derived = [], []
    for key, (t, decl) in entries.items():
        if decl.derived:
            derived.append(key)
            continue
        idx = idx_cpu.to(t.device)
        ax = decl.axis
        if how == "zero":
            t.index_fill_(ax, idx, 0)
        elif how == "init":
            if key not in new or new[key].shape != t.shape:
                raise ValueError(f"the fresh model has no {key} of shape {tuple(t.shape)} to reset from")
            src = new[key]  # the fresh model's tensor, on its own device (the run's, as is the model's)
            t.index_copy_(ax, idx, src.index_select(ax, idx_cpu.to(src.device)).to(t.device, t.dtype))
        else:
            keep = torch.ones(t.shape[ax], dtype=torch.float64, device=t.device)
            keep.index_fill_(0, idx, 0.0)
            shape = [1] * t.dim()
            shape[ax] = -1
            # the mean of the rows kept (zeros when every row is forgotten), in float64, without a
            # data-dependent gather
            total = (t.to(torch.float64) * keep.view(shape)).sum(ax, keepdim=True)
            mean = (total / keep.sum().clamp_min(1.0)).to(t.dtype)
            reps = [1] * t.dim()
            reps[ax] = idx.numel()
            t.index_copy_(ax, idx, mean.repeat(reps))
        written.append(key)
    if derived:
        model.refresh_derived()
    return written + derived
