"""MMRecUn against the original model and Gold (retrained from scratch): three request kinds at several sizes.

    python -m benchmarks.bench_unlearning --run runs/bm3-lfm2k            # a trained run folder
    python -m benchmarks.bench_unlearning --method bm3 --data ../shared/data/lfm2k   # train it first
    python -m benchmarks.bench_unlearning --run ... --kinds user --fractions 0.05 epochs=5 reset=none
    python -m benchmarks.bench_unlearning --run ... --kinds user --fractions 0.05 --seeds 10,11,12,13,14

For each seed (``--seeds``, else ``--seed``), kind (user-, item-, interaction-wise) and fraction (of
the users or items with training interactions, or of the training interactions), draws a request,
runs :func:`raymmrec.unlearning.unlearn` with Gold in this process and collects its report. Prints one
table per request, a summary table, a per-draw table (epochs, why unlearning stopped, test and forget
figures against Gold's in %), writes ``summary.json`` and ``unlearning.png`` (forget-set and test
Recall@20, membership AUC and seconds against the request size, unlearned vs original vs Gold) to
``--out``; the last line printed is the summary as JSON. ``key=value`` arguments are MMRecUn's
options (:class:`raymmrec.unlearning.UnlearnOptions`). Gold depends on the request only, not on the
options: its figures are kept in ``--out``/gold_cache.json (keyed by the run and the request) and
reused by later invocations, so options can be compared on the same draws without retraining.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import LFM2K, emit, print_environment
from raymmrec.config import load_spec, parse_value, spec_from_dict
from raymmrec.data.forget import ForgetRequest
from raymmrec.train.build import load_data
from raymmrec.unlearning import unlearn

FIGURES = ("forget recall@20", "test recall@20", "membership_auc", "auc_vs_unseen", "seconds")


def draw_request(data, kind: str, fraction: float, seed: int) -> ForgetRequest:
    rng = np.random.default_rng(seed)
    tr = data.train
    if kind == "user":
        pool = np.unique(tr.users)
        return ForgetRequest.of(users=rng.choice(pool, max(1, round(fraction * pool.size)), replace=False))
    if kind == "item":
        pool = np.unique(tr.items)
        return ForgetRequest.of(items=rng.choice(pool, max(1, round(fraction * pool.size)), replace=False))
    rows = rng.choice(len(tr), max(1, round(fraction * len(tr))), replace=False)
    return ForgetRequest.of(users=tr.users[rows], items=tr.items[rows])


def plot(rows: list[dict], path: Path, dpi: int = 110) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in rows}, key=["user", "item", "interaction"].index)
    fig, axes = plt.subplots(len(kinds), len(FIGURES), figsize=(4 * len(FIGURES), 3.2 * len(kinds)), squeeze=False)
    for a, kind in zip(axes, kinds):
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rs]
        for ax, fig_name in zip(a, FIGURES):
            for model, style in (("original", "k^:"), ("unlearned", "o-"), ("gold", "s--")):
                ys = [r[model].get(fig_name) if r.get(model) else None for r in rs]
                if any(y is not None for y in ys):
                    ax.plot(x, [np.nan if y is None else y for y in ys], style, label=model)
            ax.set_title(f"{kind}-wise: {fig_name}", fontsize=9)
            if fig_name == "seconds":
                ax.set_yscale("log")
            ax.set_xlabel("request size (% of users / items / interactions)", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def gold_key(run: str, req: ForgetRequest) -> str:
    """Gold's cache key: the run folder and the request's contents (Gold depends on nothing else)."""
    digest = hashlib.sha256(req.to_frame().to_csv(index=False).encode()).hexdigest()[:16]
    return f"{Path(run).resolve()}|{req.kind}|{digest}"


def rel(r: dict, key: str) -> str:
    """Unlearned against Gold on ``key``, in % (positive: above Gold)."""
    g, u = r["gold"][key], r["unlearned"][key]
    return "-" if not g else f"{100 * (u - g) / g:+.1f} %"


def print_per_draw(rows: list[dict]) -> None:
    print("\n| seed | request | epochs run / kept | stopped | test R@20 unl / gold | vs Gold | test N@20 unl / gold "
          "| vs Gold | forget R@20 unl / gold | vs Gold |")
    print("|---:|---|---|---|---|---:|---|---:|---|---:|")
    for r in rows:
        u, g = r["unlearned"], r["gold"]
        why = r["stop_reason"] + (" (nothing forgotten beyond the reset)" if r.get("warning") else "")
        print(f"| {r['seed']} | {r['kind']} {r['fraction']:.0%} | {r['epochs_run']} / {r['epochs_kept']} | "
              f"{why} | {u['test recall@20']:.4f} / {g['test recall@20']:.4f} | {rel(r, 'test recall@20')} | "
              f"{u['test ndcg@20']:.4f} / {g['test ndcg@20']:.4f} | {rel(r, 'test ndcg@20')} | "
              f"{u['forget recall@20']:.4f} / {g['forget recall@20']:.4f} | {rel(r, 'forget recall@20')} |")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_unlearning", description=__doc__.split("\n")[0])
    p.add_argument("--run", help="trained run folder (else trains --method on --data first)")
    p.add_argument("--method", default="bm3")
    p.add_argument("--data", default=str(LFM2K))
    p.add_argument("--kinds", default="user,item,interaction")
    p.add_argument("--fractions", default="0.01,0.05,0.10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", help="comma-separated draw seeds (overrides --seed)")
    p.add_argument("--out", default="runs/unlearning-bench")
    p.add_argument("--no-gold", action="store_true")
    p.add_argument("options", nargs="*", help="MMRecUn options, key=value")
    a = p.parse_args()
    print_environment()
    opts = dict(kv.split("=", 1) for kv in a.options)
    opts = {k: parse_value(v) for k, v in opts.items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = a.run
    if run is None:
        from raymmrec.train.run import run as train_run

        spec = load_spec(a.method, overrides=[f"data.source={a.data}", f"output_dir={out}",
                                              f"run_name={a.method}-{Path(a.data).name}"])
        train_run(spec, progress=False)
        run = str(out / spec.resolved_run_name)
    data = load_data(spec_from_dict(json.loads((Path(run) / "config.json").read_text())))
    rows = []
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    cache_path = out / "gold_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for seed in seeds:
            for kind in a.kinds.split(","):
                for frac in (float(f) for f in a.fractions.split(",")):
                    req = draw_request(data, kind, frac, seed)
                    key = gold_key(run, req)
                    want_gold = not a.no_gold and key not in cache
                    rep = unlearn(run, req, options=opts, output_dir=tmp, gold=want_gold, progress=False)
                    if want_gold:
                        cache[key] = rep["gold"]
                        tmp_cache = cache_path.with_suffix(".tmp")
                        tmp_cache.write_text(json.dumps(cache, indent=1))
                        tmp_cache.replace(cache_path)
                    elif not a.no_gold:
                        rep["gold"] = cache[key]
                        rep["speedup"] = rep["gold"]["seconds"] / rep["unlearned"]["seconds"]
                    print(f"\n## seed {seed}, {kind}-wise, {frac:.0%}\n\n{rep['table']}\n", flush=True)
                    rows.append({"seed": seed, "kind": kind, "fraction": frac, "epochs_run": rep["epochs_run"],
                                 "epochs_kept": rep.get("epochs_kept"), "stop_reason": rep.get("stop_reason"),
                                 "warning": rep.get("warning"),
                                 "history": rep["history"], "options": rep["options"], "speedup": rep["speedup"],
                                 **{m: rep[m] for m in ("original", "unlearned", "gold")}})
    print("\n| kind | size | forget R@20 orig / unl / gold | test R@20 orig / unl / gold | AUC orig / unl / gold "
          "| AUC vs unseen orig / unl / gold | top-50 exposure unl | s unl / gold |")
    print("|---|---:|---|---|---|---|---:|---|")
    f = lambda r, m, k: "-" if not r.get(m) or r[m].get(k) is None else f"{r[m][k]:.4f}"  # noqa: E731
    for r in rows:
        exp = r["unlearned"].get("top50_exposure")
        print(f"| {r['kind']} | {r['fraction']:.0%} | " + " | ".join(
            " / ".join(f(r, m, k) for m in ("original", "unlearned", "gold"))
            for k in ("forget recall@20", "test recall@20", "membership_auc", "auc_vs_unseen"))
            + f" | {'-' if exp is None else int(exp)} | {r['unlearned']['seconds']:.1f} / "
            + (f"{r['gold']['seconds']:.1f}" if r.get("gold") else "-") + " |")
    if not a.no_gold:
        print_per_draw(rows)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    if len(seeds) == 1:
        plot(rows, out / "unlearning.png")
    print(f"\nplot: {out / 'unlearning.png'}")
    emit(rows)


if __name__ == "__main__":
    main()
