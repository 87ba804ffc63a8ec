"""How cost grows with the data: cost curves over sizes, and every phase of one large run.

    python -m benchmarks.bench_growth curves [--sizes 200k,1m,3m,10m] [--methods lightgcn,bm3] [--modes one]
        [--steps 16] [--eval-users 0] [--threads 0] [--out growth.png] [--results growth.jsonl] [--quick]
    python -m benchmarks.bench_growth phases [--data synthetic:users=1000000,items=100000,interactions=10000000]
        [--method lightgcn] [--batch 65536] [--steps 4] [--eval-users 20000] [--settings default,threshold]
        [--repeats 1]
    python -m benchmarks.bench_growth phases --serving [--data ...] [--eval-users 20000] [--settings held,default]

``curves``: a size ``N`` is ``synthetic:users=N/10,items=N/100,interactions=N`` (the shape of the largest
run, 1M users x 100k items x 10M interactions, scaled down). Every (size, method) runs in a fresh
subprocess, so its peak memory (``ru_maxrss``) is that size's alone; the item-item kNN graph of each
size (the prepared input of CM3 and LIRDRec: ``raymmrec.prepared``'s ``item_knn`` builder, k = 10,
text and image features) is built in a subprocess of its own. Per size it prints:

* ``gen_s``: generating the dataset (``raymmrec.data.load_dataset``);
* ``adj_s``: building the normalised user-item graph (the ``norm_adj`` prepared input, uncached);
* ``knn_s``: building the item-item kNN graph (``item_knn``, uncached);
* ``epoch_s``: one training epoch of ``--steps`` steps: the batch is ``ceil(train pairs / steps)``,
  so it grows with the data, as the full-graph propagation of every step requires (a fixed batch
  makes an epoch cost grow with the square of the interactions: steps x propagation);
* ``eval_s``: one full evaluation (validation and test ranked together, every user, exact and in
  blocks); with ``--eval-users M`` only M users per split are ranked and the time is scaled to all
  users (the cost of a block of users does not depend on which users it holds), marked ``~``;
* ``peak_GiB``: the subprocess's peak resident memory.

Wall seconds and CPU seconds (``process_time``, all threads) are both printed: the second is the
steadier figure on a shared machine. Last come the fitted growth exponents (least squares of
log(time) on log(interactions); evaluation also against log(users x items)) and the JSON line;
``--out`` writes a PNG of the curves. Per size it also times one propagation layer alone (``spmm``:
nanoseconds per non-zero of the graph, one thread; ``--no-spmm`` skips it): the cost per non-zero rises
while the propagated table outgrows the caches, which is what bends the epoch curve at small sizes.
``--modes one,columns`` adds two column-sharded workers (one thread and one core each,
``bench_scaling shard``) at every size: their training epoch (the second of two) and each worker's peak
memory, against the one-process epoch. ``--results`` appends every finished measurement to a JSON-lines
file and a rerun reuses those it finds. ``--quick`` runs three small sizes (about one minute of CPU; under
two minutes of wall clock on an idle 2-core machine).

``phases``: each (setting, repeat) runs in a fresh subprocess (so its peak memory is its own) that
generates the data, builds the graph and the model, runs ``--steps`` training steps of ``--batch`` and
ranks ``--eval-users`` users of validation and test (the time scaled to every user). It prints wall and
CPU seconds per phase, the median step, the estimated epoch and full evaluation, and the peak RSS.
``--settings`` are values of ``RAYMMREC_MALLOC_TUNING`` (``raymmrec.allocator``): ``default`` (tables over
glibc's mmap ceiling keep their step buffers in the heap), ``threshold`` (the thresholds only: such tables
are mapped afresh every step) and ``0`` (no tuning). The steps and the evaluation run inside the training
loop's allocator block (``raymmrec.allocator.training_heap``), as in ``Trainer.fit``. Settings are
interleaved within a repeat, so drift in the machine's load hits all of them.

``phases --serving`` measures what a long-lived process that only loads and scores a model (``recommend``,
``evaluate``, a Serve replica) keeps of its memory. Each setting runs in a fresh subprocess that builds
the model (default data: a 400k-user table, 98 MiB, over glibc's 32 MiB mmap ceiling), ranks
``--eval-users`` users of validation and test, keeps one small reply (a 64 KiB tensor, allocated last),
frees the rest and prints its resident memory (RSS) at each point against its baseline before loading
(taken after a warm-up on ``synthetic:tiny`` has imported what loading and scoring need). Settings:
``held`` (the training settings entered before loading and kept, as ``build()`` left them before they
became the training loop's) and ``default`` (no change: what such a process does now).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (emit, emit_figures, median, module_command, parser_with_modes, peak_rss_mib,
                               print_environment, repeat_seconds, run_json, status_mib)

MODES = ("one", "columns")
AVAILABLE_MODES = ("one", "columns")
METHODS = ("lightgcn", "bm3")
QUICK_SIZES = "10k,30k,100k"
FULL_SIZES = "200k,1m,3m,10m"
DIMS = "text:64,image:128"
LARGEST = "synthetic:users=1000000,items=100000,interactions=10000000"
SERVING = "synthetic:users=400000,items=20000,interactions=1600000"  # a 400000 x 64 table: 97.7 MiB


# ------------------------------------------------------------------------------------------ curves
def parse_size(text: str) -> int:
    """``200k`` -> 200000, ``1m`` -> 1000000, ``3000000`` -> 3000000."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 10**3, "m": 10**6}.get(t[-1:], 1)
    body = t[:-1] if scale > 1 else t
    try:
        n = int(float(body) * scale)
    except ValueError:
        raise SystemExit(f"--sizes: {text!r} is not a size; expected e.g. 200k, 1m or 3000000") from None
    if n < 1000:
        raise SystemExit(f"--sizes: {text!r} is below 1000 interactions")
    return n


