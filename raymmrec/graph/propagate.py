"""Propagation over a fixed sparse graph: the graph encoders' message passing (``Â @ X``, LightGCN layers).

The graphs come from :mod:`raymmrec.graph.build` (CSR tensors that never change during training), so the
product's backward can reuse a transpose handed over once instead of transposing in every step.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _FixedSpMM(torch.autograd.Function):
    """``adj @ x`` for a fixed sparse ``adj``, whose backward multiplies by a transpose given up front.

    ``torch.sparse.mm``'s own backward transposes ``adj`` in every step (a sort and a gather over
    all non-zeros); a graph that never changes can hand its transpose over once, or itself when it
    is symmetric. No gradient flows to ``adj``.
    """

    @staticmethod
    def forward(ctx, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.adj_t, g)


def fixed_spmm(adj: Tensor, x: Tensor, adj_t: Tensor | None = None) -> Tensor:
    """``adj @ x`` for a constant sparse matrix; ``adj_t`` is its transpose (default: ``adj``, symmetric)."""
    return _FixedSpMM.apply(adj, adj if adj_t is None else adj_t, x)


def propagate_sum(adj: Tensor, ego: Tensor, n_layers: int) -> Tensor:
    """LightGCN propagation with the *sum* readout (CM3, LIRDRec): ``sum over l = 0..L of Â^l · ego``.

    ``adj`` is the symmetric normalised user-item adjacency, so its backward multiplies by ``adj`` itself.
    """
    acc = ego
    h = ego
    for _ in range(n_layers):
        h = fixed_spmm(adj, h)
        acc = acc + h
    return acc


def propagate_mean(adj: Tensor, ego: Tensor, n_layers: int) -> Tensor:
    """LightGCN propagation: mean over layers 0..L of ``Â^l · ego`` (``N × D``)."""
    return propagate_sum(adj, ego, n_layers) / (n_layers + 1)
