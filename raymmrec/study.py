"""Studies users can rerun: how the noisy-label objectives and negative samplers behave (NBPO paper).

``raymmrec study noisy-labels --data D --rates 0,0.2,0.4 [--methods bpr,bpo,nbpo] [--backbones mf,lightgcn]
[--seeds 0,1] [--out runs/study-...]`` hides the given fraction of each user's training positives
(``data.hide_positives``: they become unlabelled, i.e. false negatives a sampler may draw), trains
every (objective, backbone, rate, seed) with its defaults to early stopping, one after another in
this process, and writes ``results.csv``, ``results.md`` (mean and spread over seeds) and
``recall_vs_rate.png``. Validation and test splits are the same at every rate, so the rows compare.

``--recipe authors`` trains each objective in the NBPO authors' recipe (plain SGD on sums over
every triple, batches of 5000, the learning rate decayed per epoch, every row decayed at each
batch) at their published settings; the default is the project's (Adam on batch means).

``raymmrec study samplers`` does the same across negative samplers (uniform, popularity) at the
data's own noise. Each run is an ordinary run folder under ``--out``; rerunning the command resumes
unfinished runs and reuses finished ones. No Ray: a cluster runs the same grid with ``raymmrec tune``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from raymmrec.config import load_spec

BACKBONES = {"mf": "bpr", "lightgcn": "lightgcn"}  # the preference model each objective trains


def _runs(kind: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    grid = []
    for backbone in a.backbones.split(","):
        if backbone not in BACKBONES:
            raise ValueError(f"--backbones: unknown backbone {backbone!r}; expected {', '.join(BACKBONES)}")
        for objective in a.methods.split(","):
            values = [float(r) for r in a.rates.split(",")] if kind == "noisy-labels" else a.samplers.split(",")
            for value in values:
                for seed in (int(s) for s in a.seeds.split(",")):
                    grid.append({"backbone": backbone, "objective": objective, "value": value, "seed": seed})
    return grid


def _overrides(kind: str, row: dict[str, Any], a: argparse.Namespace) -> list[str]:
    key = "data.hide_positives" if kind == "noisy-labels" else "train.negative_sampler"
    name = f"{row['objective']}-{row['backbone']}-{kind}-{row['value']}-seed{row['seed']}"
    recipe = []
    if a.recipe == "authors":
        from raymmrec.models.pointwise_mf import authors_overrides

        name, recipe = f"{name}-authors", authors_overrides(row["objective"])
    return [f"data.source={a.data}", f"objective={row['objective']}", f"{key}={row['value']}",
            f"train.seed={row['seed']}", f"output_dir={a.out}", f"run_name={name}", *recipe,
            *_for_objective(a.overrides, row["objective"])]


def _objective_prefix(override: str) -> tuple[str | None, str]:
    """``("nbpo", "train.lr=0.1")`` for ``nbpo:train.lr=0.1``; ``(None, override)`` for one without a
    prefix (a colon after the ``=``, as in ``data.source=s3://...``, is part of the value)."""
    head, sep, rest = override.partition(":")
    return (head, rest) if sep and "=" not in head else (None, override)


def _for_objective(overrides: list[str], objective: str) -> list[str]:
    """Overrides for every run, and ``<objective>:section.key=value`` ones for that objective's runs."""
    picked = (_objective_prefix(o) for o in overrides)
    return [rest for prefix, rest in picked if prefix in (None, objective)]


def run_study(kind: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    from raymmrec.files import write_json
    from raymmrec.train.build import check_same_run, resolved_config
    from raymmrec.train.run import run

    rows = []
    grid = _runs(kind, a)
    methods = a.methods.split(",")
    for o in a.overrides:  # a misspelt objective prefix would otherwise apply to no run, silently
        prefix, _ = _objective_prefix(o)
        if prefix is not None and prefix not in methods:
            raise ValueError(f"override {o!r} is for objective {prefix!r}, which is not among --methods "
                             f"({', '.join(methods)})")
    for n, row in enumerate(grid, 1):
        spec = load_spec(BACKBONES[row["backbone"]], overrides=_overrides(kind, row, a))
        folder = Path(spec.output_dir) / spec.resolved_run_name
        done, timing = folder / "results.json", folder / "study_wall_s.json"
        t0 = time.perf_counter()
        if done.exists():  # finished earlier: reused only if it is the same experiment
            check_same_run(json.loads((folder / "config.json").read_text()), resolved_config(spec), str(folder))
            res = json.loads(done.read_text())
            test = res["test"]
            wall = json.loads(timing.read_text())["seconds"] if timing.exists() else res.get("study_wall_s", math.nan)
        else:
            state = run(spec, progress=False)
            test, wall = state.best_test, time.perf_counter() - t0
            write_json(timing, {"seconds": wall})
        out = {**row, "recall@20": test.get("recall@20"), "ndcg@20": test.get("ndcg@20"), "wall_s": wall}
        rows.append(out)
        print(f"[{n}/{len(grid)}] {row['objective']} on {row['backbone']}, {kind} {row['value']}, seed {row['seed']}: "
              f"test R@20 {out['recall@20']:.4f} N@20 {out['ndcg@20']:.4f} ({wall:.0f}s)", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]], value_name: str) -> list[dict[str, Any]]:
    """Mean and spread (sample standard deviation; 0 with one seed) over seeds per setting."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["objective"], r[value_name]), []).append(r)
    out = []
    for (backbone, objective, value), rs in groups.items():
        item = {"backbone": backbone, "objective": objective, value_name: value, "seeds": len(rs)}
        for m in ("recall@20", "ndcg@20", "wall_s"):
            xs = [r[m] for r in rs if r[m] is not None and not math.isnan(r[m])]
            item[m] = statistics.fmean(xs) if xs else math.nan
            item[f"{m}_sd"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
        out.append(item)
    return out


def markdown(summary: list[dict[str, Any]], value_name: str) -> str:
    lines = [f"| backbone | objective | {value_name} | seeds | test Recall@20 | test NDCG@20 | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['backbone']} | {s['objective']} | {s[value_name]} | {s['seeds']} | "
                     f"{s['recall@20']:.4f} ± {s['recall@20_sd']:.4f} | {s['ndcg@20']:.4f} ± {s['ndcg@20_sd']:.4f} | "
                     f"{s['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], value_name: str, title: str) -> bytes:
    from raymmrec.plots import figure_row, png_bytes

    fig, axes = figure_row(2)
    for ax, metric in zip(axes, ("recall@20", "ndcg@20")):
        for key in sorted({(s["backbone"], s["objective"]) for s in summary}):
            pts = [s for s in summary if (s["backbone"], s["objective"]) == key]
            xs = list(range(len(pts))) if value_name == "sampler" else [float(s[value_name]) for s in pts]
            ax.errorbar(xs, [s[metric] for s in pts], yerr=[s[f"{metric}_sd"] for s in pts], marker="o",
                        capsize=3, label=f"{key[1]} ({key[0]})")
            if value_name == "sampler":
                ax.set_xticks(xs, [s[value_name] for s in pts])
        ax.set_xlabel("hidden share of training positives" if value_name == "rate" else "negative sampler")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def _write(path: Path, data: bytes | str) -> None:
    """Write to a temporary name, then rename: a killed study never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    tmp.replace(path)


