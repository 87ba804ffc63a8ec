"""Unlearning requests as Ray tasks: each request its own task with its own CPUs or GPU, several in flight.

    raymmrec unlearn --run runs/bm3-lfm2k --request forget_a.parquet --request forget_b.csv [--gold]
    ray job submit --working-dir . -- python jobs/unlearn.py --run s3://bucket/runs/bm3-lfm2k \\
        --request s3://bucket/requests/user-42.parquet --device cuda

The run's dataset is read and checked once for the command, by one task (:mod:`raymmrec.ray.shared`);
every request's task maps its arrays from the object store without copying. Every task reads the
trained run's weights from storage (local or s3; never altered), runs
:func:`raymmrec.unlearning.unlearn` and writes its own new run folder (weights, config, report). A task
that fails or is killed leaves no folder behind (the core stages it and renames it at the end). The
driver prints each request's report table as it finishes and a one-line error for each that failed.
``--local`` runs the requests one after another in this process, without Ray.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from raymmrec.config import parse_value
from raymmrec.errors import run_main
from raymmrec.ray.shared import SharedData, fetch, get_or_raise_cause, share


def _unlearn_task(run: str, request: str, options: dict[str, Any], output_dir: str | None, name: str | None,
                  gold: bool, device: str, threads: int, data: SharedData) -> dict[str, Any]:
    """(Ray task) one request, in the task's process, over the command's dataset ``data`` (object
    store); returns the report without its per-epoch history."""
    import torch

    from raymmrec.unlearning import unlearn

    torch.set_num_threads(threads)
    loaded, _ = fetch(data)
    report = unlearn(run, request, options=options, output_dir=output_dir, name=name, gold=gold, device=device,
                     progress=True, data=loaded)
    report.pop("history", None)
    return report


def task_path(path: str | None) -> str | None:
    """A path as a task sees it: a task runs in another directory (and maybe on another node), so a
    local path, plain, relative or ``file://``, becomes absolute and plain; a URL stays."""
    if path is None:
        return None
    from raymmrec.files import location

    return location(path)


def submit(run: str, requests: list[str], *, options: dict[str, Any] | None = None, output_dir: str | None = None,
           names: list[str | None] | None = None, gold: bool = False, cpus: float = 1.0, gpus: float | None = None,
           device: str | None = None, echo: bool = True) -> list[dict[str, Any] | BaseException]:
    """Run every request as its own Ray task (all in flight at once, as resources allow).

    The run's dataset is read once, by one task, before any request's task starts (a bad run folder
    or dataset: its one-line error, raised here). Returns, in request order, each report or the
    exception its task raised.
    """
    import ray

    from raymmrec.ray.launch import absolute_data_paths
    from raymmrec.unlearning.run import trained_spec

    run, output_dir = task_path(run), task_path(output_dir)
    spec = trained_spec(run)
    absolute_data_paths(spec)  # the loading task runs in another directory
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=echo)
    from raymmrec.ray.devices import cluster_gpus, device_and_gpus

    device, gpus = device_and_gpus(device, gpus, cluster_gpus(), "request")  # before any data is read
    data = share(spec, prepare=False)
    task = ray.remote(_unlearn_task)
    names = names or [None] * len(requests)
    threads = max(1, int(cpus))
    refs = [task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                         name=f"unlearn:{req.rsplit('/', 1)[-1]}").remote(
                run, task_path(req), dict(options or {}), output_dir, name, gold, device, threads, data)
            for req, name in zip(requests, names)]
    results: dict[int, Any] = {}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = refs.index(done[0])
        try:
            results[i] = get_or_raise_cause(done[0])
            if echo:
                print(f"\n[{requests[i]}] -> {results[i]['folder']}\n{results[i]['table']}\n", flush=True)
        except Exception as e:  # noqa: BLE001 - reported per request; the others go on
            results[i] = e
            if echo:
                print(f"error: {requests[i]}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return [results[i] for i in range(len(refs))]


def parser(prog: str = "raymmrec unlearn") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="trained run folder or URL (config.json + best.pt)")
    p.add_argument("--request", action="append", required=True,
                   help="forget request: Parquet or CSV with userID, itemID or both (repeat for several)")
    p.add_argument("--output-dir", default=None, help="where the new run folders go (default: beside --run)")
    p.add_argument("--name", action="append", default=None, help="run folder name per request (default: derived)")
    p.add_argument("--gold", action="store_true", help="also retrain from scratch on the retain data and compare")
    p.add_argument("--cpus-per-request", type=float, default=1.0, help="CPUs per task (default 1)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda: where each request trains (default auto: a GPU where the cluster has one)")
    p.add_argument("--gpus-per-request", type=float, default=None,
                   help="with GPUs (--device cuda, or auto on a GPU cluster): a task's share of one GPU (default 1)")
    p.add_argument("--local", action="store_true", help="no Ray: run the requests one by one in this process")
    p.add_argument("--serve", default=None, metavar="APP",
                   help="after the request succeeds, swap the running Ray Serve app APP to the new run in place "
                        "(raymmrec serve); one --request only")
    p.add_argument("--verbose", action="store_true", help="tracebacks with error messages")
    p.add_argument("options", nargs="*", metavar="option=value",
                   help="MMRecUn options, e.g. epochs=5 forget_weight=0.5 reset=init (see raymmrec.unlearning)")
    return p


