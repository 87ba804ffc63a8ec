"""Command line: ``raymmrec train|tune|reproduce|recommend|evaluate|serve|features|data|methods``.

``raymmrec train --method bm3 --data ml100k [--config run.yaml] [key=value ...]`` (one process).
``raymmrec train ... --num-workers N [--address HOST:PORT]`` (Ray Train workers: a local Ray or a cluster).
``raymmrec tune --method bm3 --data lfm2k [--grid paper|wide] [--samples N]`` (Ray Tune).
``raymmrec reproduce --methods bpr,lightgcn,vbpr,bm3 --data lfm2k,dbbook`` (Ray Tune, one table).
``raymmrec unlearn --run runs/bm3-lfm2k --request forget.parquet [--gold]`` (one Ray task per request).
``raymmrec serve --run runs/bm3-lfm2k [--port 8000] [--replicas N]`` (Ray Serve: GET /recommend?user=U&k=K).
``raymmrec features --catalog items.tsv --out data/mydataset --modality text|image|image2text [--local]`` (Ray Data).
``raymmrec data amazon --ratings ratings_Baby.csv --meta meta_Baby.json.gz --images image_features_Baby.b
--out data/baby [--local]`` (Ray Data: an MMRec folder from the Amazon releases' raw files).

Overrides use the config's sections, e.g. ``train.epochs=50 model.reg_weight=1e-4
data.modalities=[text,audio_whisper]``. ``raymmrec methods`` lists the registered methods.
Mistakes in the config or the data end the command with one line ``error: ...`` (exit code 2);
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys

from raymmrec.args import add_run_arguments, spec_from_args
from raymmrec.config import ConfigError
from raymmrec.errors import run_main

#: Exit code of a command whose reader closed the pipe (128 + SIGPIPE, as shells report ``yes | head``).
EXIT_BROKEN_PIPE = 141


_RAY_COMMANDS = {"tune": "sweep a method's hyperparameters with Ray Tune (see `raymmrec tune --help`)",
                 "reproduce": "paper grids of several methods on several datasets, one comparison table",
                 "study": "noisy-label and sampler studies of BPR/BPO/NBPO (see `raymmrec study --help`)",
                 "unlearn": "forget users, items or interactions from a trained run (MMRecUn), each request a Ray task",
                 "serve": "live top-K recommendations of a trained run over HTTP with Ray Serve; swaps models in place",
                 "features": "turn an item catalogue into <modality>_feat.npy (text, image, image2text) with Ray Data",
                 "data": "build a dataset folder from public raw files (`data amazon`: the Amazon review "
                         "releases) with Ray Data"}


def _own_parser(command: str):  # noqa: ANN202 - main(argv, prog) of a command that parses its own arguments
    """The ``main(argv, prog=...)`` of ``raymmrec <command>`` for the commands that parse their own
    arguments; imported only when that command runs (the Ray layer only for a Ray command)."""
    if command == "tune":
        from raymmrec.ray.tune import tune_main

        return tune_main
    if command == "study":  # no Ray: runs one after another in this process
        from raymmrec.study import main as study_main

        return study_main
    if command == "features":
        from raymmrec.ray.features import main as features_main

        return features_main
    if command == "data":
        from raymmrec.ray.amazon import main as data_main

        return data_main
    if command == "unlearn":
        from raymmrec.ray.unlearn import main as unlearn_main

        return unlearn_main
    if command == "serve":
        from raymmrec.ray.serve import main as serve_main

        return serve_main
    if command == "reproduce":
        from raymmrec.ray.reproduce import main as reproduce_main

        return reproduce_main
    raise KeyError(command)


def job_main(command: str, *, prog: str, argv: list[str] | None = None) -> int:
    """``raymmrec <command>`` as its own program: the entry point of ``jobs/<command>.py``, which
    ``ray job submit`` runs on a cluster without installing the package."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return _own_parser(command)(argv, prog=prog)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _RAY_COMMANDS:  # these commands parse their own arguments
        return job_main(argv[0], prog=f"raymmrec {argv[0]}", argv=argv[1:])
    parser = argparse.ArgumentParser(prog="raymmrec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train and evaluate one method, in this process or on Ray "
                                                     "workers (--num-workers N)"))
    sub.add_parser("methods", help="list registered methods")
    for name, what in _RAY_COMMANDS.items():
        sub.add_parser(name, help=what, add_help=False)
    for name, what in (("recommend", "print users' top-K items from a trained run"),
                       ("evaluate", "re-evaluate a trained run's best model on its dataset's splits")):
        q = sub.add_parser(name, help=what)
        q.add_argument("--run", required=True, help="run folder or URL (holds config.json and best.pt)")
        q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        q.add_argument("--verbose", action="store_true", help="show the traceback of an error")
        if name == "recommend":
            q.add_argument("--users", required=True, help="comma-separated user ids, e.g. 3,17")
            q.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    args = parser.parse_args(argv)
    if args.command == "recommend":
        return run_main(lambda: recommend(args), verbose=args.verbose)
    if args.command == "evaluate":
        return run_main(lambda: evaluate(args), verbose=args.verbose)
    if args.command == "methods":
        from raymmrec.registry import get_model, model_names

        for name in model_names():
            doc = (get_model(name).__module__ and sys.modules[get_model(name).__module__].__doc__ or "").strip()
            print(f"{name:10s} {doc.splitlines()[0] if doc else ''}")
        return 0
    return run_main(lambda: train(args), verbose=args.verbose)


