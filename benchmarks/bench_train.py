"""Training in one process: epoch and evaluation speed, methods against each other, quality runs, sampled-user
validation, checkpoints.

    python -m benchmarks.bench_train epoch --method bm3 --data synthetic:baby [--epochs-measured 5] \
        [--device auto|cpu|cuda] [--warmup 1] [--eval-repeats 5] [train.batch_size=4096 model.n_layers=2 ...]
    python -m benchmarks.bench_train compare [--data ../shared/data/lfm2k] [--methods bm3,cm3,lirdrec] [--epochs 5] [--floor]
    python -m benchmarks.bench_train quality --data synthetic:small --methods lightgcn,cm3,lirdrec [--seeds 0,1,2]
    python -m benchmarks.bench_train valid-users --method lightgcn --data synthetic:clothing --valid-users 10000 \
        [--epochs 60] [--patience 20] [--draws 10] [--track 1000,10000]
    python -m benchmarks.bench_train checkpoint --method bm3 --data ../shared/data/lfm2k [--repeats 7]

Every mode builds the run as ``raymmrec train`` does (:func:`raymmrec.train.build.build`) and times the
project's own code: :meth:`Trainer.run_epoch <raymmrec.train.loop.Trainer.run_epoch>` (the per-epoch code of
``Trainer.fit``, inside the allocator block ``fit`` trains in), ``model.scorer()`` and
``Evaluator.evaluate`` or ``local_evaluate`` (what a run evaluates with). For lfm2k folders the modalities
are text + audio_whisper. Exit code 2 when the data folder is missing. None imports Ray.

* ``epoch``: ``--warmup`` untimed then ``--epochs-measured`` timed training epochs (CUDA synchronised
  before each clock read), then ``--eval-repeats`` timed evaluations in parts (scorer, each split), as a
  run does it (every split ranked in one pass) and the bare floor (score product and top-K for the same
  users); peak RSS and, on CUDA, ``torch.cuda.max_memory_allocated``.
* ``compare``: each method's epoch (training + one evaluation) in rounds, one epoch of each method in
  turn, so that load on a shared machine hits every method alike; medians and the ratio to the first
  method. ``--floor`` adds each method's dense matrix-product FLOPs per training epoch (torch's
  profiler; sparse products left out) and their time at this machine's best measured float32 product
  rate: a lower bound on the epoch.
* ``quality``: each method trained to its early stop (:func:`raymmrec.train.run.run`) per seed; test
  (and, with ``data.cold_items``, cold-start and content-kNN) Recall/NDCG@20 at the best validation epoch.
* ``valid-users``: one training run with ``eval.valid_users=N``, every validation user's metrics kept at
  every epoch (the run's own evaluation checked against them every 10th epoch); early stopping
  (:func:`raymmrec.train.loop.update_best`) replayed on the full and the sampled validation curve, plus
  ``--draws`` more samples of N users, and how closely samples of the ``--track`` sizes follow the full
  metric against their expected standard error.
* ``checkpoint``: after one epoch (Adam's moments exist), ``--repeats`` checkpoint writes
  (``save_checkpoint``: the tensors with torch.distributed.checkpoint, then ``latest.pt``) and as many
  resumes (``restore``), into a temporary run folder; size and medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (LFM2K, LFM2K_MODALITIES, add_run_arguments, check_data, emit_figures, is_lfm2k,
                               make_spec, parser_with_modes, peak_rss_mib, print_environment, stats, timed)
from raymmrec.train.build import Pieces, build, load_data, local_evaluate, make_trainer, resolve_device
from raymmrec.train.loop import Trainer


def trainer_of(setup: Pieces) -> Trainer:
    """The run's Trainer over ``setup``, evaluating as a run does, without callbacks."""
    return make_trainer(setup, local_evaluate(setup.evaluators), [])


