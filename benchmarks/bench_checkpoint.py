"""Writing and reading a run's checkpoint in one process (weights and Adam state after one epoch).

    python benchmarks/bench_checkpoint.py --method bm3 --data ../shared/data/lfm2k [--repeats 7] [key=value ...]

Trains one epoch (so the optimizer holds its moments), then times ``save_checkpoint`` (the tensors with
torch.distributed.checkpoint, then ``latest.pt``: what a run does at each checkpoint) and ``restore`` (a
resume), each ``--repeats`` times into a temporary run folder. Prints the checkpoint's size and the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

from raymmrec.config import load_spec
from raymmrec.train.build import build, make_trainer
from raymmrec.train.checkpoint import restore, save_checkpoint
from raymmrec.train.loop import TrainState


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="bm3")
    p.add_argument("--data", required=True)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    a = p.parse_args()
    spec = load_spec(a.method, overrides=[f"data.source={a.data}", "train.device=cpu", *a.overrides])
    pieces = build(spec, device=torch.device("cpu"), release_features=True)
    trainer = make_trainer(pieces, lambda model: {}, [])
    trainer._run_epoch(0)
    run = tempfile.mkdtemp(prefix="bench-ckpt-")
    try:
        saves, reads = [], []
        for i in range(a.repeats):
            t0 = time.perf_counter()
            save_checkpoint(run, trainer, TrainState(epoch=i + 1), pieces.config)
            saves.append(time.perf_counter() - t0)
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            restore(pieces, run, "benchmark")
            reads.append(time.perf_counter() - t0)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(run) for f in files)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print(f"{a.method} on {a.data}: checkpoint {size / 1e6:.1f} MB; save median {statistics.median(saves) * 1e3:.0f} ms, "
          f"restore median {statistics.median(reads) * 1e3:.0f} ms (of {a.repeats} each)")


if __name__ == "__main__":
    main()
