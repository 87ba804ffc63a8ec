"""Feature extraction throughput: text items/s and images/s (224 x 224), one process against Ray Data actors.

    python benchmarks/bench_features.py [--texts 256] [--images 96] [--actors 2] [--repeats 3] [--batch-size 32]

Texts are the first ``--texts`` items of ../shared/data/lfm2k/item_text.tsv when it is there (Last.fm tag lists,
long: most hit MiniLM's 256-token cap), else generated sentences. Images are generated 224 x 224 JPEGs.

* one process: :func:`raymmrec.features.extract` with the model loaded beforehand (torch uses every core);
* Ray: :func:`raymmrec.ray.features.extract_ray` on a local Ray with ``--actors`` encoder actors, each with an
  equal share of the cores (one torch thread per core), started afresh for every run: its items/s count
  everything (actors starting, models loading); ``start-up`` is the time until the first batch came back.

Medians of ``--repeats`` runs. Prints a report and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymmrec.features import ImageEncoder, TextEncoder, extract

LFM2K_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfm2k" / "item_text.tsv"


def make_texts(n: int, folder: Path) -> tuple[str, str]:
    path = folder / "items.tsv"
    if LFM2K_TEXT.exists():
        frame = pd.read_csv(LFM2K_TEXT, sep="\t", dtype=str, keep_default_na=False, quoting=3).head(n)
        source = f"first {len(frame)} items of {LFM2K_TEXT.name} (lfm2k)"
    else:
        rng = np.random.default_rng(0)
        words = ["red", "blue", "light", "warm", "wool", "cotton", "shoe", "hat", "scarf", "coat", "running", "classic", "modern", "soft"]
        frame = pd.DataFrame({"itemID": [str(i) for i in range(n)],
                              "text": [" ".join(rng.choice(words, 60)) for _ in range(n)]})
        source = f"{n} generated 60-word texts"
    frame[["itemID", "text"]].to_csv(path, sep="\t", index=False)
    return str(path), source


def make_images(n: int, folder: Path) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = folder / "imgs"
    out.mkdir()
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    for i in range(n):
        f = rng.uniform(1, 8, 3)
        arr = np.stack([np.sin(f[c] * (xx + yy * c) * np.pi) for c in range(3)], axis=-1)
        arr = ((arr + 1) * 127.5 + rng.normal(0, 10, arr.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(out / f"{i}.jpg", quality=90)
    return str(out)


def bench(catalog: str, modality: str, encoder, args: argparse.Namespace, work: Path) -> dict[str, float]:
    from raymmrec.ray.features import extract_ray

    local, wall, startup = [], [], []
    for r in range(args.repeats):
        m = extract(catalog, str(work / f"local-{modality}-{r}"), modality, encoder=encoder,
                    batch_size=args.batch_size, progress=False)
        local.append(m["runs"][-1]["items_per_s"])
    cpus = max(1, os.cpu_count() or 1)
    for r in range(args.repeats):
        m = extract_ray(catalog, str(work / f"ray-{modality}-{r}"), modality, actors=args.actors,
                        batch_size=args.batch_size, cpus_per_actor=cpus / args.actors,
                        threads_per_actor=max(1, cpus // args.actors), progress=False)
        run = m["runs"][-1]
        wall.append(run["items_per_s"])
        startup.append(run["first_batch_seconds"])
    return {"one_process": statistics.median(local), "ray_wall": statistics.median(wall),
            "ray_startup_s": statistics.median(startup)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    import logging

    import ray
    import torch

    ray.init(num_cpus=os.cpu_count(), logging_level=logging.WARNING, log_to_driver=False)
    results: dict[str, object] = {"cpus": os.cpu_count(), "torch_threads_one_process": torch.get_num_threads(),
                                  "actors": args.actors, "batch_size": args.batch_size, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        work = Path(tmp)
        texts, source = make_texts(args.texts, work)
        images = make_images(args.images, work)
        results["texts"], results["images"] = source, f"{args.images} generated 224x224 JPEGs"
        results["text_items_per_s"] = bench(texts, "text", TextEncoder(device="cpu").load(), args, work)
        results["images_per_s"] = bench(images, "image", ImageEncoder(device="cpu").load(), args, work)
    ray.shutdown()
    print(f"texts: {results['texts']}; images: {results['images']}; {results['cpus']} CPUs, "
          f"medians of {args.repeats}")
    print(f"{'':14s}{'one process':>14s}{f'Ray {args.actors} actors':>16s}{'Ray start-up (s)':>18s}")
    for key, name in (("text_items_per_s", "text items/s"), ("images_per_s", "images/s")):
        r = results[key]
        print(f"{name:14s}{r['one_process']:14.1f}{r['ray_wall']:16.1f}{r['ray_startup_s']:18.1f}")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {results['cpus']} CPUs (other jobs slow every figure)")
    results["load_average"] = round(load, 1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
