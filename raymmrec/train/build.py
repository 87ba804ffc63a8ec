"""Build every piece of a run from a :class:`RunSpec`: the one place a run is wired.

Both execution paths call :func:`build` (data, graph, prepared inputs, model, objective,
optimizer, sampler, evaluators) and :func:`make_trainer`; they differ only in what they hand in
(a DDP wrapper, a sharded evaluator, their callbacks). Running the pieces lives elsewhere:
:mod:`raymmrec.train.run` in one process, :mod:`raymmrec.ray.train_fn` on each Ray worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from raymmrec.config import RunSpec
from raymmrec.data import (DEFAULT_SEED, Interactions, RecData, cache_root, hide_positives, hold_out_cold_items,
                           load_dataset)
from raymmrec.data.forget import apply_forget, read_request
from raymmrec.allocator import check_setting
from raymmrec.dist import DistContext
from raymmrec.eval import Evaluator, joint_metric_sums
from raymmrec.eval.cold import COLD_KNN, cold_evaluator, cold_notes, content_knn_metrics
from raymmrec.models.base import RecGraph, Recommender, build_config
from raymmrec.objectives.base import Objective, build_objective
from raymmrec.prepared import frozen_tensor, prepare
from raymmrec.registry import get_model, get_objective
from raymmrec.shard import building_blocks, check_supported, shard_model
from raymmrec.train.loop import Callback, EvalFn, Trainer, TrainingDiverged
from raymmrec.train.sampling import NegativeSampler, canonical_pairs, epoch_batches, epoch_generator


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; anything else must name an available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def load_data(spec: RunSpec, read_tables: Callable[[list[str]], list[Any]] | None = None) -> RecData:
    """Read and check ``spec``'s dataset and apply its data options; the training pairs come sorted
    by (user, item), the order training starts from (:func:`build_graph` then uses them as they are).

    ``read_tables``: how a columnar dataset's parquet files are read (the Ray layer reads them with
    Ray Data, in parallel); the default reads them here.
    """
    d = spec.data
    data = load_dataset(d.source, modalities=d.modalities, rating_threshold=d.rating_threshold, kcore=d.kcore,
                        cold_items=d.cold_items, read_tables=read_tables)
    data = hide_positives(data, d.hide_positives, DEFAULT_SEED)
    if d.forget:
        data = apply_forget(data, read_request(d.forget))
    return canonical_train(data)


def is_canonical(users: np.ndarray, items: np.ndarray, n_items: int) -> bool:
    """Whether int64 pairs are sorted by (user, item) (:func:`~raymmrec.train.sampling.canonical_pairs`)."""
    if users.dtype != np.int64 or items.dtype != np.int64:
        return False
    key = users * n_items + items
    return bool(np.all(key[1:] >= key[:-1]))


def canonical_train(data: RecData) -> RecData:
    """``data`` with its training pairs sorted by (user, item), stably (as :func:`build_graph` sorts them)."""
    u, i = data.train.users, data.train.items
    if is_canonical(u, i, data.n_items):
        return data
    u, i = u.astype(np.int64, copy=False), i.astype(np.int64, copy=False)
    order = np.argsort(u * data.n_items + i, kind="stable")
    return dataclasses.replace(data, train=Interactions(u[order], i[order]))


def make_sampler(spec: RunSpec, data: RecData, graph: RecGraph, num_negatives: int | None = None) -> NegativeSampler:
    """The run's negative sampler over its training pairs (``train.negative_pool``, ``negative_sampler``)."""
    t = spec.train
    # cold-start and forgotten items are never negatives, whatever the pool
    never = np.concatenate([data.cold_items(), data.forgotten_items])
    return NegativeSampler.from_pairs(data.n_items, graph.train_users, graph.train_items,
                                      num_negatives=num_negatives or t.num_negatives, pool=t.negative_pool,
                                      popularity=t.negative_sampler == "popularity",
                                      exclude_items=torch.from_numpy(never) if never.size else None)


