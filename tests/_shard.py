"""Workers of the column-sharding tests, importable by spawned processes (tests/ is on their sys.path)."""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch

from _tiny import tiny_data
from raymmrec.config import load_spec
from raymmrec.dist import DistContext
from raymmrec import shard
from raymmrec.shard import Columns, layout_of
from raymmrec.train.artifacts import write_best
from raymmrec.train.build import batch_fn, build, local_evaluate, make_trainer, sharded_evaluate
from raymmrec.train.checkpoint import restore, save_checkpoint
from raymmrec.train.loop import Callback, TrainState, unwrap


class Allocations:
    """Bytes of the floating-point tensors created while it is active (new storages only: views are free),
    and the largest one: what a rank materialises of weights and optimizer state, e.g. while it writes a
    checkpoint (DCP's own byte buffers, its pickled plans, are not counted)."""

    def __init__(self) -> None:
        self.total = self.largest = 0
        self.live = self.peak = 0  # bytes of those storages still alive, and the most alive at once

    def __enter__(self) -> "Allocations":
        from torch.distributed.tensor import DTensor
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        seen = self

        def plain(t) -> bool:  # noqa: ANN001
            return isinstance(t, torch.Tensor) and not isinstance(t, DTensor) and t.device.type != "meta"

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                out = func(*args, **(kwargs or {}))
                if func.overloadpacket is torch.ops.aten.set_:  # an existing storage into a tensor: nothing
                    return out  # materialised (raymmrec.files.placeholder: allocated, never touched)
                old = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if plain(t)}
                for t in tree_leaves(out):
                    if plain(t) and t.is_floating_point() and t.untyped_storage().data_ptr() not in old:
                        n = t.untyped_storage().nbytes()
                        seen.total += n
                        seen.largest = max(seen.largest, n)
                        seen.live += n
                        seen.peak = max(seen.peak, seen.live)
                        weakref.finalize(t.untyped_storage(), seen.freed, n)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def freed(self, n: int) -> None:
        self.live -= n

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.mode.__exit__(*exc)


