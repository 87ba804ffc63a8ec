"""Column-sharded (tensor-parallel) training: rank ``r`` of ``W`` holds every row of each ID table but only
its own block of columns (embedding dimensions), and of their optimizer state.

Why columns: the graph encoders here propagate *linearly* (``Â @ E`` acts on every column on its own),
so a rank propagates its columns with no communication at all; only what mixes columns needs the
other ranks. Zhou et al.'s full-graph tensor parallelism for GNNs ("NeutronTP: Load-Balanced
Distributed Full-Graph GNN Training with Tensor Parallelism", PVLDB 18(2), 2024) splits the feature
dimension the same way; Shoeybi et al. ("Megatron-LM", 2019, §3) give the two conjugate operators
used below for the dense layers and the loss:

* :meth:`Columns.reduce` (``g``): all-reduce sum forward, identity backward. A dot product of two
  column-sharded vectors is the sum of the ranks' partial dot products; a squared norm the sum of
  partial squared norms. Every rank then holds the same value and computes the same loss, whose
  gradient with respect to the sum is the gradient with respect to each rank's partial term.
* :meth:`Columns.gather` (all-gather forward, own slice backward): a rank's block joins the others
  into the full rows, which every rank then uses identically (e.g. BM3's predictor): the gradient
  of the replicated loss with respect to the full rows is the same on every rank, and a rank keeps
  the slice of it that belongs to its block.
* :meth:`Columns.share` (``f``: identity forward, all-reduce sum backward): a replicated tensor that
  scales or shifts every rank's block (CM3's and LIRDRec's per-user branch weights multiply the
  users' blocks). Each rank's backward sees only its columns' part of the gradient; the sum is the
  whole gradient, the same on every rank.
* :meth:`Columns.scatter` (sum forward keeping this rank's block, all-gather backward): the output of
  a row-parallel layer, whose every rank holds a partial sum of *all* output columns (the second
  layer of CM3's and LIRDRec's modality encoders, CM3's concatenation map), becomes this rank's block
  of the summed columns; the gradient of the partial sum is the whole gradient of the output.

Parameters that are not split (BM3's predictor and projection biases, NBPO's flip tables, CM3's and
LIRDRec's per-user branch logits and LIRDRec's score MLPs past their first weight) are replicated: every rank holds a full copy. Every rank computes their gradient from the same loss, but
not always bit for bit the same one (on CUDA ``index_add_`` accumulates in varying order), and copies
that drift apart would feed the all-gather's backward gradients from different predictors.
:func:`average_replicated_grads` therefore averages their gradients over the ranks after every
backward, in one all-reduce (they are small; of a per-user or per-item table only the rows the batch
indexes), and :func:`check_replicated` compares the copies at each checkpoint, which keeps rank 0's.

A worker builds only its blocks: inside :func:`building_blocks` the table factories
(:func:`raymmrec.models.base.xavier_embedding`) draw a table row chunk by row chunk and keep this rank's
columns of each chunk (:func:`drawn_columns`), so no rank ever holds a whole ID table, and the block holds
exactly the values of the full table one process draws from the same seed; a trainable copy of a frozen
table (:func:`raymmrec.models.base.trainable_copy`, BM3's feature copies) copies only this rank's columns.
CM3's and LIRDRec's user tables (:func:`raymmrec.models.feature_graph.xavier_normal_table`) are drawn the same way.

Plain ``torch.distributed`` (no Ray): Ray Train starts the process group, a test spawns it with gloo.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def split_sizes(n: int, world: int) -> list[int]:
    """How ``n`` columns split over ``world`` ranks: as ``torch.chunk`` splits them (blocks of
    ``ceil(n / world)``, the last ones shorter, possibly empty), which is how a DTensor's ``Shard``
    placement and so ``torch.distributed.checkpoint`` place a rank's block (:func:`checkpoint_entries`)."""
    each = -(-n // world)
    return [max(0, min(each, n - each * r)) for r in range(world)]


@dataclass
class Traffic:
    """Bytes this rank sent into collectives (all-reduce counts its payload once, all-gather its block)."""

    bytes: int = 0
    calls: int = 0

    def add(self, t: Tensor) -> None:
        self.bytes += t.numel() * t.element_size()
        self.calls += 1


@dataclass(frozen=True)
class Columns:
    """This rank's place in a column-sharded run: rank ``rank`` of ``world_size``."""

    rank: int
    world_size: int
    traffic: Traffic = field(default_factory=Traffic, compare=False, hash=False)

    def span(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's columns of an ``n``-column table."""
        sizes = split_sizes(n, self.world_size)
        start = sum(sizes[: self.rank])
        return start, start + sizes[self.rank]

    def local(self, t: Tensor, dim: int, parts: int = 1) -> Tensor:
        """This rank's block of ``t`` along ``dim`` (a copy, contiguous). With ``parts`` > 1 the
        dimension is ``parts`` equal sections (VBPR's ``[γ ; W f]``), each split on its own and this
        rank's blocks of them concatenated."""
        if parts > 1:
            return torch.cat([self.local(c, dim) for c in t.chunk(parts, dim)], dim).contiguous()
        start, stop = self.span(t.shape[dim])
        return t.narrow(dim, start, stop - start).clone().contiguous()

    def reduce(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over the ranks; the gradient passes through unchanged (Megatron's ``g``)."""
        if self.world_size == 1:
            return t
        return _Reduce.apply(t, self)

    def gather(self, t: Tensor, full: int, dim: int = -1, parts: int = 1) -> Tensor:
        """The ranks' blocks of ``t`` joined along ``dim`` into ``full`` columns (``parts`` sections as in
        :meth:`local`); backward keeps this rank's block of the gradient."""
        if self.world_size == 1:
            return t
        dim = dim % t.dim()
        if parts > 1:
            each = full // parts
            local = self.span(each)[1] - self.span(each)[0]
            return torch.cat([self.gather(c, each, dim) for c in t.split(local, dim)], dim)
        return _Gather.apply(t, self, full, dim)

    def share(self, t: Tensor) -> Tensor:
        """``t`` itself; its gradient summed over the ranks (Megatron's ``f``)."""
        if self.world_size == 1:
            return t
        return _Share.apply(t, self)

    def scatter(self, t: Tensor, full: int, dim: int = -1) -> Tensor:
        """This rank's block (of ``full`` columns along ``dim``) of the sum of ``t`` over the ranks;
        backward joins the ranks' blocks of the gradient."""
        if self.world_size == 1:
            return t
        return _Scatter.apply(t, self, full, dim % t.dim())

    @torch.no_grad()
    def average_(self, t: Tensor) -> Tensor:
        """``t`` replaced in place by its mean over the ranks (no autograd: gradients of replicated parameters)."""
        if self.world_size > 1:
            self.traffic.add(t)
            dist.all_reduce(t)
            t.div_(self.world_size)
        return t


def _gather(t: Tensor, cols: Columns, full: int, dim: int) -> Tensor:
    sizes = split_sizes(full, cols.world_size)
    most = max(sizes)
    moved = t.movedim(dim, 0).contiguous()
    if moved.shape[0] < most:  # uneven blocks: pad to the largest for the collective, cut after
        moved = torch.cat([moved, moved.new_zeros(most - moved.shape[0], *moved.shape[1:])])
    parts = [torch.empty_like(moved) for _ in range(cols.world_size)]
    cols.traffic.add(moved)
    dist.all_gather(parts, moved)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).movedim(0, dim).contiguous()


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, cols: Columns) -> Tensor:  # type: ignore[override]
        out = t.detach().clone().contiguous()
        cols.traffic.add(out)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return g, None


class _Share(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, cols: Columns) -> Tensor:  # type: ignore[override]
        ctx.cols = cols
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        out = g.contiguous().clone()
        ctx.cols.traffic.add(out)
        dist.all_reduce(out)
        return out, None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, cols: Columns, full: int, dim: int) -> Tensor:  # type: ignore[override]
        ctx.cols, ctx.full, ctx.dim = cols, full, dim
        out = t.detach().contiguous().clone()
        cols.traffic.add(out)
        dist.all_reduce(out)  # the whole sum, then this rank's block (simpler than a padded reduce-scatter)
        start, stop = cols.span(full)
        return out.narrow(dim, start, stop - start).contiguous()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return _gather(g, ctx.cols, ctx.full, ctx.dim), None, None, None


def unit_rows(t: Tensor, cols: Columns | None = None) -> Tensor:
    """``t`` with its rows (last dimension) scaled to unit length, as ``F.normalize`` does (norms below
    1e-12 count as 1e-12, with a zero gradient); column-sharded, from the squared norms' partial sums
    over the ranks' blocks (one all-reduce of a scalar per row, and one of their gradients: every
    rank's block is scaled by the norms, so each rank holds a part of their gradient)."""
    squares = t.pow(2).sum(-1, keepdim=True)
    if cols is not None:
        squares = cols.share(cols.reduce(squares))
    return t * squares.clamp_min(1e-24).rsqrt()


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, cols: Columns, full: int, dim: int) -> Tensor:  # type: ignore[override]
        ctx.span, ctx.dim = cols.span(full), dim
        return _gather(t.detach(), cols, full, dim)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        start, stop = ctx.span
        return g.narrow(ctx.dim, start, stop - start), None, None, None


