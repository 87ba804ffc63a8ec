"""``raymmrec reproduce``: each method's paper grid on each dataset through Ray Tune, winners
selected on validation, and the comparison table the papers print.

For every (dataset, method) pair a sweep (:func:`raymmrec.ray.tune.sweep`) runs in
``<root>/<dataset>-<method>``; the winners' test Recall@10/20 and NDCG@10/20 go into one table
(best per column marked) written as ``table.md``, ``table.csv`` and ``table.tex``, with each winner's
``configs/<dataset>-<method>.yaml`` and a bar chart. Rerunning the command resumes: finished sweeps
are read back, an interrupted one restores and finishes its missing trials.
"""

from __future__ import annotations

import argparse
import math
import os
import time


from raymmrec.config import load_spec
from raymmrec.data import resolve_source
from raymmrec.ray import storage as st
from raymmrec.ray.tune import BEST_YAML, TEST_SELECTION_LABEL, SweepArgs, add_sweep_arguments, sweep, sweep_args_from
from raymmrec.files import read_bytes, write_bytes, write_json

COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def dataset_label(source: str) -> str:
    return os.path.basename(source.rstrip("/")).replace(":", "-") or source


def comparison(results: dict[str, dict[str, dict[str, float]]], fmt: str, note: str = "",
               selection: str = "validation") -> str:
    """``results[dataset][method][metric]`` as a table in ``fmt`` (md | tex | csv); best per column marked."""
    datasets = list(results)
    methods = list(dict.fromkeys(m for d in datasets for m in results[d]))
    def value(d: str, m: str, c: str) -> float | None:
        v = results[d].get(m, {}).get(c)
        return None if v is None or not math.isfinite(v) else v

    best = {(d, c): max((v for m in results[d] if (v := value(d, m, c)) is not None), default=None)
            for d in datasets for c in COLUMNS}

    def cell(d: str, m: str, c: str, bold: tuple[str, str]) -> str:
        v = value(d, m, c)
        if v is None:
            return "-"
        text = f"{v:.4f}"
        return f"{bold[0]}{text}{bold[1]}" if v == best[(d, c)] else text

    if fmt == "csv":
        lines = ["dataset,method," + ",".join(COLUMNS) + ",best_in,selected_on"]
        for d in datasets:
            for m in methods:
                vals = [value(d, m, c) for c in COLUMNS]
                marks = " ".join(c for c, v in zip(COLUMNS, vals) if v is not None and v == best[(d, c)])
                lines.append(f"{d},{m}," + ",".join("" if v is None else f"{v:.6f}" for v in vals) + f",{marks},{selection}")
        return "\n".join(lines) + "\n"
    cols = [f"{d} {c.replace('recall', 'R').replace('ndcg', 'N')}" for d in datasets for c in COLUMNS]
    if fmt == "md":
        lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(cell(d, m, c, ("**", "**")) for d in datasets for c in COLUMNS) + " |")
        return "\n".join(lines) + (f"\n\n{note}\n" if note else "\n")
    if fmt == "tex":
        spec = "l" + "|cccc" * len(datasets)
        head1 = " & ".join(f"\\multicolumn{{4}}{{c}}{{{d.replace('_', chr(92) + '_')}}}" for d in datasets)
        head2 = " & ".join("R@10 & R@20 & N@10 & N@20" for _ in datasets)
        lines = [f"% {note}" if note else "%", f"\\begin{{tabular}}{{{spec}}}", "\\hline",
                 f"Method & {head1} \\\\", f" & {head2} \\\\", "\\hline"]
        for m in methods:
            lines.append(m.replace("_", "\\_") + " & "
                         + " & ".join(cell(d, m, c, ("\\textbf{", "}")) for d in datasets for c in COLUMNS) + " \\\\")
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}")


def reproduce(methods: list[str], datasets: list[str], overrides: list[str], args: SweepArgs, root: str) -> dict:
    """Run every (dataset, method) paper grid; write the comparison table under ``root``."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    specs = [(d, m, load_spec(method=m, overrides=[*overrides, f"data.source={resolve_source(d)}"]))
             for d in datasets for m in methods]  # every config is checked before the first sweep starts
    for i, (d, m, spec) in enumerate(specs, start=1):
        label = dataset_label(d)
        if args.progress:
            print(f"[reproduce] {i}/{len(specs)}: {m} on {label}", flush=True)
        spec.output_dir = root  # each sweep's folder goes under the reproduce folder
        one = SweepArgs(**{**args.__dict__, "name": f"{label}-{m}"})
        res = sweep(spec, one)
        results.setdefault(label, {})[m] = {c: float(v) for c in COLUMNS if (v := res.best.get(f"test {c}")) is not None}
        times[f"{label}-{m}"] = round(res.wall_s, 1)
        write_bytes(st.join(root, "configs", f"{label}-{m}.yaml"), read_bytes(st.join(res.root, BEST_YAML)))
    wall = time.perf_counter() - t0
    sel = "validation" if args.select == "valid" else TEST_SELECTION_LABEL
    metric = specs[0][2].eval.valid_metric
    selection = "validation" if args.select == "valid" else "TEST (MMRec protocol)"
    note = (f"Test metrics of each method's {args.grid}-space winner, selected on {sel} {metric}; "
            f"best per column marked. {len(specs)} sweeps in {wall / 60:.1f} min (this invocation).")
    for fmt in ("md", "csv", "tex"):
        write_bytes(st.join(root, f"table.{fmt}"), comparison(results, fmt, note, selection).encode())
    from raymmrec.plots import plot_table_bars

    png = plot_table_bars({d: {m: v["recall@20"] for m, v in r.items()} for d, r in results.items()},
                          "recall@20", f"test Recall@20 of each {args.grid}-space winner, selected on {selection}")
    if png is not None:
        write_bytes(st.join(root, "table_recall20.png"), png)
    summary = {"methods": methods, "datasets": datasets, "overrides": overrides, "select": args.select,
               "results": results, "sweep_wall_s": times, "wall_s": round(wall, 1)}
    write_json(st.join(root, "reproduce.json"), summary)
    if args.progress:
        print(comparison(results, "md", note), flush=True)
        print(f"[reproduce] tables in {root}", flush=True)
    return summary


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from raymmrec.errors import run_main

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", required=True, help="comma-separated registered methods, e.g. bpr,lightgcn,vbpr,bm3")
    p.add_argument("--data", required=True, help="comma-separated datasets (names, paths or URLs)")
    p.add_argument("--output-dir", default="runs", help="where the reproduce folder goes (local or s3://)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda: where the trials train (default auto)")
    p.add_argument("--name", default=None, help="reproduce folder name (default: reproduce-<methods>-<datasets>)")
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    add_sweep_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="applied to every run, e.g. data.rating_threshold=1 train.epochs=1000")
    a = p.parse_args(argv)
    methods = [m.strip().lower() for m in a.methods.split(",") if m.strip()]
    datasets = [d.strip() for d in a.data.split(",") if d.strip()]
    name = a.name or f"reproduce-{'_'.join(methods)}-{'_'.join(dataset_label(d) for d in datasets)}"
    if a.shard is not None:
        a.overrides.append(f"train.shard={a.shard}")
    if a.device is not None:
        a.overrides.append(f"train.device={a.device}")
    args = sweep_args_from(a)  # each sweep's name and folder are set by reproduce()
    root = st.join(a.output_dir, name)
    if not st.is_remote(root):
        root = os.path.abspath(root)
    return run_main(lambda: (reproduce(methods, datasets, a.overrides, args, root), 0)[1], verbose=a.verbose)


__all__ = ["comparison", "main", "reproduce"]


