"""Sampled-user validation (``eval.valid_users=N``) against full validation, on one training run.

    python benchmarks/bench_valid_users.py --method lightgcn --data synthetic:clothing --valid-users 10000 \
        [--epochs 60] [--patience 20] [--draws 10] [--track 1000,10000] [train.lr=0.001 ...]

Trains once with ``eval.valid_users=N`` (:func:`raymmrec.train.build.build`: validation ranks the
data-seed sample, test ranks everyone) with the run's own early stopping off, and at every epoch ranks
every user once, keeping *every* validation user's metrics and the test metrics; every 10th evaluation
the run's own ``local_evaluate`` is run too and must agree (sampled validation, full test). Training does not depend
on validation, so this one trajectory serves both: early stopping (the Trainer's own rule,
``train.patience`` evaluations without a strictly better ``eval.valid_metric``) is replayed on the full
validation curve and on the sampled one, and the report gives, for each, the best epoch and the test
Recall@20 / NDCG@20 at that epoch. ``--draws`` more samples of N users (seeds 1..draws, not the data
seed) give the spread of that outcome. ``--track`` sample sizes: the mean absolute difference over
epochs between a sample's validation metric and the full one (median over the draws), next to its
expected standard error sqrt(var/n (U-n)/(U-1)).

The logged (sampled) validation metric is checked against the mean of the sample's per-user rows at
every epoch. Prints a report and, last, one JSON line. Does not import Ray.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_train import add_common_arguments, make_spec  # noqa: E402
from raymmrec.data import DEFAULT_SEED  # noqa: E402
from raymmrec.eval import Evaluator  # noqa: E402
from raymmrec.train.build import build, local_evaluate, make_trainer, ranked_items, resolve_device  # noqa: E402
from raymmrec.train.loop import Callback, Trainer, TrainState  # noqa: E402


def replay(curve: list[dict[str, dict[str, float]]], metric: str, patience: int) -> TrainState:
    """The Trainer's early stopping over per-epoch results ``{"valid": ..., "test": ...}``."""
    state, rule = TrainState(), SimpleNamespace(valid_metric=metric, patience=patience)
    for epoch, results in enumerate(curve):
        Trainer._update_best(rule, state, epoch, results)  # type: ignore[arg-type]
        state.epoch = epoch + 1
        if state.stopped_early:
            break
    return state


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(p)
    p.set_defaults(method="lightgcn", warmup=0)
    p.add_argument("--valid-users", type=int, required=True, help="N: validation users sampled (eval.valid_users)")
    p.add_argument("--epochs", type=int, default=60, help="epochs trained (the cap of both replays)")
    p.add_argument("--patience", type=int, default=20, help="train.patience of the replayed early stopping")
    p.add_argument("--draws", type=int, default=10, help="more samples of N users (seeds 1..draws)")
    p.add_argument("--track", default="1000,10000", help="sample sizes whose tracking of the full metric is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-stop", dest="stop", action="store_false",
                   help="train all --epochs (default: stop once full and sampled early stopping have both stopped; "
                        "the extra draws are then cut there too)")
    a = p.parse_args(argv)
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
    test_users = test_ev.users.cpu()
    union = torch.unique(torch.cat([users, test_users]))
    row_of = torch.full((int(union.max()) + 1,), -1, dtype=torch.int64)
    row_of[users] = torch.arange(n_valid)
    in_sample_all = torch.isin(users, sample)
    checks: list[float] = []

    def one_pass(score_fn) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: ANN001
        """Every validation user's metric rows and the test metrics, ranking each user once (valid and
        test rank alike: the same training items masked)."""
        rows = torch.empty(n_valid, len(full.names), dtype=torch.float64)
        test_sums = torch.zeros(len(test_ev.names), dtype=torch.float64)
        for s in range(0, union.numel(), full.batch_users):
            ub = union[s:s + full.batch_users].to(device)
            top = full._block_top(full._scores(score_fn, ub), ub, full.kmax)
            ubc = ub.cpu()
            v, t = row_of[ubc] >= 0, torch.isin(ubc, test_users)
            if bool(v.any()):
                rows[row_of[ubc[v]]] = full._block_metrics(top[v.to(top.device)], ub[v.to(ub.device)]).cpu()
            if bool(t.any()):
                test_sums += test_ev._block_metrics(top[t.to(top.device)], ub[t.to(ub.device)]).sum(0).cpu()
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
    rule = SimpleNamespace(valid_metric=metric, patience=a.patience)

    class Progress(Callback):
        def on_epoch_end(self, trainer, state, logs) -> None:  # noqa: ANN001
            pu = per_user[-1][:, names.index(metric)]
            valid = {"full": {metric: float(pu.mean())}, "sampled": {metric: logs["valid/" + metric]}}
            for k, s in live.items():
                if not s.stopped_early:
                    Trainer._update_best(rule, s, int(logs["epoch"]), {"valid": valid[k]})  # type: ignore[arg-type]
            if a.stop and all(s.stopped_early for s in live.values()):
                state.stopped_early = True  # both early stoppings are over: no need to train on
            print(f"  epoch {logs['epoch']:.0f}: train {logs['time/train_s']:.1f}s eval {eval_s[-1]:.1f}s  "
                  f"valid {metric} full {float(pu.mean()):.4f} sampled {logs['valid/' + metric]:.4f}  "
                  f"test recall@20 {logs.get('test/recall@20', float('nan')):.4f}", flush=True)

    names = full.names
    trainer = make_trainer(pieces, evaluate, [Progress()])
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
    out = {"data": a.data, "method": spec.method, "valid_users": a.valid_users, "n_valid_users": n_valid,
           "epochs": len(state.history), "patience": a.patience, "metric": metric, "full": ref, "sampled": got,
           "draws": draws, "track": track,
           "valid_curve_full": full_curve.tolist(),
           "valid_curve_sampled": [c["valid"][metric] for c in curve_run]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