#: ``raymmrec train``'s options that spread a run over Ray workers: (flag, dest); they mean nothing in one process
WORKER_OPTIONS = (("--address", "address"), ("--shard", "shard"), ("--cpus-per-worker", "cpus_per_worker"),
                  ("--max-failures", "max_failures"), ("--wait-for-resources", "wait_for_resources"),
                  ("--allow-local-paths", "allow_local_paths"))


def add_train_arguments(p: argparse.ArgumentParser, default_method: str | None = None) -> None:
    """``raymmrec train``'s options (also those of ``jobs/train*.py``, which call :func:`train_main`)."""
    add_run_arguments(p, default_method=default_method)
    p.add_argument("--smoke-test", action="store_true", help="2 epochs on synthetic:tiny (checks the setup)")
    g = p.add_argument_group("Ray workers", "train with Ray Train workers instead of this process; the other "
                                            "options apply unchanged (--device cuda: one GPU per worker)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="Ray Train workers (a local Ray, or the cluster of --address / RAY_ADDRESS); "
                        "without it the run is one process")
    g.add_argument("--address", default=None, help="Ray cluster to join, e.g. 10.0.0.5:6379 (default: RAY_ADDRESS, "
                                                   "else a local Ray)")
    g.add_argument("--shard", choices=("auto", "columns", "none"), default=None,
                   help="how workers split the model (train.shard): columns (each holds a block of every "
                        "table's columns), none (data-parallel, each holds everything), auto (columns where "
                        "the method supports it; the default)")
    g.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPU resource per worker (default: what fits; 0.5 each for 2 workers on 2 cores)")
    g.add_argument("--max-failures", type=int, default=None, help="worker failures to recover from (default 2)")
    g.add_argument("--wait-for-resources", action="store_true",
                   help="don't fail fast when the cluster is too small (autoscaling clusters)")
    g.add_argument("--allow-local-paths", action="store_true",
                   help="allow local output/data paths on a multi-node cluster (a shared mount on every node)")


def train_main(argv: list[str] | None = None, *, prog: str, default_method: str | None = None,
               default_workers: int | None = None) -> int:
    """``raymmrec train`` as its own program: the entry point of ``jobs/train*.py`` for ``ray job submit``
    (``default_workers=1``: on Ray, one worker unless ``--num-workers`` says otherwise)."""
    what = default_method or "a registered method (--method)"
    p = argparse.ArgumentParser(prog=prog, description=f"Train {what}: `raymmrec train` on Ray workers "
                                                       f"({default_workers or 'no'} unless --num-workers is given).")
    add_train_arguments(p, default_method=default_method)
    p.set_defaults(num_workers=default_workers)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: train(args), verbose=args.verbose)