# ------------------------------------------------------------------------------------------------ epoch
def time_epochs(setup: Pieces, warmup: int, measured: int, log: bool = True) -> tuple[list[float], dict[str, float]]:
    """Seconds of each measured ``run_epoch`` (after ``warmup`` untimed ones) and the last epoch's losses."""
    trainer = trainer_of(setup)
    times, logs = [], {}
    with trainer.heap():  # the allocator settings Trainer.fit trains under (raymmrec.allocator)
        for epoch in range(warmup + measured):
            logs, dt = timed(lambda: trainer.run_epoch(epoch), setup.device)  # noqa: B023 - timed() calls it now
            if log:
                kind = "warm-up" if epoch < warmup else "timed"
                print(f"  epoch {epoch} ({kind}): {dt:.3f}s  loss {logs.get('loss', float('nan')):.4f}", flush=True)
            if epoch >= warmup:
                times.append(dt)
    return times, logs


def time_eval(setup: Pieces, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of ``scorer()`` and of each split's ``evaluate`` per repeat (after ``warmup`` untimed rounds)."""
    out: dict[str, list[float]] = {"scorer": [], **{s: [] for s in setup.evaluators}}
    for r in range(warmup + repeats):
        score, dt = timed(setup.model.scorer, setup.device)
        parts = {"scorer": dt}
        for split, ev in setup.evaluators.items():
            parts[split] = timed(lambda: ev.evaluate(score), setup.device)[1]  # noqa: B023 - timed() calls it now
        if r >= warmup:
            for k, v in parts.items():
                out[k].append(v)
    return out


def time_joint_eval(setup: Pieces, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of one evaluation as a run does it (``local_evaluate``: scorer, then every split ranked
    in one pass)."""
    evaluate = local_evaluate(setup.evaluators)
    return [dt for r, dt in enumerate(timed(lambda: evaluate(setup.model), setup.device)[1]
                                      for _ in range(warmup + repeats)) if r >= warmup]


def time_bare_ranking(setup: Pieces, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of the hardware floor of one evaluation: the scoring tables' product for every user
    evaluated (valid and test together) and one top-Kmax over all items, with nothing else."""
    users = torch.unique(torch.cat([ev.users for ev in setup.evaluators.values()])).to(setup.device)
    kmax = max(ev.kmax for ev in setup.evaluators.values())
    with torch.no_grad():
        u, i = (t.detach() for t in setup.model.scoring_embeddings())
        item_t = i.t().contiguous()
        out = []
        for r in range(warmup + repeats):
            dt = timed(lambda: torch.topk(u[users] @ item_t, kmax, dim=1), setup.device)[1]
            if r >= warmup:
                out.append(dt)
    return out


def epoch(a: argparse.Namespace) -> dict[str, Any]:
    spec = make_spec(a, a.device)
    try:
        device = resolve_device(spec.train.device)
    except RuntimeError as e:  # e.g. --device cuda on a machine without CUDA
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    env = print_environment(device)
    data, load_s = timed(lambda: load_data(spec))
    print(f"{data.summary()} (loaded in {load_s:.1f}s)", flush=True)
    setup, setup_s = timed(lambda: build(spec, device=device, data=data), device)
    n_params = sum(x.numel() for x in setup.model.parameters())
    print(f"method {spec.method} on {device}; batch size {spec.train.batch_size}; {n_params:,} parameters; "
          f"setup {setup_s:.1f}s", flush=True)
    train_times, logs = time_epochs(setup, a.warmup, a.epochs_measured)
    ev = time_eval(setup, a.eval_repeats)
    both = [v + t for v, t in zip(ev["valid"], ev["test"])]
    full = [s + b for s, b in zip(ev["scorer"], both)]
    joint = time_joint_eval(setup, a.eval_repeats)
    bare = time_bare_ranking(setup, a.eval_repeats)
    res = {
        "method": spec.method, "data": a.data, "summary": data.summary(), **env, "batch_size": spec.train.batch_size,
        "overrides": list(a.overrides), "warmup": a.warmup, "load_s": load_s, "setup_s": setup_s,
        "train_epoch_s": stats(train_times), "train_epoch_all_s": train_times, "last_loss": logs.get("loss"),
        "scorer_s": stats(ev["scorer"]), "eval_valid_s": stats(ev["valid"]), "eval_test_s": stats(ev["test"]),
        "eval_both_s": stats(both), "eval_full_s": stats(full), "eval_run_s": stats(joint),
        "bare_rank_s": stats(bare), "eval_run_vs_bare": statistics.median(joint) / statistics.median(bare),
        "peak_rss_mib": peak_rss_mib(),
    }
    if device.type == "cuda":
        res["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    tr = res["train_epoch_s"]
    print(f"train epoch: median {tr['median']:.3f}s  min {tr['min']:.3f}s  max {tr['max']:.3f}s  (n={tr['n']})")
    print(f"eval: scorer {res['scorer_s']['median']:.3f}s | valid {res['eval_valid_s']['median']:.3f}s | "
          f"test {res['eval_test_s']['median']:.3f}s | valid+test {res['eval_both_s']['median']:.3f}s | "
          f"scorer+valid+test {res['eval_full_s']['median']:.3f}s  (medians of {a.eval_repeats})")
    print(f"evaluation as a run does it (scorer, valid and test ranked together) {res['eval_run_s']['median']:.4f}s; "
          f"bare product + top-{max(ev.kmax for ev in setup.evaluators.values())} for the same users "
          f"{res['bare_rank_s']['median']:.4f}s: {res['eval_run_vs_bare']:.2f}x the bare floor")
    mem = f"peak RSS {res['peak_rss_mib']:.0f} MiB"
    if "cuda_max_allocated_mib" in res:
        mem += f"; CUDA max allocated {res['cuda_max_allocated_mib']:.0f} MiB"
    res["load_avg_1m_end"] = os.getloadavg()[0]
    print(f"{mem}; load average (1 min) {env['load_avg_1m']:.2f} at start, {res['load_avg_1m_end']:.2f} at end",
          flush=True)
    return res


# ---------------------------------------------------------------------------------------------- compare
def spec_for(method: str, data: str, overrides: list[str]) -> Any:
    """A CPU run spec of ``method`` on ``data`` (lfm2k: text + Whisper audio unless overridden)."""
    from raymmrec.config import load_spec

    spec = load_spec(method=method, overrides=[f"data.source={data}", "train.device=cpu", *overrides])
    if is_lfm2k(data) and not any(o.startswith("data.modalities") for o in overrides):
        spec.data.modalities = list(LFM2K_MODALITIES)
    return spec


def compare(a: argparse.Namespace) -> dict[str, Any]:
    methods = a.methods.split(",")
    setups, trainers = {}, {}
    data = None
    train = {m: [] for m in methods}
    evals = {m: [] for m in methods}
    with contextlib.ExitStack() as heaps:
        for m in methods:
            spec = spec_for(m, a.data, a.overrides)
            data = data or load_data(spec)
            setups[m] = build(spec, data=data)
            trainers[m] = trainer_of(setups[m])
            heaps.enter_context(trainers[m].heap())  # the allocator settings Trainer.fit trains under
            trainers[m].run_epoch(0)  # warm-up
        for r in range(a.epochs):
            for m in methods:
                train[m].append(timed(lambda: trainers[m].run_epoch(r + 1))[1])  # noqa: B023 - timed() calls it now
                evals[m].append(timed(lambda: local_evaluate(setups[m].evaluators)(setups[m].model))[1])  # noqa: B023
            print(f"  round {r}: " + "  ".join(f"{m} {train[m][-1]:.2f}+{evals[m][-1]:.2f}s" for m in methods),
                  flush=True)
    base = methods[0]
    out = {}
    for m in methods:
        both = [t + e for t, e in zip(train[m], evals[m])]
        out[m] = {"train_s": statistics.median(train[m]), "eval_s": statistics.median(evals[m]),
                  "epoch_s": statistics.median(both)}
    for m in methods:
        out[m]["ratio_to_" + base] = out[m]["epoch_s"] / out[base]["epoch_s"]
        print(f"{m:>10}: train {out[m]['train_s']:.3f}s + eval {out[m]['eval_s']:.3f}s = {out[m]['epoch_s']:.3f}s "
              f"per epoch (median of {a.epochs}); {out[m]['ratio_to_' + base]:.2f}x {base}")
    if a.floor:
        rate = gemm_rate()
        print(f"  floor: this machine's dense float32 matrix products run at {rate / 1e9:.0f} GFLOP/s "
              f"(best of repeated 1425 x 1792 x 256 products)")
        for m in methods:
            flops = dense_flops(trainers[m], a.epochs + 1)
            out[m].update(dense_gflop_per_epoch=flops / 1e9, dense_floor_s=flops / rate)
            print(f"{m:>10}: {flops / 1e9:.1f} GFLOP of dense matrix products per training epoch: "
                  f"{flops / rate:.3f}s at that rate, {flops / rate / out[base]['epoch_s']:.2f}x a whole {base} epoch")
    return {"what": "compare", "data": a.data, "methods": out, "epochs": a.epochs}


def gemm_rate(repeats: int = 30) -> float:
    """FLOP/s of the fastest of ``repeats`` float32 products of an encoder layer's shape."""
    x, w = torch.randn(1425, 1792), torch.randn(1792, 256)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t0)
    return 2 * 1425 * 1792 * 256 / best


def dense_flops(trainer: Trainer, epoch: int) -> float:
    """FLOPs of the dense matrix products (forward and backward) of one training epoch, as the
    profiler counts them; products with a sparse operand (the graph propagation) are left out."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        trainer.run_epoch(epoch)
    total = 0.0
    for e in prof.events():
        parent = e.cpu_parent
        sparse = any("sparse" in (q.name if q else "") for q in (parent, parent.cpu_parent if parent else None))
        if e.name in ("aten::mm", "aten::addmm", "aten::bmm") and e.flops and not sparse:
            total += e.flops
    return total


# ---------------------------------------------------------------------------------------------- quality
def quality(a: argparse.Namespace) -> dict[str, Any]:
    from raymmrec.train.run import run

    rows = []
    for m in a.methods.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                spec = spec_for(m, a.data, [*a.overrides, f"output_dir={tmp}", "run_name=r", f"train.seed={seed}"])
                state, wall = timed(lambda: run(spec, progress=False))  # noqa: B023 - timed() calls it now
                results = json.loads((Path(tmp) / "r" / "results.json").read_text())
            row = {"method": m, "seed": seed, "best_epoch": state.best_epoch, "epochs": state.epoch, "wall_s": wall,
                   "valid_recall@20": state.best_valid.get("recall@20"),
                   "test_recall@20": state.best_test.get("recall@20"), "test_ndcg@20": state.best_test.get("ndcg@20")}
            for split in ("cold", "cold_knn"):
                if isinstance(results.get(split), dict):
                    row[f"{split}_recall@20"] = results[split].get("recall@20")
                    row[f"{split}_ndcg@20"] = results[split].get("ndcg@20")
            rows.append(row)
            extra = "".join(f"  {k} {v:.4f}" for k, v in row.items() if k.startswith("cold") and v is not None)
            print(f"{m:>10} seed {seed}: test R@20 {row['test_recall@20']:.4f} N@20 {row['test_ndcg@20']:.4f} "
                  f"(valid {row['valid_recall@20']:.4f}, best epoch {state.best_epoch} of {state.epoch}, "
                  f"{wall:.0f}s){extra}", flush=True)
    return {"what": "quality", "data": a.data, "overrides": a.overrides, "rows": rows}


# ------------------------------------------------------------------------------------------ valid-users
def replay(curve: list[dict[str, dict[str, float]]], metric: str, patience: int) -> Any:
    """The Trainer's early stopping over per-epoch results ``{"valid": ..., "test": ...}``."""
    from raymmrec.train.loop import TrainState, update_best

    state = TrainState()
    for ep, results in enumerate(curve):
        update_best(state, ep, results, metric, patience)
        state.epoch = ep + 1
        if state.stopped_early:
            break
    return state


def valid_users(a: argparse.Namespace) -> dict[str, Any]:
    from raymmrec.data import DEFAULT_SEED
    from raymmrec.eval import Evaluator, joint_metric_rows
    from raymmrec.train.build import ranked_items
    from raymmrec.train.loop import Callback, TrainState, update_best

    spec = make_spec(a, a.device)
    spec.eval.valid_users = a.valid_users
    spec.train.epochs, spec.train.patience, spec.train.eval_every = a.epochs, a.epochs + 1, 1
    metric = spec.eval.valid_metric
    device = resolve_device(a.device)
    t0 = time.perf_counter()
    pieces = build(spec, device=device, release_features=True)
    data = pieces.data
    full = Evaluator(data.n_items, data.seen(), data.valid, ks=tuple(spec.eval.ks),
                     max_batch_elems=spec.eval.max_batch_elems, device=device, candidates=ranked_items(data))
    sample = pieces.evaluators["valid"].users.cpu()
    users = full.users.cpu()
    n_valid = users.numel()
    print(f"{pieces.summary}\n{spec.method}: {n_valid} validation users, sampled N={a.valid_users} -> "
          f"{sample.numel()} (seed {DEFAULT_SEED}); {len(pieces.evaluators['test'].users)} test users; "
          f"setup {time.perf_counter() - t0:.1f}s", flush=True)
    run_eval = local_evaluate(pieces.evaluators)
    per_user: list[torch.Tensor] = []
    eval_s: list[float] = []
    test_ev = pieces.evaluators["test"]
    test_users = test_ev.users
    row_of = torch.full((int(torch.cat([users, test_users.cpu()]).max()) + 1,), -1, dtype=torch.int64)
    row_of[users] = torch.arange(n_valid)
    in_sample_all = torch.isin(users, sample)
    checks: list[float] = []

    def one_pass(score_fn) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: ANN001
        """Every validation user's metric rows and the test metrics, ranking each user once (valid and
        test rank alike: the same training items masked)."""
        rows = torch.empty(n_valid, len(full.names), dtype=torch.float64)
        test_sums = torch.zeros(len(test_ev.names), dtype=torch.float64)
        for j, ub, r in joint_metric_rows([full, test_ev], score_fn, [full.users, test_users]):
            if j == 0:
                rows[row_of[ub.cpu()]] = r.cpu()
            else:
                test_sums += r.sum(0).cpu()
        return rows, test_ev.finalize(test_sums, test_users.numel())

    def evaluate(model):  # every validation user's metrics; the run's own evaluation checked every 10th time
        t = time.perf_counter()
        rows, test = one_pass(model.scorer())
        out = {"valid": dict(zip(full.names, rows[in_sample_all].mean(0).tolist())), "test": test}
        if len(per_user) % 10 == 0:  # the real path (local_evaluate over the run's evaluators) agrees
            real = run_eval(model)
            checks.append(max(abs(real[sp][k] - out[sp][k]) for sp in ("valid", "test") for k in out[sp]))
            if checks[-1] > 1e-9:
                raise AssertionError(f"local_evaluate differs from the one-pass metrics by {checks[-1]}")
        per_user.append(rows)
        eval_s.append(time.perf_counter() - t)
        return out

    live = {"full": TrainState(), "sampled": TrainState()}
    names = full.names

    class Progress(Callback):
        def on_epoch_end(self, trainer, state, logs) -> None:  # noqa: ANN001
            pu = per_user[-1][:, names.index(metric)]
            valid = {"full": {metric: float(pu.mean())}, "sampled": {metric: logs["valid/" + metric]}}
            for k, s in live.items():
                if not s.stopped_early:
                    update_best(s, int(logs["epoch"]), {"valid": valid[k]}, metric, a.patience)
            if a.stop and all(s.stopped_early for s in live.values()):
                state.stopped_early = True  # both early stoppings are over: no need to train on
            print(f"  epoch {logs['epoch']:.0f}: train {logs['time/train_s']:.1f}s eval {eval_s[-1]:.1f}s  "
                  f"valid {metric} full {float(pu.mean()):.4f} sampled {logs['valid/' + metric]:.4f}  "
                  f"test recall@20 {logs.get('test/recall@20', float('nan')):.4f}", flush=True)

    trainer = make_trainer(pieces, evaluate, [Progress()])
    trainer.lazy_splits = ()  # test ranked at every epoch, not only at new bests: both replays need it
    state = trainer.fit()
    col = names.index(metric)
    in_sample = torch.isin(users, sample)
    curve_full, curve_run = [], []
    for e, h in enumerate(state.history):
        test = {k[5:]: v for k, v in h.items() if k.startswith("test/")}
        logged = {k[6:]: v for k, v in h.items() if k.startswith("valid/")}
        mine = dict(zip(names, per_user[e][in_sample].mean(0).tolist()))
        if abs(logged[metric] - mine[metric]) > 1e-9:
            raise AssertionError(f"epoch {e}: logged sampled {metric} {logged[metric]} != sample mean {mine[metric]}")
        curve_run.append({"valid": logged, "test": test})
        curve_full.append({"valid": dict(zip(names, per_user[e].mean(0).tolist())), "test": test})

    def outcome(curve: list[dict]) -> dict:
        s = replay(curve, metric, a.patience)
        return {"best_epoch": s.best_epoch, "stopped_after": s.epoch if s.stopped_early else None,
                "test_recall@20": s.best_test.get("recall@20"), "test_ndcg@20": s.best_test.get("ndcg@20")}

    def draw_curve(seed: int, n: int) -> tuple[list[dict], torch.Tensor]:
        full.users = users.clone()
        keep = torch.isin(users, full.sample_users(n, seed).users.cpu())
        vals = torch.stack([pu[keep].mean(0) for pu in per_user])  # [epochs x M]
        return [{"valid": dict(zip(names, v.tolist())), "test": c["test"]} for v, c in zip(vals, curve_run)], vals

    ref = outcome(curve_full)
    got = outcome(curve_run)
    draws = [outcome(draw_curve(seed, a.valid_users)[0]) for seed in range(1, a.draws + 1)]
    full_curve = torch.tensor([c["valid"][metric] for c in curve_full], dtype=torch.float64)
    track = {}
    for n in [int(x) for x in a.track.split(",") if x]:
        if n >= n_valid:
            track[n] = {"note": f"N >= {n_valid} validation users: every user, difference 0"}
            continue
        mads = [float((draw_curve(seed, n)[1][:, col] - full_curve).abs().mean())
                for seed in [DEFAULT_SEED, *range(1, a.draws + 1)]]
        var = float(per_user[-1][:, col].var(unbiased=False))
        se = (var / n * (n_valid - n) / (n_valid - 1)) ** 0.5
        track[n] = {"mad_median": statistics.median(mads), "mad_max": max(mads), "expected_se_last_epoch": se}

    def line(name: str, o: dict) -> str:
        return (f"  {name:<28} best epoch {o['best_epoch']:>4}  stopped after {o['stopped_after'] or '-':>4}  "
                f"test recall@20 {o['test_recall@20']:.4f}  ndcg@20 {o['test_ndcg@20']:.4f}")

    print(f"\n{len(state.history)} epochs trained; evaluation median {statistics.median(eval_s):.1f}s; the run's "
          f"own evaluation (local_evaluate: sampled validation, full test) checked {len(checks)} times, max "
          f"difference {max(checks):.1e}; early stopping replayed with patience {a.patience} on {metric}")
    print(line("full validation", ref))
    print(line(f"valid_users={a.valid_users} (seed {DEFAULT_SEED})", got))
    d_rec = [abs(o["test_recall@20"] - ref["test_recall@20"]) for o in draws]
    d_ep = [abs(o["best_epoch"] - ref["best_epoch"]) for o in draws]
    if draws:
        print(f"  {a.draws} more draws of N={a.valid_users}: |test recall@20 - full's| median "
              f"{statistics.median(d_rec):.4f} max {max(d_rec):.4f}; |best epoch - full's| median "
              f"{statistics.median(d_ep)} max {max(d_ep)}")
    for n, t in track.items():
        if "note" in t:
            print(f"  tracking N={n}: {t['note']}")
        else:
            print(f"  tracking N={n}: mean |sampled - full| {metric} per epoch: median {t['mad_median']:.5f} "
                  f"max {t['mad_max']:.5f} over {a.draws + 1} draws (expected s.e. {t['expected_se_last_epoch']:.5f})")
    return {"data": a.data, "method": spec.method, "valid_users": a.valid_users, "n_valid_users": n_valid,
            "epochs": len(state.history), "patience": a.patience, "metric": metric, "full": ref, "sampled": got,
            "draws": draws, "track": track, "valid_curve_full": full_curve.tolist(),
            "valid_curve_sampled": [c["valid"][metric] for c in curve_run]}


# ------------------------------------------------------------------------------------------- checkpoint
def checkpoint(a: argparse.Namespace) -> dict[str, Any]:
    import shutil

    from raymmrec.train.checkpoint import restore, save_checkpoint
    from raymmrec.train.loop import TrainState

    from raymmrec.config import load_spec

    spec = load_spec(a.method, overrides=[f"data.source={a.data}", "train.device=cpu", *a.overrides])  # every modality
    pieces = build(spec, device=torch.device("cpu"), release_features=True)
    trainer = make_trainer(pieces, lambda model: {}, [])
    trainer.run_epoch(0)
    run = tempfile.mkdtemp(prefix="bench-ckpt-")
    try:
        saves = [timed(lambda: save_checkpoint(run, trainer, TrainState(epoch=i + 1), pieces.config))[1]  # noqa: B023
                 for i in range(a.repeats)]
        reads = [timed(lambda: restore(pieces, run, "benchmark"))[1] for _ in range(a.repeats)]
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(run) for f in files)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print(f"{a.method} on {a.data}: checkpoint {size / 1e6:.1f} MB; save median {statistics.median(saves) * 1e3:.0f} ms, "
          f"restore median {statistics.median(reads) * 1e3:.0f} ms (of {a.repeats} each)")
    return {"what": "checkpoint", "method": a.method, "data": a.data, "bytes": size, "save_s": stats(saves),
            "restore_s": stats(reads), "save_all_s": saves, "restore_all_s": reads}


# ------------------------------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p, sub = parser_with_modes("bench_train", __doc__)
    e = sub.add_parser("epoch", help="one method's training epoch and evaluation, timed in parts")
    add_run_arguments(e)
    e.add_argument("--epochs-measured", type=int, default=5, help="timed training epochs")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--eval-repeats", type=int, default=5, help="timed full evaluations (after one untimed)")
    lfm2k = str(LFM2K)
    c = sub.add_parser("compare", help="methods' epochs in rounds, against the first; --floor: dense FLOPs")
    c.add_argument("--data", default=lfm2k)
    c.add_argument("--methods", default="bm3,cm3,lirdrec")
    c.add_argument("--epochs", type=int, default=5, help="timed rounds")
    c.add_argument("--floor", action="store_true",
                   help="also count each method's dense matrix-product FLOPs per epoch and their time at this "
                        "machine's measured product rate (a lower bound on the epoch)")
    q = sub.add_parser("quality", help="methods trained to early stopping per seed: test (and cold) metrics")
    q.add_argument("--data", default=lfm2k)
    q.add_argument("--methods", default="bm3,cm3,lirdrec")
    q.add_argument("--seeds", default="0", help="comma-separated training seeds")
    v = sub.add_parser("valid-users", help="sampled-user validation against full validation on one training run")
    add_run_arguments(v)
    v.set_defaults(method="lightgcn", warmup=0)
    v.add_argument("--valid-users", type=int, required=True, help="N: validation users sampled (eval.valid_users)")
    v.add_argument("--epochs", type=int, default=60, help="epochs trained (the cap of both replays)")
    v.add_argument("--patience", type=int, default=20, help="train.patience of the replayed early stopping")
    v.add_argument("--draws", type=int, default=10, help="more samples of N users (seeds 1..draws)")
    v.add_argument("--track", default="1000,10000", help="sample sizes whose tracking of the full metric is reported")
    v.add_argument("--device", default="cpu")
    v.add_argument("--no-stop", dest="stop", action="store_false",
                   help="train all --epochs (default: stop once full and sampled early stopping have both stopped; "
                        "the extra draws are then cut there too)")
    k = sub.add_parser("checkpoint", help="writing and reading a run's checkpoint after one epoch")
    k.add_argument("--method", default="bm3")
    k.add_argument("--data", required=True)
    k.add_argument("--repeats", type=int, default=7)
    for s in (c, q, k):
        s.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p


MODES = {"epoch": epoch, "compare": compare, "quality": quality, "valid-users": valid_users, "checkpoint": checkpoint}


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.what in ("compare", "quality", "checkpoint"):
        check_data(a.data)
    env = {} if a.what == "epoch" else print_environment()  # epoch prints it with the device it runs on
    res = MODES[a.what](a)
    emit_figures(env, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
