"""``raymmrec data amazon`` on a generated raw dump in the 2023 format: lines per second, time per stage
and the whole machine's peak memory, in one process and on a local Ray with 1 and 2 CPUs.

    python -m benchmarks.bench_amazon [--lines 5000000] [--users 1000000] [--items 20000]
        [--modes local,ray-1,ray-2] [--repeats 1] [--workdir /tmp/raymmrec-bench-amazon] [--no-meta]

The dump (``Synthetic.jsonl.gz`` reviews and ``meta_Synthetic.jsonl.gz`` metadata, JSON lines with the
2023 release's fields) is generated once into ``--workdir`` and reused while its parameters match
(``raw.json`` says which). Reviews: ``--lines`` lines, users drawn with a long tail (most write one or
two reviews, as in the release), items by a Zipf-like popularity, review texts of 20-80 words; one
metadata line per item (title, store, categories, description). A mode is:

* ``local``: ``--local``, one process, no Ray (the reference);
* ``ray-N``: a local Ray started with ``num_cpus=N``; Ray Data's file readers and line parsers (half a
  CPU each) and the text encoder's actors share those N CPUs.

Each build runs in a fresh subprocess under a fresh ``RAY_TMPDIR``; its stages' times come from the
build itself (``build_amazon``'s ``seconds``), the peak memory is the summed proportional set size
(PSS) of every process it starts (Ray's own included), sampled every 0.25 s. Lines per second are the
review lines over the stage that reads and parses them (reading, decompressing and parsing, in parallel
under Ray). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit_figures, local_ray_env, node_memory_command, print_environment

CATEGORY = "Synthetic"
WORDS = ("soft cotton shirt dress shoe boot sock jacket coat warm light comfortable fit size small large "
         "blue red black white green classic modern casual formal sport running walking leather wool silk "
         "great quality price fast shipping love return perfect wear daily gift nice fabric color style").split()


def _sentences(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) for _ in range(n)]


def generate(folder: Path, lines: int, users: int, items: int, seed: int = 7) -> dict[str, Any]:
    """Write the raw dump into ``folder`` (temporary names, then renamed); skip when ``raw.json`` matches."""
    params = {"lines": lines, "users": users, "items": items, "seed": seed, "version": 1}
    done = folder / "raw.json"
    if done.exists() and json.loads(done.read_text()) == params:
        print(f"raw dump: reusing {folder}", flush=True)
        return params
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texts = _sentences(rng, 997, 20, 80)
    titles = _sentences(rng, 499, 2, 8)
    # users: a long tail (u ~ users * x^3 puts most of the mass on low ranks: some write dozens of reviews,
    # most one or two); items: Zipf-like, p(i) ~ 1 / (i + 10)
    item_p = 1.0 / (np.arange(items) + 10.0)
    item_p /= item_p.sum()
    uid = [f"AE{(u * 2654435761) % 2**61:018X}{u % 97:02d}" for u in range(users)]
    asin = [f"B0{i:08d}" for i in range(items)]
    reviews = folder / f"{CATEGORY}.jsonl.gz"
    part = reviews.with_name(reviews.name + ".part")
    t0 = time.perf_counter()
    chunk = 200_000
    with gzip.open(part, "wt", compresslevel=1) as f:
        for start in range(0, lines, chunk):
            n = min(chunk, lines - start)
            u = np.minimum((users * rng.random(n) ** 3).astype(np.int64), users - 1)
            it = rng.choice(items, size=n, p=item_p)
            rating = rng.integers(1, 6, size=n)
            ts = 1_300_000_000_000 + rng.integers(0, 10**12, size=n)
            tx = rng.integers(0, len(texts), size=n)
            ti = rng.integers(0, len(titles), size=n)
            votes = rng.integers(0, 5, size=n)
            f.write("".join(
                f'{{"rating": {r}.0, "title": "{titles[b]}", "text": "{texts[a]}", "images": [], '
                f'"asin": "{asin[i]}", "parent_asin": "{asin[i]}", "user_id": "{uid[x]}", "timestamp": {t}, '
                f'"helpful_vote": {v}, "verified_purchase": true}}\n'
                for r, b, a, i, x, t, v in zip(rating.tolist(), ti.tolist(), tx.tolist(), it.tolist(), u.tolist(),
                                               ts.tolist(), votes.tolist())))
            if (start + n) % 1_000_000 == 0 or start + n == lines:
                print(f"raw dump: {start + n:,} of {lines:,} review lines ({time.perf_counter() - t0:.0f}s)",
                      flush=True)
    part.rename(reviews)
    meta = folder / f"meta_{CATEGORY}.jsonl.gz"
    part = meta.with_name(meta.name + ".part")
    with gzip.open(part, "wt", compresslevel=1) as f:
        for i in range(items):
            rec = {"main_category": "Synthetic", "title": titles[i % len(titles)] + f" {i}",
                   "average_rating": 4.2, "rating_number": 10, "features": [texts[i % len(texts)][:60]],
                   "description": [texts[(7 * i) % len(texts)]], "price": 19.99, "images": [], "videos": [],
                   "store": f"Store{i % 500}", "categories": ["Clothing", WORDS[i % len(WORDS)]],
                   "details": {}, "parent_asin": asin[i], "bought_together": None}
            f.write(json.dumps(rec) + "\n")
    part.rename(meta)
    done.write_text(json.dumps(params))
    print(f"raw dump: {reviews} ({reviews.stat().st_size / 2**20:.0f} MiB), {meta} "
          f"({meta.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return params


def child(cpus: int, argv: list[str]) -> None:
    """One build (``cpus`` 0: ``--local``); prints its record's counts and stage times as the last line."""
    from raymmrec.ray.amazon import Options, Sources, build_amazon, parser

    a = parser().parse_args(argv)
    if cpus:
        import ray

        ray.init(num_cpus=cpus, log_to_driver=False, include_dashboard=False)
    rec = build_amazon(Sources(reviews=a.reviews, meta=a.meta), a.out,
                       Options(kcore=a.kcore, local=not cpus, overwrite=True))
    print(json.dumps({"seconds": rec["seconds"], "lines": rec["interactions"]["lines"],
                      "users": rec["interactions"]["users"], "items": rec["interactions"]["items"],
                      "interactions": rec["interactions"]["after_kcore"]}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=5_000_000, help="review lines (default 5,000,000)")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--modes", default="local,ray-1,ray-2", help="local, ray-N (a local Ray with N CPUs)")
    p.add_argument("--repeats", type=int, default=1, help="builds per mode (medians), modes interleaved")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "raymmrec-bench-amazon",
                   help="where the raw dump is kept between runs")
    p.add_argument("--no-meta", action="store_true", help="interactions only (no metadata, no text features)")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(int(a.child[0]), a.child[1:])
        return 0
    env = print_environment()
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in modes:
        if m != "local" and not (m.startswith("ray-") and m[4:].isdigit() and int(m[4:]) > 0):
            p.error(f"--modes: expected local or ray-N, got {m!r}")
    raw = a.workdir / "raw"
    params = generate(raw, a.lines, a.users, a.items)
    args = ["amazon", "--reviews", str(raw / f"{CATEGORY}.jsonl.gz")]
    if not a.no_meta:
        args += ["--meta", str(raw / f"meta_{CATEGORY}.jsonl.gz")]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for i in range(a.repeats):
        for m in modes:
            out = a.workdir / f"out-{m}"
            shutil.rmtree(out, ignore_errors=True)
            cpus = 0 if m == "local" else int(m[4:])
            cmd = [sys.executable, "-m", "benchmarks.bench_amazon", "--child", str(cpus), *args, "--out", str(out)]
            r = node_memory_command(cmd, local_ray_env())
            got = json.loads(r["tail"][-1])
            got.update(peak_gib=r["peak_gib"], wall_s=r["wall_s"], roles_gib=r["roles_gib"])
            runs[m].append(got)
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in got["seconds"].items())
            print(f"  {m} #{i}: {stages}; whole command {got['wall_s']:.1f}s; peak {got['peak_gib']:.2f} GiB "
                  f"(PSS of every process)", flush=True)
    first = runs[modes[0]][0]
    print(f"\n{first['lines']:,} review lines -> {first['interactions']:,} interactions in the 5-core, "
          f"{first['users']:,} users, {first['items']:,} items (medians of {a.repeats})")
    stage_names = list(first["seconds"])
    print(f"{'mode':8} {'lines/s':>10} " + " ".join(f"{s[:22]:>22}" for s in stage_names) + f" {'peak GiB':>9}")
    figures: dict[str, Any] = {"raw": params, "lines": first["lines"], "interactions": first["interactions"],
                               "users": first["users"], "items": first["items"], "modes": {}}
    for m, rs in runs.items():
        sec = {s: statistics.median(r["seconds"].get(s, float("nan")) for r in rs) for s in stage_names}
        lps = first["lines"] / sec["interactions: read and parse"]
        peak = statistics.median(r["peak_gib"] for r in rs)
        figures["modes"][m] = {"lines_per_s": round(lps), "seconds": sec, "peak_gib": round(peak, 3),
                               "roles_gib_at_peak": rs[-1]["roles_gib"]}
        print(f"{m:8} {lps:>10,.0f} " + " ".join(f"{sec[s]:>22.1f}" for s in stage_names) + f" {peak:>9.2f}")
    emit_figures(env, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
