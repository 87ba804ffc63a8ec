"""A run folder's life, the same in one process and on Ray: open it, record the config, record the results.

``raymmrec train`` trains in this process (:func:`raymmrec.train.run.run`) or with Ray Train workers
(:func:`raymmrec.ray.launch.launch`); both go through these steps, so a folder means the same to both::

    folder = open_run(spec)                  # <output_dir>/<run_name>; a recorded config adopted and checked
    write_config(folder)                     # config.json, before the first epoch
    ...                                      # training (each mode its own way)
    finish(folder, state, notes, show=True)  # results.json, and the results table printed

The folder is a local path (made absolute: Ray workers run in other directories) or a URL
(``s3://...``); files go through :mod:`raymmrec.files` (local writes: temporary file, then rename).
No Ray here: this is the core's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raymmrec.config import RunSpec, adopt_recorded
from raymmrec.files import join, location, read_bytes, write_json
from raymmrec.train.artifacts import CONFIG, RESULTS, results_dict, results_table
from raymmrec.train.build import check_same_run, resolved_config
from raymmrec.train.loop import TrainState

__all__ = ["RunFolder", "finish", "open_run", "recorded_config", "write_config"]


@dataclass
class RunFolder:
    spec: RunSpec  # the spec to train: the recorded values adopted when resuming
    config: dict[str, Any]  # its resolved config (defaults filled): what config.json holds
    parent: str  # output_dir as a location: an absolute local path or a URL
    root: str  # the run folder: <parent>/<run_name>


def recorded_config(root: str) -> dict[str, Any] | None:
    """The ``config.json`` of the run folder ``root``, or None where there is none (a new run)."""
    try:
        raw = read_bytes(join(root, CONFIG))
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError(f"{join(root, CONFIG)}: not valid JSON; choose another run_name or output_dir") from None


def open_run(spec: RunSpec) -> RunFolder:
    """The run folder of ``spec`` (``<output_dir>/<run_name>``), checked before anything trains.

    Resuming (the folder holds a ``config.json``): the training values ``spec`` took from its method's
    defaults are taken from the record (:func:`~raymmrec.config.adopt_recorded`), and a folder that
    holds another experiment is refused with one line (:func:`~raymmrec.train.build.check_same_run`).
    A bad method or option fails here too (:func:`~raymmrec.train.build.resolved_config`).
    """
    parent = location(spec.output_dir)
    root = join(parent, spec.resolved_run_name)
    recorded = recorded_config(root)
    if recorded is not None:
        spec = adopt_recorded(spec, recorded)
    config = resolved_config(spec)
    if recorded is not None:
        check_same_run(recorded, config, f"run folder {root}")
    return RunFolder(spec, config, parent, root)


def write_config(folder: RunFolder) -> None:
    """Record the resolved config (``config.json``) before the first epoch."""
    write_json(join(folder.root, CONFIG), folder.config)


def finish(folder: RunFolder, state: TrainState, notes: dict[str, str], *, show: bool) -> None:
    """Record the best epoch's metrics (``results.json``) and, with ``show``, print the results table."""
    write_json(join(folder.root, RESULTS), results_dict(state, notes))
    if show:
        print(results_table(state, folder.spec.eval.ks, notes), flush=True)