class ShardingUnsupported(ValueError):
    """A method or objective that cannot train column-sharded."""


def supported_methods() -> list[str]:
    """Registered methods that train column-sharded with their own objective."""
    from raymmrec.registry import get_model, get_objective, model_names

    def ok(cls: type) -> bool:
        return getattr(cls, "column_sharding", False)

    return [m for m in model_names() if ok(get_model(m)) and ok(get_objective(get_model(m).default_objective))]


def supported_objectives() -> list[str]:
    from raymmrec.registry import get_objective, objective_names

    return [o for o in objective_names() if getattr(get_objective(o), "column_sharding", False)]


def check_supported(model_cls: type, objective_cls: type) -> None:
    """Raise a one-line :class:`ShardingUnsupported` naming what does support ``shard=columns``."""
    if not getattr(model_cls, "column_sharding", False):
        raise ShardingUnsupported(
            f"method {model_cls.name!r} does not support train.shard=columns; methods that do: "
            f"{', '.join(supported_methods())} (use train.shard=none for data-parallel training)")
    if not getattr(objective_cls, "column_sharding", False):
        raise ShardingUnsupported(
            f"objective {objective_cls.name!r} does not support train.shard=columns; objectives that do: "
            f"{', '.join(supported_objectives())} (use train.shard=none for data-parallel training)")


