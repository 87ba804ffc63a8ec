"""Helpers of the DDP tests, importable by spawned processes (tests/ is on their sys.path).

Starting a process costs seconds (torch, and DDP's own imports of torch._dynamo), so every
multi-process scenario of the suite runs in one ``mp.spawn`` (:func:`run_scenarios`, the session
fixture ``gloo_runs``): the processes join a fresh gloo group for each scenario and leave it after.
"""

from __future__ import annotations

from pathlib import Path

import torch

from _tiny import tiny_data
from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, build_config
from raymmrec.objectives.base import build_objective
from raymmrec.prepared import prepare
from raymmrec.registry import get_model
from raymmrec.train.build import build_graph
from raymmrec.train.sampling import NegativeSampler, epoch_generator

OPTIONS: dict[str, dict] = {}  # defaults, BM3's dropout included: every rank draws the same table-wide masks


def global_batch(graph, n: int, num_negatives: int) -> Batch:
    g = epoch_generator(5, 0)
    idx = torch.randint(graph.train_users.numel(), (n,), generator=g)
    users, items = graph.train_users[idx], graph.train_items[idx]
    sampler = NegativeSampler.from_pairs(graph.n_items, graph.train_users, graph.train_items,
                                         num_negatives=num_negatives)
    return Batch(users, items, sampler.sample(users, g))


def setup(method: str, rank: int, world: int, n: int, num_negatives: int):  # noqa: ANN201
    """Model, objective, this rank's share of the fixed global batch, and the context."""
    data = tiny_data()
    cls = get_model(method)
    cfg = build_config(cls, OPTIONS.get(method, {}))
    graph = build_graph(data, torch.device("cpu"), prepare(data, cls.prepared_inputs(cfg)))
    torch.manual_seed(0)
    model = cls(cfg, graph)
    objective = build_objective(cls, cfg)
    objective.attach(model, graph.n_users, graph.n_items)  # an objective's own parameters (NBPO's flip model)
    full = global_batch(graph, n, num_negatives)
    share = Batch(full.users[rank::world], full.pos_items[rank::world], full.neg_items[rank::world], global_rows=n)
    return model, objective, share, DistContext(rank, world)


def gradients(method: str, rank: int, world: int, n: int, num_negatives: int) -> dict[str, torch.Tensor]:
    """Parameter gradients after one backward on this rank's share of a fixed global batch."""
    model, objective, share, ctx = setup(method, rank, world, n, num_negatives)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    objective(wrapped(share), share, ctx).total.backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def init_group(init: str, rank: int, world: int, timeout_s: float | None = None) -> None:
    """Join the gloo group ``init`` (a ``file://`` store: a fresh file per group, so no port can be taken)."""
    import datetime

    kw = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world, **kw)


def worker(rank: int, world: int, init: str, methods: list[str], n: int, num_negatives: int, out: str) -> None:
    init_group(init, rank, world)
    try:
        grads = {m: gradients(m, rank, world, n, num_negatives) for m in methods}
        if rank == 0:
            torch.save(grads, out)
    finally:
        shutdown()


def shutdown() -> None:
    """Tear the group down cleanly: every rank done, DDP wrappers (reference cycles) freed first.

    A DDP reducer collected after its process group is destroyed aborts the process at exit.
    """
    import gc

    torch.distributed.barrier()
    gc.collect()
    torch.distributed.destroy_process_group()


def eval_worker(rank: int, world: int, init: str, out: str) -> None:
    """Sharded evaluation where only the last rank's users get NaN scores: every rank must stop."""
    from raymmrec.eval import Evaluator
    from raymmrec.train.build import sharded_evaluate

    init_group(init, rank, world, timeout_s=30)
    data = tiny_data()
    ev = Evaluator(data.n_items, data.train, data.valid, ks=(5,))
    poisoned = set(ev.shard_users(world - 1, world).tolist())

    class Model:
        def scorer(self):
            def score(users):
                s = torch.rand(len(users), data.n_items)
                s[torch.tensor([int(u) in poisoned for u in users])] = float("nan")
                return s
            return score

    record_outcome(lambda: sharded_evaluate({"valid": ev}, DistContext(rank, world), torch.device("cpu"))(Model()),
                   lambda e: f"diverged: {e}", f"{out}.{rank}")


def record_outcome(run, diverged, path: str) -> None:  # noqa: ANN001
    """Run ``run()`` on this rank and write how it ended to ``path``; then leave the group."""
    from raymmrec.train.loop import TrainingDiverged

    try:
        run()
        outcome = "finished"
    except TrainingDiverged as e:
        outcome = diverged(e)
    except Exception as e:  # noqa: BLE001 - a timeout in the collective shows up here
        outcome = f"{type(e).__name__}: {e}"
    with open(path, "w") as f:
        f.write(outcome)
    try:
        shutdown()
    except Exception:  # noqa: BLE001 - the group broke (a timed-out collective): leave it for the next scenario
        torch.distributed.destroy_process_group()


