"""Run one training job in this process (CPU or one GPU), resuming its run folder if present.

The pieces come from :func:`raymmrec.train.build.build`; this module only runs them and writes
the run's artefacts (:mod:`raymmrec.train.artifacts`), exactly as the Ray layer does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raymmrec.config import RunSpec, adopt_recorded
from raymmrec.data import RecData
from raymmrec.train.artifacts import CONFIG, RESULTS, TB, results_dict, results_table, resume_best
from raymmrec.files import write_json
from raymmrec.train.build import build, local_evaluate, make_trainer
from raymmrec.train.callbacks import BestWeightsCallback, CheckpointCallback, ProgressCallback, TensorBoardCallback
from raymmrec.train.checkpoint import CKPT, LATEST, restore
from raymmrec.train.loop import Callback, TrainState

__all__ = ["results_table", "run"]


def run(spec: RunSpec, *, progress: bool = True, extra_callbacks: list[Callback] | None = None,
        data: RecData | None = None) -> TrainState:
    """Train and evaluate ``spec`` in this process; resumes ``<output_dir>/<run_name>`` if present."""
    run_dir = Path(spec.output_dir) / spec.resolved_run_name
    if (run_dir / CONFIG).is_file():  # resuming: values from the method's defaults stay as recorded
        spec = adopt_recorded(spec, json.loads((run_dir / CONFIG).read_text()))
    t0 = time.perf_counter()
    pieces = build(spec, data=data, release_features=data is None)
    if progress:
        print(pieces.summary, flush=True)
        print(f"method {spec.method} ({pieces.objective.name} objective) on {pieces.device}; setup took "
              f"{time.perf_counter() - t0:.1f}s; run folder {run_dir}", flush=True)
        for split, note in pieces.notes.items():
            print(f"{split}: {note}", flush=True)
    state = None
    best = BestWeightsCallback(run_dir, pieces.config)
    # the one checkpoint layout: written here, or by any number of Ray workers (raymmrec.train.checkpoint)
    resumed = restore(pieces, run_dir, str(run_dir / CKPT / LATEST))
    if resumed is not None:
        state, best_weights = resumed
        best.resume(resume_best(run_dir, state, best_weights, pieces.model, pieces.config))
        if progress:
            print(f"resuming from {run_dir / CKPT} at epoch {state.epoch}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG, pieces.config)
    callbacks: list[Callback] = [
        ProgressCallback(spec.eval.valid_metric, enabled=progress),
        TensorBoardCallback(run_dir / TB),
        best,
        CheckpointCallback(run_dir, pieces.config, every=spec.train.checkpoint_every, best=best),
        *(extra_callbacks or []),
    ]
    evaluate = local_evaluate(pieces.evaluators, pieces.fixed_results)
    state = make_trainer(pieces, evaluate, callbacks).fit(state)
    write_json(run_dir / RESULTS, results_dict(state, pieces.notes))
    if progress:
        print(results_table(state, spec.eval.ks, pieces.notes), flush=True)
    return state