def layout_of(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``model.column_layout()`` with every entry as ``(dim, parts)``."""
    return {k: (v, 1) if isinstance(v, int) else tuple(v) for k, v in model.column_layout().items()}


def resolve_mode(requested: str, method: str, objective: str | None, workers: int) -> str:
    """``train.shard`` for a run of ``workers`` ranks: ``"columns"`` or ``"none"`` (``auto`` picks columns
    where the method and objective support it; one worker shards nothing). An explicit ``columns`` that the
    method or objective does not support raises :class:`ShardingUnsupported`."""
    from raymmrec.registry import get_model, get_objective

    if workers <= 1 or requested == "none":
        return "none"
    model_cls = get_model(method)
    try:
        check_supported(model_cls, get_objective(objective or model_cls.default_objective))
    except ShardingUnsupported:
        if requested == "columns":
            raise
        return "none"
    return "columns"


#: Elements of the row chunk in which :func:`drawn_columns` draws a table (4 MiB of float32).
CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Block:
    """A tensor a factory made as this rank's block: its full ``width`` along ``dim``, in ``parts`` sections."""

    width: int
    dim: int = 1
    parts: int = 1


@dataclass
class _Building:
    cols: Columns
    blocks: dict[int, Block] = field(default_factory=dict)  # id(parameter) -> Block


_building: list[_Building] = []


@contextmanager
def building_blocks(cols: Columns) -> Iterator[dict[int, Block]]:
    """Inside, the table factories make only ``cols``'s blocks (:func:`building_columns`); yields what they
    made (``id(parameter) -> Block``), for :func:`shard_model`, which then leaves those tensors as they are."""
    _building.append(_Building(cols))
    try:
        yield _building[-1].blocks
    finally:
        _building.pop()


def building_columns() -> Columns | None:
    """The rank whose blocks a table factory makes now (inside :func:`building_blocks`), else None."""
    return _building[-1].cols if _building else None


def made_block(t: Tensor, width: int, dim: int = 1, parts: int = 1) -> Tensor:
    """Record ``t`` (a parameter) as a block that a factory made of a ``width``-wide table; returns ``t``."""
    _building[-1].blocks[id(t)] = Block(width, dim, parts)
    return t


def row_chunks(n: int, width: int, elements: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of an ``n × width`` table, about ``elements`` each (default
    :data:`CHUNK_ELEMENTS`). Every chunk but the last holds a multiple of 16 rows, and the last at least 16
    elements (or the whole table): ``normal_`` on CPU fills blocks of 16 and redraws a short tail, so
    these chunks draw exactly the values of one draw of the whole table, and as many numbers."""
    rows = max(16, (elements or CHUNK_ELEMENTS) // max(width, 1) // 16 * 16)
    bounds = list(range(0, n, rows)) + [n]
    if len(bounds) > 2 and (bounds[-1] - bounds[-2]) * width < 16:
        del bounds[-2]  # a tail of under 16 elements joins the chunk before it
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def drawn_columns(n: int, width: int, draws: Sequence[Callable[[Tensor], Any]], cols: Columns, parts: int = 1
                  ) -> Tensor:
    """``cols``'s block of columns (``parts`` sections, as :meth:`Columns.local`) of the ``n × width`` table
    that ``draws`` fill in turn, each over the whole table (e.g. a module's own initialisation, then
    Xavier's): drawn row chunk by row chunk from the same generator, every draw but the last discarded.

    The block holds exactly the values of the whole table drawn at once, and the generator is left as
    that draw leaves it (the next parameter's values are the same too); the most this holds at once is
    one chunk (:func:`row_chunks`) and the block, never the table.
    """
    chunks = row_chunks(n, width)
    scratch = torch.empty(max(b - a for a, b in chunks) if chunks else 0, width)
    block: Tensor | None = None
    for i, draw in enumerate(draws):
        last = i == len(draws) - 1
        for a, b in chunks:
            chunk = scratch[: b - a]
            draw(chunk)
            if last:
                local = cols.local(chunk, 1, parts)
                if block is None:
                    block = torch.empty(n, local.shape[1])
                block[a:b] = local
    if block is None:  # an empty table
        block = cols.local(torch.empty(n, width), 1, parts)
    return block


def shard_model(model: nn.Module, cols: Columns, built: dict[int, Block] | None = None) -> None:
    """Replace every tensor of ``model.column_layout()`` by this rank's block, in place (before the
    optimizer is built); the model then computes on its blocks (``model.columns``).

    ``built``: the blocks the model's factories made already (:func:`building_blocks`), left as they are;
    each must be a tensor the layout names, split as the layout says."""
    layout = layout_of(model)
    state = model.state_dict(keep_vars=True)
    missing = sorted(set(layout) - set(state))
    if missing:
        raise KeyError(f"{type(model).__name__}.column_layout names {missing}, which the model does not have")
    built = dict(built or {})
    model.column_widths = {}
    for key, (dim, parts) in layout.items():
        t = state[key]
        made = built.pop(id(t), None)
        if made is None:
            model.column_widths[key] = t.shape[dim]
            t.data = cols.local(t.data, dim, parts)
        elif (made.dim, made.parts) != (dim, parts):
            raise ValueError(f"{type(model).__name__}: {key} was built as a block along dim {made.dim} in "
                             f"{made.parts} parts; column_layout says dim {dim} in {parts}")
        else:
            model.column_widths[key] = made.width
    if built:
        names = {id(t): k for k, t in state.items()}
        raise ValueError(f"{type(model).__name__} built {sorted(names.get(i, '?') for i in built)} as column blocks, "
                         "but column_layout does not name them")
    model.replicated = replicated_layout(model)
    model.columns = cols


def replicated_layout(model: nn.Module) -> dict[str, tuple[str, int] | None]:
    """The trainable parameters a column-sharded run replicates (those ``column_layout`` leaves out):
    name -> ``(who, axis)`` for a table indexed by users or items (``indexed_state``), else None."""
    layout = layout_of(model)
    indexed = model.indexed_state() if hasattr(model, "indexed_state") else {}
    out: dict[str, tuple[str, int] | None] = {}
    for name, p in model.named_parameters():
        if name not in layout and p.requires_grad:
            how = indexed.get(name)
            out[name] = (how.who, how.axis) if how is not None else None
    return out


def batch_rows(batch: Any, who: str) -> Tensor:
    """The ids of ``who`` (``"users"`` or ``"items"``: positives and negatives) a batch indexes, repeats kept."""
    if who == "users":
        return batch.users.reshape(-1)
    if batch.neg_items is None:
        return batch.pos_items.reshape(-1)
    return torch.cat([batch.pos_items.reshape(-1), batch.neg_items.reshape(-1)])


@torch.no_grad()
def average_replicated_grads(model: nn.Module, batch: Any) -> None:
    """Replace each replicated parameter's gradient by its mean over the ranks, in one all-reduce; called
    on every rank after each backward of a column-sharded run (a no-op otherwise).

    Of a table indexed by users or items (NBPO's flip tables, ``U × K1`` and ``I × K1``: not small) only
    the rows of the batch's users or items are averaged: a loss reaches its other rows only through
    whole-table terms (a squared norm), elementwise and so the same on every rank.
    :func:`check_replicated` would report a table for which that did not hold.
    """
    cols: Columns | None = getattr(model, "columns", None)
    if cols is None or cols.world_size == 1:
        return
    rows: dict[str, Tensor] = {}
    parts: list[tuple[Tensor, int, Tensor | None]] = []
    for name, how in model.replicated.items():
        g = model.get_parameter(name).grad
        if g is None:  # the same on every rank: one loss, one graph
            continue
        if how is None:
            parts.append((g, 0, None))
        else:
            who, axis = how
            if who not in rows:
                rows[who] = batch_rows(batch, who).to(g.device)
            parts.append((g, axis, rows[who]))
    if not parts:
        return
    flat = torch.cat([(g if idx is None else g.index_select(axis, idx)).reshape(-1) for g, axis, idx in parts])
    cols.average_(flat)
    at = 0
    for g, axis, idx in parts:
        if idx is None:
            g.copy_(flat[at:at + g.numel()].view_as(g))
            at += g.numel()
        else:  # a repeated row gets the same mean from each of its places
            shape = (*g.shape[:axis], idx.numel(), *g.shape[axis + 1:])
            n = math.prod(shape)
            g.index_copy_(axis, idx, flat[at:at + n].view(shape).to(g.dtype))
            at += n


@torch.no_grad()
def replicated_differences(model: nn.Module) -> dict[str, float]:
    """Each replicated parameter whose copy on some rank differs from rank 0's -> the largest absolute
    difference (NaN counts as infinite); empty when every copy agrees. A collective: every rank calls it."""
    cols: Columns | None = getattr(model, "columns", None)
    if cols is None or cols.world_size == 1 or not model.replicated:
        return {}
    names = list(model.replicated)
    worst = []
    for name in names:  # one parameter at a time: a flip table is the size of an ID table
        t = model.get_parameter(name).detach()
        ref = t.clone()
        cols.traffic.add(ref)
        dist.broadcast(ref, 0)
        d = ref.sub_(t).abs_().nan_to_num_(nan=math.inf)
        worst.append(d.max().to(torch.float64) if d.numel() else torch.zeros((), dtype=torch.float64, device=t.device))
    largest = torch.stack(worst)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return {n: w for n, w in zip(names, largest.tolist()) if w > 0}


def check_replicated(model: nn.Module, warn: Callable[[str], None] | None = None) -> dict[str, float]:
    """:func:`replicated_differences` (a collective, for every rank at each checkpoint); when some copies
    differ, rank 0 reports it in one line naming them, through ``warn`` (default :func:`warnings.warn`)."""
    diff = replicated_differences(model)
    cols: Columns | None = getattr(model, "columns", None)
    if diff and cols is not None and cols.rank == 0:
        names = ", ".join(f"{k} (by up to {v:.3g})" for k, v in diff.items())
        line = (f"replicated parameters differ across the {cols.world_size} column-sharded workers: {names}; "
                "the checkpoint keeps worker 0's copy")
        if warn is None:
            warnings.warn(line, RuntimeWarning, stacklevel=2)
        else:
            warn(line)
    return diff




# --- checkpoints: every rank writes and reads only its own blocks (torch.distributed.checkpoint) ---------------


@dataclass(frozen=True)
class Split:
    """How a tensor of a column-sharded run splits: along ``dim``, ``width`` wide in all, in ``parts``
    equal sections each split on its own (VBPR's ``[γ ; W f]``: ``parts=2``)."""

    dim: int
    parts: int
    width: int


def splits_of(model: nn.Module) -> dict[str, Split]:
    """Every tensor of ``model.column_layout()`` and its :class:`Split`, sharded or not (the checkpoint's
    logical tensors are the same for any number of ranks; one process splits nothing)."""
    widths = getattr(model, "column_widths", None)
    state = model.state_dict(keep_vars=True)
    return {k: Split(dim, parts, widths[k] if widths else state[k].shape[dim])
            for k, (dim, parts) in layout_of(model).items() if k in state}


def local_width(split: Split, cols: "Columns | None") -> int:
    """Columns of ``split``'s tensor that this rank holds (all of them in one process)."""
    if cols is None:
        return split.width
    return split.parts * split_sizes(split.width // split.parts, cols.world_size)[cols.rank]


def _mesh(cols: Columns, device_type: str) -> Any:
    """The ranks as a one-dimensional DeviceMesh over the default process group (no new group is created:
    ``DeviceMesh(...)`` itself would make one per call where CUDA is available and the group is gloo's)."""
    from torch.distributed.device_mesh import DeviceMesh

    mesh = DeviceMesh.from_group(dist.group.WORLD, device_type)
    if mesh.size() != cols.world_size:
        raise RuntimeError(f"the process group has {mesh.size()} ranks, the column-sharded run {cols.world_size}")
    return mesh


def checkpoint_entries(key: str, t: Tensor, split: Split | None, cols: Columns | None) -> dict[str, Tensor]:
    """The logical tensors a checkpoint stores for ``t`` (this rank's tensor under ``key``).

    A split tensor becomes one tensor per section (``key``, or ``key#0``, ``key#1``... with parts), and
    in a column-sharded run each is a DTensor sharded along ``dim`` over the ranks (``Shard(dim)``, whose
    blocks are :func:`split_sizes`'): each rank then writes only its block, and a reader with any number of
    ranks (one process included) reads only the blocks that overlap its own. Anything else is ``t``.
    The entries are views of ``t`` where they can be (one section: no copy), so a load into them lands in ``t``.
    """
    if split is None or t.dim() <= split.dim:
        return {key: t}
    each = t.shape[split.dim] // split.parts
    sharded = cols is not None and cols.world_size > 1
    mesh = _mesh(cols, t.device.type) if sharded else None
    out = {}
    for p in range(split.parts):
        sec = t if split.parts == 1 else t.narrow(split.dim, p * each, each).contiguous()
        if sharded:
            from torch.distributed.tensor import DTensor, Shard

            shape = list(t.shape)
            shape[split.dim] = split.width // split.parts
            stride = [math.prod(shape[i + 1:]) for i in range(len(shape))]  # contiguous
            sec = DTensor.from_local(sec, mesh, [Shard(split.dim)], run_check=False, shape=torch.Size(shape),
                                     stride=tuple(stride))
        out[key if split.parts == 1 else f"{key}#{p}"] = sec
    return out


def join_entries(key: str, entries: dict[str, Tensor], split: Split | None) -> Tensor:
    """This rank's tensor under ``key`` from its :func:`checkpoint_entries` (after a load into them)."""
    from torch.distributed.tensor import DTensor

    def plain(t: Tensor) -> Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    if split is None or split.parts == 1 or key in entries:
        return plain(entries[key])
    return torch.cat([plain(entries[f"{key}#{p}"]) for p in range(split.parts)], split.dim)


def _comm_device(t: Tensor) -> torch.device:
    """Where a tensor must be for a point-to-point transfer: NCCL moves CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


@torch.no_grad()
def whole_shapes(model: nn.Module, blocks: dict[str, Tensor]) -> dict[str, tuple[list[int], torch.dtype]]:
    """The shape and dtype of each tensor of the whole state dict that ``blocks`` (this rank's) are part of."""
    splits = splits_of(model) if getattr(model, "columns", None) is not None else {}
    out = {}
    for key, t in blocks.items():
        shape = list(t.shape)
        split = splits.get(key)
        if split is not None and t.dim() > split.dim:
            shape[split.dim] = split.width
        out[key] = (shape, t.dtype)
    return out


ASSEMBLY_CHUNK_BYTES = 64 << 20  # rows of a whole tensor that rank 0 assembles at once for best.pt


def assembled_on_rank0(model: nn.Module, blocks: dict[str, Tensor]) -> Iterator[tuple[str, Tensor | None]]:
    """Each tensor of the whole state dict, from every rank's ``blocks`` (a state dict of this rank's tensors,
    e.g. a CPU copy of the best weights), in ``blocks``' order: ``(key, tensor)`` on rank 0, on the CPU;
    ``(key, None)`` on the other ranks. A tensor split along its columns comes in chunks of whole rows
    (:data:`ASSEMBLY_CHUNK_BYTES` at a time), its rows in order. A collective: every rank runs through all of it.

    Point to point: rank ``r`` sends its block of each split tensor (chunk) to rank 0, which places it
    into the whole one. No other rank ever holds more than its blocks, and rank 0 one chunk at a time (the
    caller writes it, :func:`raymmrec.files.save_tensors`' parts, before asking for the next), never the
    whole weights nor the optimizer's moments. Without columns, ``blocks`` themselves.
    """
    cols: Columns | None = getattr(model, "columns", None)
    if cols is None or cols.world_size == 1:
        yield from blocks.items()
        return
    splits = splits_of(model)
    shapes = whole_shapes(model, blocks)
    for key, t in blocks.items():
        split = splits.get(key)
        if split is None or t.dim() <= split.dim:
            yield key, (t if cols.rank == 0 else None)
            continue
        # a tensor split along its columns (dim >= 1) comes in chunks of whole rows, the rows' bytes being
        # contiguous in the file; one split along its rows (a column-parallel layer's weight) comes whole
        row_bytes = t.element_size() * math.prod(shapes[key][0][1:])
        step = max(1, ASSEMBLY_CHUNK_BYTES // max(1, row_bytes)) if split.dim >= 1 else t.shape[0]
        for a in range(0, max(1, t.shape[0]), max(1, step)):
            rows = t.narrow(0, a, min(step, t.shape[0] - a)) if split.dim >= 1 else t
            yield key, _assemble(rows, split, cols)
            del rows


def _assemble(t: Tensor, split: Split, cols: Columns) -> Tensor | None:
    """Rank 0: the whole tensor that every rank's block ``t`` of ``split`` is part of (point to point);
    None on the other ranks, which send their block."""
    dev = _comm_device(t)
    if cols.rank != 0:
        if t.numel():
            dist.send(t.to(dev).contiguous(), 0)
        return None
    shape = list(t.shape)
    full = list(t.shape)
    full[split.dim] = split.width
    whole = t.new_empty(full, device="cpu")
    each = split.width // split.parts
    for r in range(cols.world_size):
        peer = Columns(r, cols.world_size)
        n = local_width(split, peer)
        shape[split.dim] = n
        if r == 0:
            block = t
        else:
            block = t.new_empty(shape, device=dev)
            if block.numel():
                dist.recv(block, r)
        block = block.to("cpu")
        start, stop = peer.span(each)
        for p in range(split.parts):  # this rank's columns of each section
            whole.narrow(split.dim, p * each + start, stop - start).copy_(
                block.narrow(split.dim, p * (n // split.parts), stop - start))
        del block
    return whole