def ranked_items(data: RecData) -> np.ndarray | None:
    """The items evaluation ranks: all but an item-wise forget request's (None: all items)."""
    if not data.forgotten_items.size:
        return None
    keep = np.ones(data.n_items, dtype=bool)
    keep[data.forgotten_items] = False
    return np.flatnonzero(keep)


def check_spec(spec: RunSpec) -> tuple[type[Recommender], Any, Objective]:
    """Resolve method, model options and objective, or raise one clear error (no data loaded)."""
    check_setting()  # the environment's allocator setting, before anything is loaded
    cls = get_model(spec.method)
    cfg = build_config(cls, spec.model)
    return cls, cfg, build_objective(cls, cfg, spec.objective, spec.objective_options)


def run_notes(spec: RunSpec) -> dict[str, str]:
    """Per-run notes, printed at start and with the results, recorded in results.json: in place of results
    (``{"cold": why}``) and about them (``{"sampled": ...}`` where a split ranks a sample of its users)."""
    notes = cold_notes(spec.method, get_model(spec.method).scores_cold_items, spec.data.cold_items)
    sampled = [f"{split} ranks {n:,} of its users (eval.{split}_users)"
               for split, n in (("valid", spec.eval.valid_users), ("test", spec.eval.test_users)) if n > 0]
    if spec.eval.test_users > 0:  # the papers rank every test user: say so wherever the metrics are read
        notes["sampled"] = "; ".join(sampled) + ": the metrics estimate those over every user"
    return notes


def _resolved(spec: RunSpec, cfg: Any, objective: Objective) -> dict[str, Any]:
    out = spec.to_dict()
    out["model"] = dataclasses.asdict(cfg)
    out["objective"] = objective.name
    out["objective_options"] = dataclasses.asdict(objective.opts) if objective.opts is not None else {}
    return out


def resolved_config(spec: RunSpec) -> dict[str, Any]:
    """``spec.to_dict()`` with the model options and objective filled with their defaults."""
    _, cfg, objective = check_spec(spec)
    return _resolved(spec, cfg, objective)


def prepared_inputs(spec: RunSpec, data: RecData, log: Callable[[str], None] | None = None,
                    map_blocks: Callable | None = None) -> dict[str, Any]:
    """The model's prepared inputs, from the cache next to the datasets' (built there if absent).

    ``map_blocks``: runs the item-item graph's row blocks (:func:`raymmrec.prepared.prepare`)."""
    cls, cfg, _ = check_spec(spec)
    return prepare(data, cls.prepared_inputs(cfg), cache_root(), log, map_blocks)


def build_graph(data: RecData, device: torch.device, prepared: dict[str, Any] | None = None) -> RecGraph:
    """The model's view of the training data on ``device``.

    On the CPU the pairs (when already sorted, as :func:`load_data` leaves them), the features and the
    prepared inputs are the data's own memory, not copies: under Ray, read-only views of the node's
    object store shared by its workers. Nothing writes to them; a model copies what it trains.
    """
    u, i = data.train.users, data.train.items
    if is_canonical(u, i, data.n_items):
        users, items = frozen_tensor(u), frozen_tensor(i)
    else:  # sorted here: a copy
        users, items = canonical_pairs(frozen_tensor(np.asarray(u, np.int64)), frozen_tensor(np.asarray(i, np.int64)),
                                       data.n_items)
    feats = {m: frozen_tensor(np.asarray(a, dtype=np.float32)).to(device) for m, a in data.features.items()}
    prep = {k: v.to(device) for k, v in (prepared or {}).items()}
    return RecGraph(data.n_users, data.n_items, feats, users, items, prep)


