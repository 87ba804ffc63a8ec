"""Run one training job in this process (CPU or one GPU), resuming its run folder if present.

The pieces come from :func:`raymmrec.train.build.build`; this module only runs them. The run folder's
life (its config adopted and checked, config.json, results.json) is :mod:`raymmrec.train.lifecycle`,
shared with the Ray layer.
"""

from __future__ import annotations

import time
from pathlib import Path

from raymmrec.config import ConfigError, RunSpec
from raymmrec.data import RecData
from raymmrec.files import is_url
from raymmrec.train.artifacts import TB, results_table, resume_best
from raymmrec.train.build import build, local_evaluate, make_trainer
from raymmrec.train.callbacks import BestWeightsCallback, CheckpointCallback, ProgressCallback, TensorBoardCallback
from raymmrec.train.checkpoint import CKPT, LATEST, restore
from raymmrec.train.lifecycle import finish, open_run, write_config
from raymmrec.train.loop import Callback, TrainState

__all__ = ["results_table", "run"]


def run(spec: RunSpec, *, progress: bool = True, extra_callbacks: list[Callback] | None = None,
        data: RecData | None = None) -> TrainState:
    """Train and evaluate ``spec`` in this process; resumes ``<output_dir>/<run_name>`` if present."""
    if is_url(spec.output_dir):
        raise ConfigError(f"output_dir: a local folder in one process, got {spec.output_dir!r}; "
                          "a run folder on object storage needs Ray workers (--num-workers N)")
    folder = open_run(spec)  # resuming: values from the method's defaults stay as recorded; another run's folder refused
    spec = folder.spec
    run_dir = Path(folder.root)
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
    write_config(folder)
    callbacks: list[Callback] = [
        ProgressCallback(spec.eval.valid_metric, enabled=progress),
        TensorBoardCallback(run_dir / TB),
        best,
        CheckpointCallback(run_dir, pieces.config, every=spec.train.checkpoint_every, best=best),
        *(extra_callbacks or []),
    ]
    evaluate = local_evaluate(pieces.evaluators, pieces.fixed_results)
    state = make_trainer(pieces, evaluate, callbacks).fit(state)
    finish(folder, state, pieces.notes, show=progress)
    return state