def state_bytes(trainer) -> dict:  # noqa: ANN001
    """What this rank holds of the model and its optimizer state: bytes in all, and of its largest tensor."""
    tensors = list(unwrap(trainer.model).state_dict().values())
    tensors += [v for st in trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return {"total": sum(t.numel() * t.element_size() for t in tensors),
            "largest": max(t.numel() * t.element_size() for t in tensors),
            "weights": sum(t.numel() * t.element_size() for t in unwrap(trainer.model).state_dict().values())}


class CheckpointEveryEpoch(Callback):
    """Writes a checkpoint after every epoch into ``run`` as a Ray run does at its checkpoints (all ranks),
    measuring what this rank materialises meanwhile; and ``best.pt``'s weights at every epoch."""

    def __init__(self, run: str, config: dict) -> None:
        self.run, self.config = run, config
        self.saves: list[dict] = []
        self.best: list[dict] = []

    def on_epoch_end(self, trainer, state, logs) -> None:  # noqa: ANN001
        holds = state_bytes(trainer)
        with Allocations() as made:
            save_checkpoint(self.run, trainer, state, self.config)
        self.saves.append({"made": made.total, "made_largest": made.largest, **holds})
        model = unwrap(trainer.model)
        blocks = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rank = model.columns.rank if model.columns is not None else 0
        with Allocations() as made:
            write_best(self.run, model, state, self.config, blocks, rank)
        self.best.append({"made": made.total, "peak": made.peak, "rank": rank, **holds})


def variant(method: str) -> tuple[str, list[str], bool]:
    """``method``, or a variant of it, ``method+key=value+...``: the method's name, its overrides, and whether
    the tiny data gains a third modality (``+audio``)."""
    name, *rest = method.split("+")
    return name, [r for r in rest if r != "audio"], "audio" in rest


def data_for(method: str):  # noqa: ANN201
    """The tiny data, with a third modality (``audio``) for a ``+audio`` variant."""
    data = tiny_data()
    if variant(method)[2]:
        rng = np.random.default_rng(7)
        group = np.arange(data.n_items) % 2
        data.features["audio"] = np.hstack([np.eye(2, dtype=np.float32)[group],
                                            rng.normal(0, 0.1, (data.n_items, 3))]).astype(np.float32)
    return data


def spec(method: str, out: str, epochs: int):  # noqa: ANN201
    name, extra, _ = variant(method)
    s = load_spec(method=name, overrides=[f"output_dir={out}", "run_name=r", "eval.ks=[5,10]",
                                          "eval.valid_metric=recall@10", "train.batch_size=64", "train.lr=0.01",
                                          f"train.epochs={epochs}", "train.patience=50", "train.device=cpu", *extra])
    return s


def pieces(method: str, out: str, epochs: int, cols: Columns | None):  # noqa: ANN201
    ctx = DistContext(columns=cols) if cols is not None else DistContext()
    return build(spec(method, out, epochs), data=data_for(method), ctx=ctx, device=torch.device("cpu"))


def step(p) -> dict:  # noqa: ANN001
    """Loss and (assembled) gradients of the first batch of epoch 0."""
    batch = next(iter(batch_fn(p)(0)))
    torch.manual_seed(1)
    out = p.objective(p.model(batch), batch, p.ctx)
    out.total.backward()
    grads = {k: prm.grad.detach().clone() for k, prm in p.model.named_parameters()}
    cols = p.model.columns
    if cols is not None:
        layout, full = layout_of(p.model), p.model.column_widths
        with torch.no_grad():
            grads = {k: cols.gather(g, full[k], *layout[k]) if k in layout else g for k, g in grads.items()}
    p.optimizer.zero_grad(set_to_none=True)
    return {"loss": out.total.detach().clone(), "grads": grads}


def train(p, world: int, rank: int, run: str, resume: str = "") -> dict:  # noqa: ANN001
    """Train to ``p.spec.train.epochs`` (from the checkpoint of the run folder ``resume``), writing a checkpoint
    into ``run`` after every epoch; the last epoch's metrics, this rank's materialised bytes at each save."""
    resumed = restore(p, resume, "test checkpoint") if resume else None
    assert resumed is not None or not resume, f"no checkpoint in {resume}"
    state = resumed[0] if resumed is not None else TrainState()
    evaluate = (sharded_evaluate(p.evaluators, DistContext(rank, world), p.device) if p.model.columns is not None
                else local_evaluate(p.evaluators))
    saves = CheckpointEveryEpoch(run, p.config)
    trainer = make_trainer(p, evaluate, [saves])
    state = trainer.fit(state)
    return {"test": state.history[-1], "saves": saves.saves, "best": saves.best,
            "weights": {k: v.detach().clone() for k, v in p.model.state_dict().items()}}


def run_methods(methods: list[str], out: str, epochs: int, world: int = 1, rank: int = 0,
                resume: str = "") -> dict:
    """Every method, its run folder ``<out>/<method>`` (resuming ``<resume>/<method>``'s checkpoint)."""
    cols = Columns(rank, world) if world > 1 else None
    res = {}
    for m in methods:
        r = {"step": step(pieces(m, out, epochs, cols))}
        r.update(train(pieces(m, out, epochs, cols), world, rank, os.path.join(out, m),
                       os.path.join(resume, m) if resume else ""))
        res[m] = r
    return res


def worker(rank: int, world: int, port: int, methods: list[str], out: str, epochs: int, resume_from: str,
           replicas_out: str = "") -> None:
    """:func:`run_methods` on this rank (run folders beside ``out``, where rank 0 saves the results, and
    every rank's own under ``out.<rank>``); then, with ``replicas_out``, :func:`replicas`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    shard.ASSEMBLY_CHUNK_BYTES = 256  # best.pt's tables assembled in several row chunks, as a large one is
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = run_methods(methods, os.path.splitext(out)[0], epochs, world, rank, resume_from)
        torch.save(res, f"{out}.{rank}")
        if rank == 0:
            torch.save(res, out)
        if replicas_out:  # in the same processes: starting new ones costs seconds
            rep = replicas(rank, world, os.path.dirname(out))
            if rank == 0:
                torch.save(rep, replicas_out)
    finally:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def replicas(rank: int, world: int, out: str) -> dict:
    """BM3's predictor (dense) and NBPO's flip table ``P`` (rows of users), replicated on every rank: the
    copies' check when fresh, after an epoch in which rank 1's gradient of the parameter is 0.1 % off
    (averaging keeps the copies equal), and after rank 1's copy is changed (the check names it)."""
    import warnings

    from raymmrec.shard import check_replicated

    res = {}
    for method, name in (("bm3", "predictor.weight"), ("nbpo", "objective_module.P")):
        p = pieces(method, out, 1, Columns(rank, world))
        prm = p.model.get_parameter(name)
        lines: list[str] = []
        r = {"replicated": sorted(p.model.replicated), "fresh": check_replicated(p.model, lines.append)}
        if rank == 1:  # a gradient computed in another order (CUDA's index_add_), much exaggerated
            prm.register_hook(lambda g: g * 1.001)  # NBPO's P: the batch's rows only (the others' are 0)
        make_trainer(p, lambda m: {}, []).run_epoch(0)
        r["trained"] = check_replicated(p.model, lines.append)
        if rank == 1:
            with torch.no_grad():
                prm.view(-1)[0] += 1e-3
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r["perturbed"] = check_replicated(p.model)  # the default report: a warning
        r["lines"] = lines + [str(w.message) for w in caught]
        res[method] = r
    return res



def slerp_case(cols: Columns | None) -> dict:
    """``raymmrec.fusion.slerp`` of 8 pairs of 64-d rows (in general position, identical, parallel, antipodal,
    nearly antipodal) at per-row ``t``, on this rank's blocks of columns (all of them in one process): the
    result and the gradients of a fixed linear function of it, joined into whole rows."""
    from raymmrec.fusion import slerp

    g = torch.Generator().manual_seed(5)
    a, b, w = (torch.randn(8, 64, generator=g) for _ in range(3))
    b[1], b[2], b[3] = a[1], 3 * a[2], -a[3]
    b[4] = -2 * a[4] + 1e-6 * b[4]  # inside the antipodal band
    a[5, 40] = 1e-4  # the row's smallest entry, held by the last rank at W = 2 and 3
    b[5] = -a[5]
    t = torch.rand(8, generator=g)
    if cols is None:
        a.requires_grad_(), b.requires_grad_()
        out = slerp(a, b, t)
        (out * w).sum().backward()
        return {"out": out.detach(), "a": a.grad, "b": b.grad}
    a_l, b_l = cols.local(a, 1).requires_grad_(), cols.local(b, 1).requires_grad_()
    out = slerp(a_l, b_l, t, cols)
    cols.reduce((out * cols.local(w, 1)).sum()).backward()
    with torch.no_grad():
        return {"out": cols.gather(out.detach(), 64), "a": cols.gather(a_l.grad, 64), "b": cols.gather(b_l.grad, 64)}


def slerp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = slerp_case(Columns(rank, world))
        if rank == 0:
            torch.save(res, out)
    finally:
        torch.distributed.destroy_process_group()
