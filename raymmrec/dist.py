"""What a loss or a per-epoch hook may know about the other ranks: the distributed context.

Plain ``torch.distributed`` (no Ray), so the same code runs in one process (``world_size == 1``:
every collective is the identity) and under DDP started by Ray Train or by a test.

DDP *averages* gradients over ranks. A loss is exact under DDP when the average over ranks of
each rank's gradient equals the gradient of the single-process loss on the global batch; the
helpers below build such per-rank surrogates:

* :meth:`DistContext.batch_mean` of per-row losses: ``world * sum_local / global_rows``;
* :meth:`DistContext.global_norm` of a row-sharded table: the Frobenius norm over all ranks'
  rows, differentiable with respect to this rank's rows only;
* :meth:`DistContext.all_gather` with gradients, for in-batch statistics (uniformity terms).

In a column-sharded run (:mod:`raymmrec.shard`) every rank sees the whole batch (``world_size`` 1
here: nothing to average) and holds a block of every table's columns: ``columns`` is set, and
:meth:`DistContext.global_norm` also sums the squared norms over the column blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process; ``DistContext()`` is the single-process context."""

    rank: int = 0
    world_size: int = 1
    columns: Any = None  # raymmrec.shard.Columns of a column-sharded run, else None

    @classmethod
    def current(cls) -> "DistContext":
        """The context of the initialised default process group, or the single-process one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks (no gradient); ``t`` itself in one process."""
        if not self.distributed:
            return t
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    def global_sum(self, t: Tensor) -> Tensor:
        """Sum over ranks whose value is global but whose gradient flows to this rank's ``t`` only."""
        if not self.distributed:
            return t
        return t + (self.all_reduce_sum(t) - t.detach())

    def batch_mean(self, per_row: Tensor, global_rows: int) -> Tensor:
        """Per-rank surrogate of the mean of ``per_row`` over the global batch (exact under DDP).

        ``per_row`` holds this rank's rows; ``global_rows`` is the row count over all ranks.
        The value is this rank's share scaled by ``world_size`` (DDP divides by it again).
        """
        return per_row.sum() * (self.world_size / global_rows)

    def global_norm(self, rows: Tensor) -> Tensor:
        """Frobenius norm of the table whose rows (DDP) or columns (``columns``) are split over the ranks."""
        squares = rows.pow(2).sum()
        if self.columns is not None:
            squares = self.columns.reduce(squares)
        return self.global_sum(squares).clamp_min(1e-24).sqrt()

    def all_gather(self, t: Tensor) -> Tensor:
        """Concatenate every rank's rows of ``t`` along dim 0 (rank order), with gradients.

        Ranks may hold different numbers of rows (a global batch rarely splits evenly): the counts
        are exchanged first and each share is padded to the largest for the collective. The
        backward sums, over ranks, the gradients that reach this rank's rows, so a loss computed
        identically on every rank from the gathered rows is exact under DDP *as is* (not scaled).
        """
        if not self.distributed:
            return t
        from torch.distributed.nn.functional import all_gather

        count = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        most = max(sizes)
        padded = t if t.shape[0] == most else torch.cat([t, t.new_zeros(most - t.shape[0], *t.shape[1:])])
        return torch.cat([part[:n] for part, n in zip(all_gather(padded.contiguous()), sizes)], dim=0)

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``t`` in place with rank ``src``'s value (keeps per-epoch state in sync)."""
        if self.distributed:
            dist.broadcast(t, src)
        return t