def train(args: argparse.Namespace) -> int:
    """``raymmrec train``: check the options and the spec, then train in this process or, with
    ``--num-workers``, on Ray Train workers (the Ray layer is imported only then)."""
    if args.num_workers is None:
        given = [flag for flag, dest in WORKER_OPTIONS if getattr(args, dest) not in (None, False)]
        if given:
            raise ConfigError(f"{', '.join(given)}: {'options' if len(given) > 1 else 'an option'} of Ray workers; "
                              "add --num-workers N to train on Ray (without it the run is one process)")
    if args.smoke_test:
        args.data = args.data or "synthetic:tiny"
        args.epochs = args.epochs or 2
    if args.shard is not None:
        args.overrides.append(f"train.shard={args.shard}")
    spec = spec_from_args(args)
    from raymmrec.train.build import run_notes
    from raymmrec.train.run import results_table, run

    if args.num_workers is None:
        state = run(spec, progress=not args.no_progress)
    else:
        from raymmrec.ray.launch import Workers, launch

        workers = Workers(num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
                          wait_for_resources=args.wait_for_resources, allow_local_paths=args.allow_local_paths,
                          address=args.address)
        if args.max_failures is not None:
            workers.max_failures = args.max_failures
        state = launch(spec, workers, progress=not args.no_progress, verbose=args.verbose)
    if args.no_progress:  # run() and launch() print the table otherwise
        print(results_table(state, spec.eval.ks, run_notes(spec)), flush=True)
    return 0


def recommend(args: argparse.Namespace) -> int:
    """``raymmrec recommend``: each user's top-K item ids (and names), training items excluded.

    A user with fewer unseen items than ``--k`` gets those (a note on stderr says so); a repeated
    id is listed once. Output cut short by the reader (``| head``) ends the command quietly.
    """
    from raymmrec.recommend import item_names, parse_users, top_k
    from raymmrec.train.trained import load_trained

    trained = load_trained(args.run, device=args.device)
    users = parse_users(args.users, trained.data.n_users)
    items, scores = top_k(trained, users, args.k)
    names = item_names(trained.spec) or {}
    try:
        print(f"# {trained.spec.method} on {trained.spec.data.source}, {trained.weights_note()}")
        print("user\trank\titem\tscore" + ("\tname" if names else ""))
        for u, row, srow in zip(users.tolist(), items.tolist(), scores.tolist()):
            shown = [(i, s) for i, s in zip(row, srow) if i >= 0]
            if len(shown) < args.k:
                print(f"note: user {u} has only {len(shown)} items it has not seen; listing those "
                      f"(--k {args.k})", file=sys.stderr)
            for r, (i, s) in enumerate(shown, start=1):
                print(f"{u}\t{r}\t{i}\t{s:.4f}" + (f"\t{names.get(i, '')[:80]}" if names else ""))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped reading (`| head`): stop quietly, as Unix tools do
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's flush at exit does not fail again
        return EXIT_BROKEN_PIPE
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``raymmrec evaluate``: validation and test metrics of a run's best weights."""
    from raymmrec.recommend import evaluate as evaluate_trained
    from raymmrec.train.trained import load_trained

    trained = load_trained(args.run, device=args.device)
    ks = trained.spec.eval.ks
    results = evaluate_trained(trained, ks)
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    print(f"# {trained.spec.method} on {trained.spec.data.source}, {trained.weights_note()}")
    print("split " + "".join(c.rjust(11) for c in cols))
    for split, metrics in results.items():
        print(split.ljust(6) + "".join(f"{metrics[c]:11.4f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
