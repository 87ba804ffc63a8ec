"""Workers of the column-sharding tests, importable by spawned processes (tests/ is on their sys.path)."""

from __future__ import annotations

import os

import torch

from _tiny import tiny_data
from raymmrec.config import load_spec
from raymmrec.dist import DistContext
from raymmrec.shard import Columns, full_model_state, layout_of
from raymmrec.train.build import (batch_fn, build, checkpoint_payload, local_evaluate, make_trainer, restore,
                                  sharded_evaluate)
from raymmrec.train.loop import Callback, TrainState


class CheckpointEveryEpoch(Callback):
    """Assembles a checkpoint after every epoch, as a Ray run does at its checkpoints (all ranks)."""

    def on_epoch_end(self, trainer, state, logs) -> None:  # noqa: ANN001
        checkpoint_payload(trainer, state, {})


def spec(method: str, out: str, epochs: int):  # noqa: ANN201
    s = load_spec(method=method, overrides=[f"output_dir={out}", "run_name=r", "eval.ks=[5,10]",
                                            "eval.valid_metric=recall@10", "train.batch_size=64", "train.lr=0.01",
                                            f"train.epochs={epochs}", "train.patience=50", "train.device=cpu"])
    return s


def pieces(method: str, out: str, epochs: int, cols: Columns | None):  # noqa: ANN201
    ctx = DistContext(columns=cols) if cols is not None else DistContext()
    return build(spec(method, out, epochs), data=tiny_data(), ctx=ctx, device=torch.device("cpu"))


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
        grads = {k: cols.gather_plain(g, full[k], *layout[k]) if k in layout else g for k, g in grads.items()}
    p.optimizer.zero_grad(set_to_none=True)
    return {"loss": out.total.detach().clone(), "grads": grads}


def train(p, world: int, rank: int, resume: dict | None = None) -> dict:  # noqa: ANN001
    """Train to ``p.spec.train.epochs`` (from ``resume``, an assembled checkpoint); final metrics and checkpoint."""
    state = restore(p, resume, "test checkpoint") if resume is not None else TrainState()
    evaluate = (sharded_evaluate(p.evaluators, DistContext(rank, world), p.device) if p.model.columns is not None
                else local_evaluate(p.evaluators))
    trainer = make_trainer(p, evaluate, [CheckpointEveryEpoch()])
    state = trainer.fit(state)
    return {"test": state.history[-1], "checkpoint": checkpoint_payload(trainer, state, p.config),
            "weights": full_model_state(p.model)}


def run_methods(methods: list[str], out: str, epochs: int, world: int = 1, rank: int = 0,
                resume: dict | None = None) -> dict:
    cols = Columns(rank, world) if world > 1 else None
    res = {}
    for m in methods:
        r = {"step": step(pieces(m, out, epochs, cols))}
        r.update(train(pieces(m, out, epochs, cols), world, rank, None if resume is None else resume[m]["checkpoint"]))
        res[m] = r
    return res


def worker(rank: int, world: int, port: int, methods: list[str], out: str, epochs: int, resume_from: str,
           replicas_out: str = "") -> None:
    """:func:`run_methods` on this rank (rank 0 saves to ``out``); then, with ``replicas_out``, :func:`replicas`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        resume = torch.load(resume_from, weights_only=True) if resume_from else None
        res = run_methods(methods, os.path.dirname(out), epochs, world, rank, resume)
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
        make_trainer(p, lambda m: {}, [])._run_epoch(0)
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