def source(n: int) -> str:
    return f"synthetic:users={n // 10},items={max(n // 100, 10)},interactions={n},dims={DIMS}"


def peak_gib() -> float:
    return peak_rss_mib() / 1024


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

# ----------------------------------------------------------------------------------------- curves' children
def child_train(n: int, method: str, steps: int, eval_users: int) -> dict[str, Any]:
    import torch

    from raymmrec.config import load_spec
    from raymmrec.prepared import prepare
    from raymmrec.train.build import build, check_spec, load_data, local_evaluate, make_trainer

    spec = load_spec(method, None, [f"data.source={source(n)}", "train.epochs=1", "train.batch_size=1"])
    with Clock() as gen:
        data = load_data(spec)
    batch = math.ceil(len(data.train) / steps)
    spec = load_spec(method, None, [f"data.source={source(n)}", "train.epochs=1", f"train.batch_size={batch}"])
    cls, cfg, _ = check_spec(spec)
    with Clock() as adj:  # the model's prepared inputs (the user-item graph), uncached
        prepared = prepare(data, cls.prepared_inputs(cfg), cache_dir=None)
    with Clock() as setup:
        pieces = build(spec, data=data, prepared=prepared, release_features=True)
    del prepared
    union_all = torch.unique(torch.cat([ev.users for ev in pieces.evaluators.values()])).numel()
    if eval_users:
        for ev in pieces.evaluators.values():
            ev.sample_users(eval_users, 0)
    union = torch.unique(torch.cat([ev.users for ev in pieces.evaluators.values()])).numel()
    times: dict[str, float] = {}

    def evaluate(model: Any) -> dict[str, dict[str, float]]:
        with Clock() as ev:
            out = local_evaluate(pieces.evaluators)(model)
        times["eval_s"], times["eval_cpu_s"] = ev.wall, ev.cpu
        return out

    trainer = make_trainer(pieces, evaluate, [])
    c0 = time.process_time()
    state = trainer.fit()
    fit_cpu = time.process_time() - c0
    h = state.history[0]
    scale = union_all / max(union, 1)
    return {
        "interactions": n, "users": data.n_users, "items": data.n_items, "method": method, "mode": "one",
        "train_pairs": len(data.train), "batch": batch, "steps": math.ceil(len(data.train) / batch),
        "gen_s": gen.wall, "gen_cpu_s": gen.cpu, "adj_s": adj.wall, "adj_cpu_s": adj.cpu,
        "setup_s": setup.wall, "epoch_s": h["time/train_s"], "epoch_cpu_s": fit_cpu - times["eval_cpu_s"],
        "eval_s": times["eval_s"] * scale, "eval_cpu_s": times["eval_cpu_s"] * scale,
        "eval_scaled": scale > 1.0, "eval_users_ranked": union, "eval_users_all": union_all,
        "test_recall@20": state.best_test.get("recall@20", float("nan")),
        "peak_GiB": peak_gib(), "threads": torch.get_num_threads(),
    }