def parameter_groups(model: Recommender) -> list[Any]:
    """The model's parameters, with an attached objective's own in a group without weight decay.

    An objective that owns parameters (NBPO's flip model) regularises them itself; the run's
    ``train.weight_decay`` is the preference model's.
    """
    own = getattr(model, "objective_module", None)
    if own is None:
        return list(model.parameters())
    theirs = {id(p) for p in own.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in theirs]},
            {"params": list(own.parameters()), "weight_decay": 0.0}]


@dataclass
class Pieces:
    """Everything a run trains and evaluates with; made by :func:`build`."""

    spec: RunSpec
    config: dict[str, Any]  # resolved config (defaults filled): what checkpoints and config.json hold
    data: RecData
    graph: RecGraph
    model: Recommender
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: NegativeSampler | None
    evaluators: dict[str, Evaluator]
    device: torch.device
    ctx: DistContext
    # results computed once, logged with every evaluation: the content-kNN baseline of cold-start items
    fixed_results: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # see run_notes
    summary: str = ""  # the dataset's summary line, taken before release_features drops the features


def build(spec: RunSpec, *, device: torch.device | None = None, data: RecData | None = None,
          prepared: dict[str, Any] | None = None, ctx: DistContext | None = None,
          release_features: bool = False) -> Pieces:
    """Data, graph, model, objective, optimizer, sampler and evaluators for ``spec``.

    ``prepared`` are the model's prepared inputs when the caller already has them (a Ray worker
    receives them from the driver's loading task); otherwise they come from the cache. ``release_features``
    drops the data's and the graph's feature copies once the model holds what it needs.

    With ``data.cold_items`` > 0 (held out by :func:`load_data`, or here when ``data`` comes without
    them), ``evaluators`` gain ``cold`` if the method scores cold items (else ``notes`` says why) and
    ``fixed_results`` hold the content-kNN baseline (:mod:`raymmrec.eval.cold`), computed here once.
    """
    device = device or resolve_device(spec.train.device)
    cls, cfg, objective = check_spec(spec)
    data = data or load_data(spec)
    # data handed in without load_data's steps gets them here, each once (a forget request may have
    # emptied the cold split, or forgotten no training pair: the flags say what was applied)
    if spec.data.cold_items > 0 and not data.cold_fraction:
        data = hold_out_cold_items(data, spec.data.cold_items, DEFAULT_SEED)
    if spec.data.hide_positives > 0 and not data.hidden_positives:
        data = hide_positives(data, spec.data.hide_positives, DEFAULT_SEED)
    if spec.data.forget and not data.forget_applied:
        data = apply_forget(data, read_request(spec.data.forget))
    if prepared is None:
        prepared = prepare(data, cls.prepared_inputs(cfg), cache_root())
    graph = build_graph(data, device, prepared)
    torch.manual_seed(spec.train.seed)  # identical initial weights on every rank and every rerun
    cols = ctx.columns if ctx is not None else None
    if cols is None:
        model = cls(cfg, graph)
    else:  # the ID tables and BM3's feature copies are built as this rank's column blocks, never whole (raymmrec.shard)
        check_supported(cls, type(objective))
        with building_blocks(cols) as built:
            model = cls(cfg, graph)
    objective.attach(model, data.n_users, data.n_items)  # an objective's own parameters (NBPO's flip model)
    if cols is not None:  # the rest of the layout (the projections) is cut here, before .to(device)
        shard_model(model, cols, built)
    model = model.to(device)
    optimizer, scheduler = cls.configure_optimizer(parameter_groups(model), spec.train)
    sampler = make_sampler(spec, data, graph) if objective.needs_negatives else None
    candidates = ranked_items(data)
    evaluators = {
        split: Evaluator(data.n_items, data.seen(), data.split(split), ks=tuple(spec.eval.ks),
                         max_batch_elems=spec.eval.max_batch_elems, device=device, candidates=candidates)
        for split in ("valid", "test")
    }
    # eval.valid_users / eval.test_users: a fixed sample of each split's users (data seed, same on every rank)
    evaluators["valid"].sample_users(spec.eval.valid_users, DEFAULT_SEED)
    evaluators["test"].sample_users(spec.eval.test_users, DEFAULT_SEED)
    notes, fixed = run_notes(spec), {}
    if len(data.cold):  # cold-start items held out (data.cold_items)
        if "cold" not in notes:
            evaluators["cold"] = cold_evaluator(data, spec.eval.ks, spec.eval.max_batch_elems, device)
        fixed[COLD_KNN] = content_knn_metrics(data, spec.eval.ks, spec.eval.max_batch_elems)
    summary = data.summary()
    if release_features:
        graph.features = {}
        data.features = {}
    return Pieces(spec, _resolved(spec, cfg, objective), data, graph, model, objective, optimizer, scheduler,
                  sampler, evaluators, device, ctx or DistContext(), fixed, notes, summary)