def main(argv: list[str] | None = None, prog: str = "raymmrec unlearn") -> int:
    args = parser(prog).parse_args(argv)
    return run_main(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    from raymmrec.errors import UserError
    from raymmrec.unlearning.mmrecun import options_from

    options = {}
    for kv in args.options:
        key, sep, value = kv.partition("=")
        if not sep:
            raise UserError(f"expected option=value, got {kv!r}")
        options[key] = parse_value(value)
    options_from(options)  # unknown or bad options end here, before any data or task
    names = args.name or [None] * len(args.request)
    if len(names) != len(args.request):
        raise UserError(f"--name given {len(names)} times for {len(args.request)} requests")
    if args.serve is not None:  # checked before any work: one request, and the app runs on this cluster
        from raymmrec.ray.serve import connect, running_prefix

        if len(args.request) != 1:
            raise UserError(f"--serve: expected one --request (the run it serves), got {len(args.request)}")
        connect(start_local=False)
        if running_prefix(args.serve) is None:  # the swap keeps the app's prefix: it must be known
            raise UserError(f"--serve: Serve does not tell app {args.serve!r}'s route prefix, which the swap "
                            "keeps; swap with `raymmrec serve --run <unlearned run> --route-prefix <its prefix>`")
    if args.local:
        from raymmrec.files import location
        from raymmrec.train.build import load_data
        from raymmrec.unlearning import unlearn
        from raymmrec.unlearning.run import trained_spec

        data = load_data(trained_spec(location(args.run)))  # once for every request
        for req, name in zip(args.request, names):
            report = unlearn(args.run, req, options=options, output_dir=args.output_dir, name=name, gold=args.gold,
                             data=data)
            print(f"\n{report['table']}\n")
        return _serve(args.serve, report)
    results = submit(args.run, args.request, options=options, output_dir=args.output_dir, names=names,
                     gold=args.gold, cpus=args.cpus_per_request, gpus=args.gpus_per_request, device=args.device)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        if len(failed) == 1 and len(results) == 1:
            raise failed[0]
        print(f"error: {len(failed)} of {len(results)} requests failed (above)", file=sys.stderr)
        return 2
    return _serve(args.serve, results[0])


def _serve(app: str | None, report: dict[str, Any]) -> int:
    """``--serve APP``: the live app now answers from the unlearned run (Serve's in-place rolling update)."""
    if app is None:
        return 0
    from raymmrec.ray.serve import deploy, where

    out = deploy(report["folder"], app=app)  # the app's route prefix, host and port are kept
    print(f"app {app!r}: swapped from {out['swapped_from']} to {out['run']} {where(out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