def child_columns(n: int, method: str, steps: int) -> dict[str, Any]:
    """Two column-sharded workers (one thread, one core each) on the same data and batch: seconds per epoch
    (the second of two; the first warms up) and each worker's peak memory (``bench_scaling shard``)."""
    from benchmarks.bench_scaling import run_mode
    from raymmrec.config import load_spec
    from raymmrec.train.build import load_data

    spec = load_spec(method, None, [f"data.source={source(n)}", "train.epochs=1", "train.batch_size=1"])
    pairs = len(load_data(spec).train)
    batch = math.ceil(pairs / steps)
    r = run_mode("columns-2", method, source(n), 2, [f"train.batch_size={batch}"])
    return {"interactions": n, "method": method, "mode": "columns-2", "batch": batch, "epoch_s": r["s_per_epoch"],
            "peak_GiB": r["peak_rss_mb"] / 1024, "mb_per_step": r["mb_per_step"], "state_mb": r["state_mb"]}


def child_knn(n: int) -> dict[str, Any]:
    from raymmrec.data import load_dataset
    from raymmrec.prepared import prepare

    with Clock() as gen:
        data = load_dataset(source(n))
    with Clock() as knn:
        prepare(data, {"g": ("item_knn", {"k": 10})}, cache_dir=None)
    return {"interactions": n, "items": data.n_items, "gen_s": gen.wall, "knn_s": knn.wall, "knn_cpu_s": knn.cpu,
            "knn_peak_GiB": peak_gib()}


def child_spmm(n: int, repeats: int = 5) -> dict[str, Any]:
    """One propagation layer (CSR SpMM of the normalised user-item graph and a [nodes x 64] table), one
    thread: nanoseconds per non-zero, the cost that decides whether an epoch grows linearly."""
    import torch

    from raymmrec.data import load_dataset
    from raymmrec.prepared import prepare

    torch.set_num_threads(1)
    adj = prepare(load_dataset(source(n)), {"adj": ("norm_adj", {})}, cache_dir=None)["adj"]
    x = torch.randn(adj.shape[0], 64)
    secs = median(repeat_seconds(lambda: torch.sparse.mm(adj, x), repeats))
    nnz = adj.values().numel()
    return {"method": "spmm", "interactions": n, "nnz": nnz, "table_mb": x.numel() * 4 / 2**20,
            "spmm_s": secs, "spmm_ns_per_nnz": secs / nnz * 1e9}


def run_child(mode: str, args: list[str], threads: int = 0, env: dict[str, str] | None = None,
              label: str | None = None) -> dict[str, Any] | None:
    """``bench_growth <mode> --child args`` in a fresh process: its JSON line. A failure: ``{"error": ...}``,
    or, with ``label``, None after a line naming it."""
    env = dict(os.environ if env is None else env)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    out = run_json(module_command("bench_growth", mode, "--child", *args), env)
    if "error" in out and label is not None:
        print(f"{label}: FAILED {out['error']}", flush=True)
        return None
    return out


def exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of the least-squares line of log(y) on log(x); NaN with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else float("nan")