def batch_fn(p: Pieces) -> Callable[[int], Any]:
    """This rank's share of every global batch of an epoch (one code path for every run)."""
    t = p.spec.train
    users, items = p.graph.train_users, p.graph.train_items

    def batches(epoch: int):  # noqa: ANN202
        return epoch_batches(users, items, t.batch_size, epoch_generator(t.seed, epoch), p.sampler,
                             p.ctx.rank, p.ctx.world_size)

    return batches


def _chosen(evaluators: dict[str, Evaluator], skip: tuple[str, ...], only: tuple[str, ...] | None) -> dict[str, Evaluator]:
    """The evaluators an evaluation ranks: all but ``skip``, or ``only`` those."""
    return {k: ev for k, ev in evaluators.items() if k not in skip and (only is None or k in only)}


def _fixed(fixed: dict[str, dict[str, float]] | None, skip: tuple[str, ...], only: tuple[str, ...] | None
           ) -> dict[str, dict[str, float]]:
    """The fixed results (the cold split's content-kNN baseline) go with the cold split."""
    if not fixed or "cold" in skip or (only is not None and "cold" not in only):
        return {}
    return dict(fixed)


def lazy_splits(spec: RunSpec) -> tuple[str, ...]:
    """``eval.valid_users`` > 0: test (and cold) splits are ranked only at a new best validation metric."""
    return ("test", "cold") if spec.eval.valid_users > 0 else ()


def local_evaluate(evaluators: dict[str, Evaluator], fixed: dict[str, dict[str, float]] | None = None) -> EvalFn:
    """Every split in this process; ``fixed`` results (``Pieces.fixed_results``) are returned with them."""

    def evaluate(model: Recommender, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
                 ) -> dict[str, dict[str, float]]:
        chosen = _chosen(evaluators, skip, only)
        evs = list(chosen.values())
        sums = joint_metric_sums(evs, model.scorer())  # valid and test share each user's ranking
        out = {split: ev.finalize(s, ev.users.numel()) for (split, ev), s in zip(chosen.items(), sums)}
        return {**out, **_fixed(fixed, skip, only)}

    return evaluate


def sharded_evaluate(evaluators: dict[str, Evaluator], ctx: DistContext, device: torch.device,
                     fixed: dict[str, dict[str, float]] | None = None) -> EvalFn:
    """Each rank ranks its share of users; metric sums and user counts are all-reduced (exact).

    ``fixed`` results (the same on every rank, e.g. the content-kNN baseline) are returned with them.

    Non-finite scores on any rank stop every rank at once with :class:`TrainingDiverged` (a rank
    that raised alone would leave the others waiting in the all-reduce).
    """

    def evaluate(model: Recommender, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
                 ) -> dict[str, dict[str, float]]:
        chosen = _chosen(evaluators, skip, only)
        splits, evs = list(chosen), list(chosen.values())
        users = [ev.shard_users(ctx.rank, ctx.world_size) for ev in evs]
        error, sums = "", []
        try:
            sums = joint_metric_sums(evs, model.scorer(), users)
        except FloatingPointError as e:
            error = str(e)
        bad = ctx.all_reduce_sum(torch.tensor([float(bool(error))], device=device)).item()
        if bad:
            raise TrainingDiverged(error or f"model scores contain NaN/inf on {int(bad)} of "
                                            f"{ctx.world_size} ranks at evaluation")
        # every split's sums and user count in one all-reduce
        packed = torch.cat([torch.cat([s.to(torch.float64), torch.tensor([float(len(u))], dtype=torch.float64)])
                            for s, u in zip(sums, users)]).to(device)
        packed = ctx.all_reduce_sum(packed).cpu()
        out, at = {}, 0
        for split, ev in zip(splits, evs):
            m = len(ev.names)
            out[split] = ev.finalize(packed[at:at + m], int(packed[at + m].item()))
            at += m + 1
        return {**out, **_fixed(fixed, skip, only)}

    return evaluate


