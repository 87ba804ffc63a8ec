"""Command-line arguments shared by every command that trains a run: ``raymmrec train`` (in one process
or on Ray workers, and ``jobs/train*.py`` through it) and ``raymmrec tune`` parse the same flags into
the same validated spec.

It sits below both the CLI and the Ray layer, so neither imports the other for them.
"""

from __future__ import annotations

import argparse

from raymmrec.config import RunSpec, load_spec


def add_run_arguments(p: argparse.ArgumentParser, default_method: str | None = None) -> None:
    p.add_argument("--method", default=default_method, help="registered method name (see `raymmrec methods`)")
    p.add_argument("--data", default=None, help="ml100k | synthetic[:preset] | path or URL of an MMRec folder")
    p.add_argument("--config", default=None, help="YAML file with data/train/eval/model sections")
    p.add_argument("--epochs", type=int, default=None, help="shortcut for train.epochs=N")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N (with Ray workers: auto | cpu | cuda, one GPU per worker)")
    p.add_argument("--output-dir", default=None,
                   help="parent of the run folder: a local folder, or with Ray workers also s3://... (default: runs)")
    p.add_argument("--run-name", default=None, help="run folder name; reusing one resumes that run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--verbose", action="store_true",
                   help="tracebacks with error messages (with Ray: also Ray Train's INFO logs and progress bars)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The validated spec of ``add_run_arguments``' flags; raises ``ConfigError`` (a ``ValueError``)."""
    overrides = list(args.overrides)
    for flag, key in (("data", "data.source"), ("epochs", "train.epochs"), ("device", "train.device"),
                      ("output_dir", "output_dir"), ("run_name", "run_name")):
        value = getattr(args, flag)
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    return load_spec(method=args.method, yaml_path=args.config, overrides=overrides)