def loss_parts(method: str, rank: int, world: int, n: int) -> dict[str, torch.Tensor]:
    """This rank's shares of the loss parts on its slice of the fixed global batch."""
    model, objective, share, ctx = setup(method, rank, world, n, 1)
    with torch.no_grad():
        out = objective(model(share), share, ctx)
    return {k: v.detach().reshape(()) for k, v in out.parts.items()}


def parts_worker(rank: int, world: int, init: str, method: str, n: int, out: str) -> None:
    """Sum every rank's share of each loss part; rank 0 saves the global values."""
    init_group(init, rank, world)
    try:
        parts = loss_parts(method, rank, world, n)
        total = {k: DistContext(rank, world).all_reduce_sum(v) for k, v in parts.items()}
        if rank == 0:
            torch.save(total, out)
    finally:
        shutdown()


def train_nan_worker(rank: int, world: int, init: str, out: str) -> None:
    """Two ranks train; only rank 1's loss turns NaN at its third batch: every rank must stop."""
    from raymmrec.models.base import LossOutput
    from raymmrec.train.loop import Trainer

    init_group(init, rank, world, timeout_s=30)
    model = torch.nn.Linear(2, 1)
    steps = []

    def objective(output, batch, ctx):  # noqa: ANN001, ANN202
        steps.append(len(steps))
        loss = output.sum()
        if rank == 1 and len(steps) == 3:
            loss = loss * float("nan")
        return LossOutput(loss, {})

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = model

        def forward(self, batch: Batch) -> torch.Tensor:
            return self.lin(batch.users.float().unsqueeze(1).expand(-1, 2))

        def on_epoch_start(self, epoch: int, ctx: DistContext) -> None: ...

        def epoch_logs(self) -> dict[str, float]:
            return {}

    net = Net()
    batches = lambda epoch: [Batch(torch.arange(3), torch.arange(3)) for _ in range(5)]  # noqa: E731
    trainer = Trainer(net, objective, torch.optim.SGD(net.parameters(), lr=0.1), batches, lambda m: {},
                      epochs=1, patience=1, seed=0, ctx=DistContext(rank, world))
    record_outcome(lambda: trainer.run_epoch(0), lambda e: f"diverged after {len(steps)} steps: {e}", f"{out}.{rank}")


BATCH = 61  # not a multiple of 2 or 3: ranks hold unequal shares


def scenarios(out: Path) -> list[tuple[str, int, str, tuple]]:
    """(name, world size, worker function, its arguments after ``init``) of every scenario, in order.

    Each worker writes its outcome under ``out``; the grouped gradients first (they need 3 processes).
    """
    from raymmrec.registry import model_names

    methods = model_names()
    return [
        ("grads-3-2", 3, "worker", (methods, BATCH, 2, str(out / "grads-3-2.pt"))),
        ("grads-2-1", 2, "worker", (methods, BATCH, 1, str(out / "grads-2-1.pt"))),
        ("cm3-parts", 2, "parts_worker", ("cm3", BATCH, str(out / "cm3-parts.pt"))),
        ("eval-nan", 2, "eval_worker", (str(out / "eval-nan"),)),
        ("train-nan", 2, "train_nan_worker", (str(out / "train-nan"),)),
    ]


def scenario_process(rank: int, plan: list[tuple[str, int, str, tuple]], out: str) -> None:
    """(one spawned process) run every scenario that has a rank ``rank``, each in its own group."""
    # imported before any group exists: its all_gather's default group (bound at import) is then None,
    # the current default group, rather than the first scenario's group, destroyed after it
    import torch.distributed.nn.functional  # noqa: F401

    torch.set_num_threads(1)  # 3 processes on a small machine: no oversubscription
    for name, world, fn, args in plan:
        if rank < world:
            globals()[fn](rank, world, f"file://{out}/{name}.store", *args)


def run_scenarios(out: Path) -> str | None:
    """Run every scenario in one set of processes; None, or the error that ended the spawn."""
    import torch.multiprocessing as mp

    plan = scenarios(out)
    try:
        mp.spawn(scenario_process, args=(plan, str(out)), nprocs=max(w for _, w, _, _ in plan), join=True)
    except Exception as e:  # noqa: BLE001 - reported by every test whose outcome is missing
        return f"{type(e).__name__}: {e}"
    return None