def fmt(v: Any, width: int = 9, digits: int = 2, mark: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{mark}{v:.{digits}f}".rjust(width)


def plot(rows: list[dict[str, Any]], knn: dict[int, dict[str, Any]], path: Path,
         spmm: dict[int, dict[str, Any]] | None = None, cols_rows: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5 if spmm else 4, figsize=(20.0 if spmm else 16.0, 3.6), squeeze=False)
    axes = list(axes[0])
    panels = [("epoch_cpu_s", "training epoch (CPU s; wall where marked)", "interactions"),
              ("eval_cpu_s", "full evaluation (CPU s)", "users x items"),
              ("peak_GiB", "peak memory (GiB)", "interactions"), (None, "prepared-input build (CPU s)", "interactions")]
    for ax, (key, label, xname) in zip(axes, panels):
        if key is None:
            for name, k, src in (("user-item graph", "adj_cpu_s", rows),
                                 ("item-item kNN", "knn_cpu_s", list(knn.values()))):
                pts = sorted({r["interactions"]: r[k] for r in src if k in r and r.get("method", "lightgcn") ==
                              "lightgcn"}.items())
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, linewidth=1.2)
        else:
            for m in sorted({r["method"] for r in rows}):
                pts = sorted((r["users"] * r["items"] if xname == "users x items" else r["interactions"], r[key])
                             for r in rows if r["method"] == m)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m, linewidth=1.2)
            if key == "peak_GiB" and cols_rows:
                for m in sorted({c["method"] for c in cols_rows}):
                    pts = sorted((c["interactions"], c["peak_GiB"]) for c in cols_rows if c["method"] == m)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", linestyle="--", linewidth=1.0,
                            label=f"{m} (per worker, 2 column workers)")
            if key == "epoch_cpu_s" and cols_rows:  # wall seconds of 2 workers against the one-process wall
                for m in sorted({c["method"] for c in cols_rows}):
                    pts = sorted((c["interactions"], c["epoch_s"]) for c in cols_rows if c["method"] == m)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", linestyle="--", linewidth=1.0,
                            label=f"{m} (wall s, 2 column workers)")
                for m in sorted({r["method"] for r in rows}):
                    pts = sorted((r["interactions"], r["epoch_s"]) for r in rows if r["method"] == m)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="^", linestyle=":", linewidth=1.0,
                            label=f"{m} (wall s, one process)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xname)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if spmm:
        ax = axes[4]
        pts = sorted((n, r["spmm_ns_per_nnz"]) for n, r in spmm.items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=1.2, color="tab:purple")
        for n, r in sorted(spmm.items()):
            ax.annotate(f"{r['table_mb']:.0f} MB", (n, r["spmm_ns_per_nnz"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -10))
        ax.set_xscale("log")
        ax.set_xlabel("interactions")
        ax.set_ylabel("SpMM ns per non-zero (64 columns)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")
        ax.set_title("one propagation layer (labels: table size)", fontsize=8)
    fig.suptitle("raymmrec: cost against data size (synthetic users=N/10, items=N/100; one process unless marked; "
                 "CPU seconds unless marked)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def curves(a: argparse.Namespace) -> dict[str, Any]:
    if a.child:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        kind, n = a.child[0], int(a.child[1])
        if kind == "knn":
            return child_knn(n)
        if kind == "spmm":
            return child_spmm(n)
        if kind.startswith("columns:"):
            return child_columns(n, kind.split(":", 1)[1], int(a.child[2]))
        return child_train(n, kind, int(a.child[2]), int(a.child[3]))

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown mode {bad[0]!r}; expected one of {', '.join(MODES)}")
    for m in modes:
        if m not in AVAILABLE_MODES:
            print(f"mode {m!r}: not available yet (only {', '.join(AVAILABLE_MODES)}); skipped", flush=True)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    sizes = sorted({parse_size(s) for s in (a.sizes or (QUICK_SIZES if a.quick else FULL_SIZES)).split(",")})
    steps = 4 if a.quick and a.steps == 16 else a.steps
    max_bm3 = parse_size(a.max_bm3) if a.max_bm3 else None
    max_knn = parse_size(a.max_knn) if a.max_knn else None

    print(f"sizes {sizes}; methods {methods}; {steps} steps per epoch", flush=True)
    rows: list[dict[str, Any]] = []
    knn: dict[int, dict[str, Any]] = {}
    spmm: dict[int, dict[str, Any]] = {}
    failed: list[str] = []
    cols_rows: list[dict[str, Any]] = []  # --modes columns: two column-sharded workers
    done: dict[tuple, dict[str, Any]] = {}
    if a.results and a.results.exists():
        for line in a.results.read_text().splitlines():
            r = json.loads(line)
            kind = r.get("method", "knn")
            if str(r.get("mode", "")).startswith("columns"):
                kind = f"columns:{kind}"
            done[(kind, r["interactions"], r.get("steps_asked", 0), r.get("eval_users_asked", 0))] = r

    def measured(key: tuple, child: list[str]) -> dict[str, Any]:
        if key in done:
            return done[key]
        r = run_child("curves", child, a.threads)
        if "error" not in r and a.results:
            r.update(steps_asked=key[2], eval_users_asked=key[3])
            with open(a.results, "a") as f:
                f.write(json.dumps(r) + "\n")
        return r
    def side(kind: str, n: int, store: dict[int, dict[str, Any]], line: Any) -> None:
        """A per-size measurement besides training (the item-kNN build, one SpMM layer)."""
        r = measured((kind, n, 0, 0), [kind, str(n)])
        if "error" in r:
            failed.append(f"{kind} at {n:,}: {r['error']}")
        else:
            store[n] = r
            print(f"{'item-knn' if kind == 'knn' else kind:<9} {n:>11,}  {line(r)}", flush=True)

    for n in sizes:
        for m in methods:
            if m == "bm3" and max_bm3 is not None and n > max_bm3:
                failed.append(f"bm3 at {n:,}: not run (--max-bm3 {a.max_bm3})")
                continue
            t0 = time.perf_counter()
            r = measured((m, n, steps, a.eval_users), [m, str(n), str(steps), str(a.eval_users)])
            if "error" in r:
                failed.append(f"{m} at {n:,}: {r['error']}")
                print(f"{m:<9} {n:>11,}  FAILED {r['error']}", flush=True)
                continue
            rows.append(r)
            print(f"{m:<9} {n:>11,}  epoch {r['epoch_s']:.1f}s  eval {r['eval_s']:.1f}s  peak {r['peak_GiB']:.2f} GiB"
                  f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
            if "columns" in modes:
                c = measured((f"columns:{m}", n, steps, 0), [f"columns:{m}", str(n), str(steps), "0"])
                if "error" in c:
                    failed.append(f"{m} columns-2 at {n:,}: {c['error']}")
                    continue
                cols_rows.append(c)
                print(f"{m:<9} {n:>11,}  columns-2: epoch {c['epoch_s']:.1f}s  peak per worker "
                      f"{c['peak_GiB']:.2f} GiB", flush=True)
        if not a.no_knn and max_knn is not None and n > max_knn:
            failed.append(f"knn at {n:,}: not run (--max-knn {a.max_knn})")
        elif not a.no_knn:
            side("knn", n, knn, lambda r: f"{r['knn_s']:.1f}s  peak {r['knn_peak_GiB']:.2f} GiB")
        if not a.no_spmm:
            side("spmm", n, spmm,
                 lambda r: f"{r['spmm_ns_per_nnz']:.2f} ns per non-zero (table {r['table_mb']:.0f} MB)")

    print()
    head = (f"{'method':<9}{'interactions':>13}{'users':>10}{'items':>8}{'batch':>8}{'gen_s':>8}{'adj_s':>8}"
            f"{'adj_cpu':>8}{'knn_s':>8}{'knn_cpu':>8}{'epoch_s':>9}{'ep_cpu':>8}{'eval_s':>10}{'ev_cpu':>10}"
            f"{'peak_GiB':>9}{'R@20':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mark = "~" if r["eval_scaled"] else ""
        k = knn.get(r["interactions"], {})
        print(f"{r['method']:<9}{r['interactions']:>13,}{r['users']:>10,}{r['items']:>8,}{r['batch']:>8,}"
              f"{fmt(r['gen_s'], 8, 1)}{fmt(r['adj_s'], 8, 2)}{fmt(r['adj_cpu_s'], 8, 2)}{fmt(k.get('knn_s'), 8, 1)}"
              f"{fmt(k.get('knn_cpu_s'), 8, 2)}{fmt(r['epoch_s'], 9, 1)}"
              f"{fmt(r['epoch_cpu_s'], 8, 1)}{fmt(r['eval_s'], 10, 1, mark)}{fmt(r['eval_cpu_s'], 10, 1, mark)}"
              f"{fmt(r['peak_GiB'], 9, 2)}{fmt(r['test_recall@20'], 7, 3)}")
    print("(~: evaluation timed on a sample of users and scaled to all; knn_s: item-item kNN graph, k=10)")
    print()
    exps: dict[str, dict[str, float]] = {}
    for m in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == m]
        x = [r["interactions"] for r in mine]
        ui = [r["users"] * r["items"] for r in mine]
        exps[m] = {
            "epoch_s~interactions": exponent(x, [r["epoch_s"] for r in mine]),
            "epoch_cpu_s~interactions": exponent(x, [r["epoch_cpu_s"] for r in mine]),
            "eval_s~users*items": exponent(ui, [r["eval_s"] for r in mine]),
            "eval_cpu_s~users*items": exponent(ui, [r["eval_cpu_s"] for r in mine]),
            "eval_s~interactions": exponent(x, [r["eval_s"] for r in mine]),
            "peak_GiB~interactions": exponent(x, [r["peak_GiB"] for r in mine]),
            "adj_s~interactions": exponent(x, [r["adj_s"] for r in mine]),
            "adj_cpu_s~interactions": exponent(x, [r["adj_cpu_s"] for r in mine]),
            "gen_s~interactions": exponent(x, [r["gen_s"] for r in mine]),
        }
    if knn:
        exps["item-knn"] = {"knn_s~items": exponent([k["items"] for k in knn.values()],
                                                    [k["knn_s"] for k in knn.values()]),
                            "knn_cpu_s~items": exponent([k["items"] for k in knn.values()],
                                                        [k["knn_cpu_s"] for k in knn.values()])}
    if spmm:
        print("one propagation layer (CSR SpMM, [nodes x 64] float table, one thread, median of 5):")
        for n, r in sorted(spmm.items()):
            print(f"  {n:>11,}  {r['nnz']:>11,} non-zeros  table {r['table_mb']:>6.0f} MB  {r['spmm_s'] * 1e3:>8.1f} ms  "
                  f"{r['spmm_ns_per_nnz']:.2f} ns per non-zero")
        exps["spmm"] = {"spmm_s~interactions": exponent([r["interactions"] for r in spmm.values()],
                                                         [r["spmm_s"] for r in spmm.values()])}
    for m in sorted({c["method"] for c in cols_rows}):
        mine = [c for c in cols_rows if c["method"] == m]
        one = {r["interactions"]: r for r in rows if r["method"] == m}
        print(f"{m}, 2 column-sharded workers (one thread each; 'one' used torch's threads):")
        for c in mine:
            base = one.get(c["interactions"])
            ratio = f"{base['epoch_s'] / c['epoch_s']:.2f}x" if base else "-"
            print(f"  {c['interactions']:>11,}  epoch {c['epoch_s']:.1f}s ({ratio} of one process)  peak per worker "
                  f"{c['peak_GiB']:.2f} GiB  {c['mb_per_step']:.2f} MB/step")
        exps[f"{m} columns-2"] = {"epoch_s~interactions": exponent([c["interactions"] for c in mine],
                                                                   [c["epoch_s"] for c in mine]),
                                  "peak_GiB~interactions": exponent([c["interactions"] for c in mine],
                                                                    [c["peak_GiB"] for c in mine])}
    print("fitted growth exponents (log-log least squares):")
    for m, e in exps.items():
        print(f"  {m:<9} " + "  ".join(f"{k} {v:.2f}" for k, v in e.items() if math.isfinite(v)))
    for f in failed:
        print(f"not measured: {f}")
    if a.out and rows:
        plot(rows, knn, a.out, spmm, cols_rows)
        print(f"wrote {a.out}")
    return {"rows": rows, "columns": cols_rows, "knn": list(knn.values()), "spmm": list(spmm.values()),
            "exponents": exps, "failed": failed, "steps": steps, "modes": [m for m in modes if m in AVAILABLE_MODES]}


# ------------------------------------------------------------------------------------------ phases
def child(data: str, method: str, batch: int, steps: int, eval_users: int) -> dict[str, Any]:
    import torch

    from raymmrec.allocator import training_heap
    from raymmrec.config import load_spec
    from raymmrec.eval.evaluator import joint_metric_sums
    from raymmrec.prepared import prepare
    from raymmrec.train.build import batch_fn, build, check_spec, load_data

    phases: dict[str, dict[str, float]] = {}

    def clock(name: str, fn):  # noqa: ANN001, ANN202
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        phases[name] = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                        "peak_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        return out

    spec = load_spec(method, None, [f"data.source={data}", f"train.batch_size={batch}", "train.epochs=1"])
    data_ = clock("generate", lambda: load_data(spec))
    cls, cfg, _ = check_spec(spec)
    prepared = clock("graph", lambda: prepare(data_, cls.prepared_inputs(cfg), cache_dir=None))
    # clock() calls the lambda before the `del` below, which pyflakes reads as leaving the name undefined
    p = clock("setup", lambda: build(spec, data=data_, prepared=prepared, release_features=True))  # noqa: F821
    del prepared
    it = iter(batch_fn(p)(0))
    model = p.model
    model.train()

    def step() -> None:
        b = next(it)
        p.optimizer.zero_grad(set_to_none=True)
        out = p.objective(model(b), b, p.ctx)
        out.total.backward()
        p.optimizer.step()

    # what Trainer.fit enters around its epochs on CPU (tables over the mmap ceiling: blocks from the heap)
    with training_heap(max(q.numel() * q.element_size() for q in model.parameters())):
        for s in range(steps):
            clock(f"step {s}", step)
        evs = list(p.evaluators.values())
        every = torch.unique(torch.cat([e.users for e in evs])).numel()
        if eval_users:
            for e in evs:
                e.sample_users(eval_users, 0)
        ranked = torch.unique(torch.cat([e.users for e in evs])).numel()
        model.eval()
        with torch.no_grad():
            clock("evaluate", lambda: joint_metric_sums(evs, model.scorer()))
    step_names = [k for k in phases if k.startswith("step ")]
    per_step = statistics.median(phases[k]["wall_s"] for k in step_names[1:] or step_names)
    n_steps = math.ceil(len(data_.train) / batch)
    return {"phases": phases, "step_s": per_step, "steps_per_epoch": n_steps, "epoch_s_est": per_step * n_steps,
            "eval_s_est": phases["evaluate"]["wall_s"] * every / ranked, "users_ranked": ranked,
            "users_all": every, "threads": torch.get_num_threads(),
            "peak_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def serving_child(data: str, method: str, eval_users: int, setting: str) -> dict[str, Any]:
    import gc

    import torch

    from raymmrec.allocator import training_heap
    from raymmrec.config import load_spec
    from raymmrec.eval.evaluator import joint_metric_sums
    from raymmrec.train.build import build

    spec = load_spec(method, None, [f"data.source={data}", "train.device=cpu"])
    warm = build(load_spec(method, None, ["data.source=synthetic:tiny", "train.device=cpu"]))
    joint_metric_sums(list(warm.evaluators.values()), warm.model.scorer())
    del warm  # the modules that loading and scoring import belong to the baseline
    gc.collect()
    held = []  # the settings as build() used to leave them: thresholds before loading, large blocks after
    if setting == "held":
        held.append(training_heap(0))
        held[-1].__enter__()
    base = status_mib()
    t0 = time.perf_counter()
    p = build(spec, release_features=True)
    largest = max(q.numel() * q.element_size() for q in p.model.parameters())
    if setting == "held":
        held.append(training_heap(largest))
        held[-1].__enter__()
    loaded = status_mib()
    evs = list(p.evaluators.values())
    if eval_users:
        for e in evs:
            e.sample_users(eval_users, 0)
    p.model.eval()
    with torch.no_grad():
        metrics = joint_metric_sums(evs, p.model.scorer())
    scored = status_mib()
    reply = torch.zeros(16384)  # 64 KiB allocated after the work and kept, as a long-lived process would
    del p, evs, metrics
    gc.collect()
    freed = status_mib()
    return {"setting": setting, "largest_MiB": largest / 2**20, "base_MiB": base, "loaded_MiB": loaded,
            "scored_MiB": scored, "freed_MiB": freed, "kept_MiB": freed - base, "seconds": time.perf_counter() - t0,
            "reply": reply.numel(), "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def serving(a: argparse.Namespace, settings: list[str]) -> dict[str, Any]:
    data = a.data if a.data != LARGEST else SERVING
    print(f"serving-like process: {a.method} on {data}; {a.eval_users or 'all'} users ranked per split",
          flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for r in range(a.repeats):
        for s in settings:
            env = {k: v for k, v in os.environ.items() if k != "RAYMMREC_MALLOC_TUNING"}
            out = run_child("phases", ["--serving", "--settings", s, "--data", data, "--method", a.method,
                                       "--eval-users", str(a.eval_users)], env=env, label=f"{s} (repeat {r})")
            if out is not None:
                runs[s].append(out)
    print(f"\n{'setting':<10}{'largest table MiB':>19}{'loaded':>9}{'scored':>9}{'freed':>9}{'peak':>9}"
          f"{'runs':>6}   (MiB of RSS over the baseline before loading)")
    med: dict[str, dict[str, float]] = {}
    for s, rs in runs.items():
        if not rs:
            continue
        med[s] = {k: statistics.median(r[k] - (r["base_MiB"] if k.endswith("ed_MiB") or k == "peak_MiB" else 0)
                                       for r in rs)
                  for k in ("largest_MiB", "loaded_MiB", "scored_MiB", "freed_MiB", "peak_MiB")}
        m = med[s]
        print(f"{s:<10}{m['largest_MiB']:>19.1f}{m['loaded_MiB']:>9.0f}{m['scored_MiB']:>9.0f}{m['freed_MiB']:>9.0f}"
              f"{m['peak_MiB']:>9.0f}{len(rs):>6}")
    return {"medians": med, "runs": runs}


def phases(a: argparse.Namespace) -> dict[str, Any]:
    if a.steps < 2:
        raise SystemExit("--steps: at least 2 (the first is a warm-up)")
    known = ("held", "default") if a.serving else ("default", "threshold", "0")
    settings = [s.strip() for s in (a.settings or ",".join(known[:2])).split(",") if s.strip()]
    bad = [s for s in settings if s not in known]
    if bad:
        raise SystemExit(f"--settings: unknown {bad[0]!r}; expected {', '.join(known)}")
    if a.child:
        return (serving_child(a.data, a.method, a.eval_users, settings[0]) if a.serving
                else child(a.data, a.method, a.batch, a.steps, a.eval_users))
    if a.serving:
        return serving(a, settings)

    print(f"{a.method} on {a.data}; batch {a.batch}; {a.steps} steps; {a.eval_users or 'all'} users ranked",
          flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for r in range(a.repeats):
        for s in settings:
            env = dict(os.environ)
            env.pop("RAYMMREC_MALLOC_TUNING", None)
            if s != "default":
                env["RAYMMREC_MALLOC_TUNING"] = s
            out = run_child("phases", ["--data", a.data, "--method", a.method, "--batch", str(a.batch), "--steps",
                                       str(a.steps), "--eval-users", str(a.eval_users)], env=env,
                            label=f"{s} (repeat {r})")
            if out is None:
                continue
            runs[s].append(out)
            ph = out["phases"]
            print(f"{s} (repeat {r}): generate {ph['generate']['wall_s']:.1f}s  graph {ph['graph']['wall_s']:.1f}s  "
                  f"setup {ph['setup']['wall_s']:.1f}s  step {out['step_s']:.2f}s  evaluate {out['users_ranked']:,} "
                  f"users {ph['evaluate']['wall_s']:.1f}s  peak {out['peak_GiB']:.2f} GiB", flush=True)
    print(f"\n{'setting':<10}{'step s':>9}{'epoch s (est)':>15}{'full eval s (est)':>19}{'peak GiB':>10}{'runs':>6}")
    med: dict[str, dict[str, float]] = {}
    for s, rs in runs.items():
        if not rs:
            continue
        med[s] = {k: statistics.median(r[k] for r in rs) for k in ("step_s", "epoch_s_est", "eval_s_est", "peak_GiB")}
        m = med[s]
        print(f"{s:<10}{m['step_s']:>9.2f}{m['epoch_s_est']:>15.0f}{m['eval_s_est']:>19.0f}{m['peak_GiB']:>10.2f}"
              f"{len(rs):>6}")
    if "default" in med and len(med) > 1:
        for s in med:
            if s != "default":
                print(f"default against {s}: step {med[s]['step_s'] / med['default']['step_s']:.2f}x faster, "
                      f"peak {med['default']['peak_GiB'] / med[s]['peak_GiB']:.2f}x")
    return {"medians": med, "runs": runs}


# ------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p, sub = parser_with_modes("bench_growth", __doc__)
    c = sub.add_parser("curves", help="cost against data size: generation, graphs, epoch, evaluation, memory")
    c.add_argument("--sizes", default=None, help=f"interaction counts (default {FULL_SIZES}; --quick: {QUICK_SIZES})")
    c.add_argument("--methods", default=",".join(METHODS))
    c.add_argument("--modes", default="one",
                   help="one (this process); columns (2 column-sharded workers, training only)")
    c.add_argument("--steps", type=int, default=16, help="training steps per epoch (batch = train pairs / steps)")
    c.add_argument("--eval-users", type=int, default=0,
                   help="rank only this many users per split, time scaled (0: all)")
    c.add_argument("--max-bm3", default=None, help="largest size BM3 runs at (default: every size)")
    c.add_argument("--no-knn", action="store_true", help="skip the item-item kNN graph")
    c.add_argument("--no-spmm", action="store_true", help="skip timing one propagation layer per size")
    c.add_argument("--max-knn", default=None, help="largest size the item-item kNN graph is built at (default: every)")
    c.add_argument("--threads", type=int, default=0, help="torch threads in each subprocess (0: torch's default)")
    c.add_argument("--out", type=Path, default=None, help="PNG of the curves")
    c.add_argument("--results", type=Path, default=None,
                   help="JSON-lines file: every finished measurement is appended; a rerun reuses those it finds")
    c.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 4 steps (about a minute of CPU)")
    c.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    h = sub.add_parser("phases", help="every phase of one run, with and without the large-block heap; --serving")
    h.add_argument("--data", default=LARGEST)
    h.add_argument("--method", default="lightgcn")
    h.add_argument("--batch", type=int, default=65536)
    h.add_argument("--steps", type=int, default=4, help="training steps timed (the first is a warm-up)")
    h.add_argument("--eval-users", type=int, default=20000, help="users ranked per split (0: all)")
    h.add_argument("--settings", default=None,
                   help="RAYMMREC_MALLOC_TUNING values (default: default,threshold); with --serving held,default")
    h.add_argument("--repeats", type=int, default=1)
    h.add_argument("--serving", action="store_true",
                   help="the memory a process that only loads and scores a model gives back")
    h.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    env = {} if a.child else print_environment()
    res = {"curves": curves, "phases": phases}[a.what](a)
    if a.child:
        emit(res)
    else:
        emit_figures(env, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