def make_trainer(p: Pieces, evaluate: EvalFn, callbacks: list[Callback], model: torch.nn.Module | None = None) -> Trainer:
    """The core :class:`Trainer` over ``p`` (``model``: a DDP wrapper of ``p.model`` if distributed)."""
    t = p.spec.train
    return Trainer(model or p.model, p.objective, p.optimizer, batch_fn(p), evaluate, epochs=t.epochs,
                   patience=t.patience, seed=t.seed, valid_metric=p.spec.eval.valid_metric,
                   eval_every=t.eval_every, callbacks=callbacks, device=p.device, ctx=p.ctx, scheduler=p.scheduler,
                   lazy_splits=lazy_splits(p.spec), steps_per_epoch=-(-len(p.graph.train_users) // t.batch_size))


def _objective_defaults(name: Any) -> dict[str, Any]:
    try:
        opts = get_objective(name).options_cls
    except (KeyError, AttributeError):  # no objective recorded, or one removed since
        return {}
    return dataclasses.asdict(opts()) if opts is not None else {}


def _model_defaults(method: Any) -> dict[str, Any]:
    try:
        cfg_cls = get_model(method).config_cls
    except (KeyError, AttributeError):  # no method recorded, or one removed since
        return {}
    return {f.name: f.default for f in dataclasses.fields(cfg_cls)
            if f.init and f.default is not dataclasses.MISSING}


def check_same_run(saved: dict[str, Any], config: dict[str, Any], where: str) -> None:
    """Refuse to resume into a different experiment: resolved configs must agree.

    Compared: method, objective, model options (defaults filled), data, and the training and
    evaluation settings that change results (seed, lr, batch size, weight decay, negatives, metric,
    ks); the epoch cap, patience, device and checkpointing may change between sessions.
    """
    old = saved
    free = {"epochs", "patience", "device", "checkpoint_every", "eval_every", "shard"}
    defaults = RunSpec().to_dict()
    diffs = []
    for section in ("method", "objective", "objective_options", "model", "data", "train", "eval"):
        a, b = old.get(section), config.get(section)
        if section in ("data", "train", "eval"):  # an option added since counts at its default
            a, b = {**defaults[section], **(a or {})}, {**defaults[section], **(b or {})}
        if section == "objective_options":  # so do an objective's options (BPR's came after its first runs)
            base = _objective_defaults(config.get("objective"))
            a, b = {**base, **(a or {})}, {**base, **(b or {})}
        if section == "model":  # and a model option added since (the ablation switches came later)
            base = _model_defaults(config.get("method"))
            a, b = {**base, **(a or {})}, {**base, **(b or {})}
        if section == "train":
            a = {k: v for k, v in (a or {}).items() if k not in free}
            b = {k: v for k, v in (b or {}).items() if k not in free}
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diffs.append(", ".join(f"{section}.{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys))
            else:
                diffs.append(f"{section} {a!r} -> {b!r}")
    if diffs:
        raise ValueError(f"{where} belongs to a different experiment ({'; '.join(diffs)}); "
                         "choose another run_name or output_dir")
