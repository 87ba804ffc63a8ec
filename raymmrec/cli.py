"""Command line: ``raymmrec train --method bm3 --data ml100k [--config run.yaml] [key=value ...]``.

Overrides use the config's sections, e.g. ``train.epochs=50 model.reg_weight=1e-4
data.modalities=[text,audio_whisper]``. ``raymmrec methods`` lists the registered methods.
Mistakes in the config or the data end the command with one line ``error: ...`` (exit code 2);
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys

from raymmrec.config import RunSpec, load_spec
from raymmrec.errors import run_main


def add_run_arguments(p: argparse.ArgumentParser, default_method: str | None = None) -> None:
    p.add_argument("--method", default=default_method, help="registered method name (see `raymmrec methods`)")
    p.add_argument("--data", default=None, help="ml100k | synthetic[:preset] | path or URL of an MMRec folder")
    p.add_argument("--config", default=None, help="YAML file with data/train/eval/model sections")
    p.add_argument("--epochs", type=int, default=None, help="shortcut for train.epochs=N")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--output-dir", default=None, help="folder for run folders (default: runs)")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raymmrec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("train", help="train and evaluate one method in this process"))
    sub.add_parser("methods", help="list registered methods")
    args = parser.parse_args(argv)
    if args.command == "methods":
        from raymmrec.registry import get_model, model_names

        for name in model_names():
            doc = (get_model(name).__module__ and sys.modules[get_model(name).__module__].__doc__ or "").strip()
            print(f"{name:10s} {doc.splitlines()[0] if doc else ''}")
        return 0
    return run_main(lambda: train(args), verbose=args.verbose)


def train(args: argparse.Namespace) -> int:
    """``raymmrec train``: build and check the spec first, then train in this process."""
    spec = spec_from_args(args)
    from raymmrec.train.run import results_table, run

    state = run(spec, progress=not args.no_progress)
    if args.no_progress:  # run() already printed the table otherwise
        print(results_table(state, spec.eval.ks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