def main(argv: list[str] | None = None, prog: str = "raymmrec study") -> int:
    from raymmrec.errors import run_main

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["noisy-labels", "samplers"])
    p.add_argument("--data", required=True, help="dataset name or folder, e.g. ../shared/data/lfm2k")
    p.add_argument("--methods", default="bpr,bpo,nbpo", help="objectives (default bpr,bpo,nbpo)")
    p.add_argument("--backbones", default="mf", help="preference models: mf, lightgcn (comma-separated)")
    p.add_argument("--rates", default="0,0.2,0.4", help="noisy-labels: hidden shares of each user's positives")
    p.add_argument("--samplers", default="uniform,popularity", help="samplers: negative samplers to compare")
    p.add_argument("--seeds", default="0", help="training seeds (comma-separated)")
    p.add_argument("--recipe", choices=["default", "authors"], default="default",
                   help="default: the project's (Adam on batch means); authors: the NBPO authors' SGD recipe "
                        "at their published settings per objective (see raymmrec.models.pointwise_mf)")
    p.add_argument("--out", default=None, help="folder for the run folders and the study's tables and plot")
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides for every run; objective:section.key=value for one objective's runs")
    a = p.parse_intermixed_args(argv)
    name = Path(a.data.rstrip("/")).name
    a.out = a.out or f"runs/study-{a.kind}-{name}" + ("-authors" if a.recipe == "authors" else "")

    def go() -> int:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rows = run_study(a.kind, a)
        value_name = "rate" if a.kind == "noisy-labels" else "sampler"
        rows = [{**{k: v for k, v in r.items() if k != "value"}, value_name: r["value"]} for r in rows]
        summary = summarise(rows, value_name)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        out = Path(a.out)
        _write(out / "results.csv", buf.getvalue())
        table = markdown(summary, value_name)
        _write(out / "results.md", table)
        _write(out / ("recall_vs_rate.png" if a.kind == "noisy-labels" else "recall_by_sampler.png"),
               plot(summary, value_name, f"{a.kind} on {name} ({len(a.seeds.split(','))} seed(s), {a.recipe} recipe)"))
        print(table + f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f}s; tables and plot in {out}", flush=True)
        return 0

    return run_main(go, verbose=a.verbose)
