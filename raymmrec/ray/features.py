"""Feature extraction as a Ray Data batch job: catalogue -> encoder actors -> ``<modality>_feat.npy``.

    raymmrec features --catalog items.tsv --out data/mydataset --modality text --actors 2
    raymmrec features --catalog s3://bucket/images/ --out s3://bucket/mydataset --modality image \\
        --actors 4 --device cuda --batch-size 128
    raymmrec features --catalog items.parquet --out data/mydataset --modality image2text --local

Ray Data reads the catalogue (Parquet with ``ray.data.read_parquet``; a TSV/CSV or a folder listing is read on
the driver and handed over in blocks: those hold only texts and image paths, the images themselves are read by
the actors), ``map_batches`` runs the encoder as a stateful callable class (the model loads once per actor),
and the driver collects the rows in item-id order and writes them with the core writer
(:func:`raymmrec.features.writer.write_features`: temporary name then rename, manifest beside it). ``--local``
runs the same encoder in this process, without Ray. Progress (items/s, ETA) is printed every few seconds.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raymmrec.errors import EXPECTED, UserError, run_main
from raymmrec.features.catalog import (
    ID,
    INPUT,
    catalog_kind,
    catalog_root,
    image_column,
    prepare,
    read_catalog,
    with_item_ids,
)
from raymmrec.features.catalog import text_columns as pick_text_columns
from raymmrec.features.encoders import MODALITIES, Encoder, make_encoder
from raymmrec.features.extract import Progress, extract, recipe_name, report_failures
from raymmrec.features.writer import write_features

FAIL_KIND, FAIL_MSG, FEATURE = "failure_kind", "failure", "feature"


class EncodeActor:
    """(Ray Data actor) builds the encoder from ``factory`` and loads its model once; encodes batches."""

    def __init__(self, factory: Callable[[], Encoder], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = factory().load()

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        ids = batch[ID].to_numpy(np.int64)
        try:
            feats, failures = self.encoder.encode(batch[INPUT].tolist())
        except Exception as exc:
            raise RuntimeError(f"items {ids.min()}..{ids.max()}: {self.encoder.name} failed: {exc}") from exc
        return {ID: ids, FEATURE: feats,
                FAIL_KIND: np.array([f[0] if f else "" for f in failures], dtype=object),
                FAIL_MSG: np.array([f[1] if f else "" for f in failures], dtype=object)}


def _prepare_batch(batch: pd.DataFrame, modality: str, root: str, columns: list[str], where: str) -> pd.DataFrame:
    return prepare(with_item_ids(batch, where), modality, root=root, columns=columns, where=where)


def _arrow_fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    from raymmrec.data.io import open_fs

    fs, path = open_fs(url, storage_options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _block_rows(n: int, batch_size: int, max_blocks: int = 2000) -> int:
    """Rows per block: two encoder batches (so progress comes back often), at most ``max_blocks`` blocks."""
    return max(2 * batch_size, math.ceil(n / max_blocks), 1)


def catalog_dataset(catalog: str | pd.DataFrame, modality: str, *, columns: Sequence[str] | None = None,
                    batch_size: int = 64, storage_options: dict[str, Any] | None = None
                    ) -> tuple[Any, int, list[str]]:
    """A Ray Dataset of ``[itemID, input]`` rows in blocks of a few batches, its row count and the columns used.

    ``catalog``: a catalogue's path or URL, or an ``[itemID, input]`` frame made by the caller.
    """
    import ray

    input_kind = "text" if modality == "text" else "image"
    if isinstance(catalog, pd.DataFrame):
        frame = catalog
    elif catalog_kind(catalog) == "parquet":
        fs, path = _arrow_fs(catalog, storage_options)
        ds = ray.data.read_parquet(path, filesystem=fs)
        names = list(ds.schema().names)
        if ID not in names:
            raise UserError(f"{catalog}: no {ID!r} column (found {names[:8]})")
        empty = pd.DataFrame(columns=names)
        used = pick_text_columns(empty, columns, catalog) if input_kind == "text" else [image_column(empty, catalog)]
        n = ds.count()
        ds = ds.select_columns([ID, *used]).repartition(max(1, math.ceil(n / _block_rows(n, batch_size))))
        ds = ds.map_batches(_prepare_batch, batch_format="pandas", fn_kwargs={
            "modality": input_kind, "root": catalog_root(catalog), "columns": used, "where": catalog})
        return ds, n, used
    else:
        frame = read_catalog(catalog, input_kind, columns=columns, storage_options=storage_options)
    size = _block_rows(len(frame), batch_size)
    chunks = [frame.iloc[i:i + size] for i in range(0, len(frame), size)]
    return ray.data.from_pandas(chunks), len(frame), list(frame.attrs.get("columns", []))


def _user_cause(exc: BaseException) -> BaseException:
    """The innermost expected error (ours: one line naming the item) under Ray's wrappers, else ``exc``."""
    seen, todo = [], [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "cause", None), e.__cause__]
    for e in reversed(seen):
        if isinstance(e, EXPECTED) or (isinstance(e, RuntimeError) and str(e).startswith("items ")):
            return e
    return exc


def extract_ray(catalog: str | pd.DataFrame, out: str, modality: str, *, actors: int = 2, batch_size: int = 64,
                cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None,
                threads_per_actor: int | None = None, device: str | None = None,
                factory: Callable[[], Encoder] | None = None, text_columns: Sequence[str] | None = None,
                progress: bool = True, verbose: bool = False,
                storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Extract ``modality`` features with a pool of ``actors`` encoder actors; return the manifest.

    ``catalog``: a path or URL (see :mod:`raymmrec.features.catalog`) or an ``[itemID, input]`` frame.
    ``device`` (auto, cpu, cuda) and ``gpus_per_actor`` (a share of one GPU) as
    :func:`raymmrec.ray.devices.device_and_gpus` reads them. ``factory`` builds the encoder in each actor
    (default: :func:`make_encoder` for ``modality``, on that device); it must be picklable (a module-level
    function or ``functools.partial``).
    """
    import ray

    from raymmrec.ray.devices import cluster_gpus, device_and_gpus

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=verbose)
    device, gpus_per_actor = device_and_gpus(device, gpus_per_actor, cluster_gpus(), "actor")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    ds, n, used = catalog_dataset(catalog, modality, columns=text_columns, batch_size=batch_size,
                                  storage_options=storage_options)
    if factory is None:
        factory = functools.partial(make_encoder, modality, device=device, recipe=recipe_name(used))
    describe = factory().describe()  # constructors load nothing: cheap on the driver
    threads = threads_per_actor or max(1, round(cpus_per_actor))
    mapped = ds.map_batches(EncodeActor, batch_size=batch_size, batch_format="pandas",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"factory": factory, "threads": threads},
                            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
    bar = Progress(n, f"{modality} features ({actors} actor{'s' if actors != 1 else ''})", enabled=progress)
    ids, feats, kinds, msgs = [], [], [], []
    try:
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            ids.append(batch[ID])
            feats.append(np.asarray(batch[FEATURE], dtype=np.float32))
            kinds.append(batch[FAIL_KIND])
            msgs.append(batch[FAIL_MSG])
            bar.update(len(batch[ID]))
    except Exception as exc:
        cause = _user_cause(exc)
        if cause is exc:
            raise
        raise cause from None
    seconds = bar.finish()
    all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    uniq, counts = np.unique(all_ids, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"{catalog if isinstance(catalog, str) else 'catalogue'}: {ID} "
                        f"{int(uniq[counts > 1][0])} appears more than once")
    kinds_all = np.concatenate(kinds) if kinds else np.zeros(0, dtype=object)
    msgs_all = np.concatenate(msgs) if msgs else np.zeros(0, dtype=object)
    failures = {int(i): (str(k), str(m)) for i, k, m in zip(all_ids, kinds_all, msgs_all) if k}
    if progress and failures:
        report_failures(failures, pd.DataFrame({ID: all_ids, INPUT: [None] * len(all_ids)}))
    table = np.concatenate(feats) if feats else np.zeros((0, describe["dim"]), dtype=np.float32)
    return write_features(out, modality, all_ids, table, failures, describe, seconds=seconds, startup=bar.startup,
                          catalog=catalog if isinstance(catalog, str) else "", storage_options=storage_options)


# --------------------------------------------------------------------------------------------- command line
def add_actor_arguments(p: argparse.ArgumentParser | Any) -> None:
    """The encoder actors' options, of ``raymmrec features`` and ``raymmrec data``."""
    p.add_argument("--actors", type=int, default=2, help="encoder actors (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="items per encoder call (default 64)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda: where the encoders run (default auto: CUDA where there is a GPU)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="with GPUs (--device cuda, or auto on a GPU cluster): an actor's share of one GPU (default 1)")


def check_actor_arguments(args: argparse.Namespace) -> None:
    for flag in ("actors", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if args.cpus_per_actor <= 0:
        raise UserError(f"--cpus-per-actor: expected a number > 0, got {args.cpus_per_actor:g}")


def parser(prog: str = "raymmrec features") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--catalog", required=True,
                   help="items.parquet | items.tsv | items.csv | folder of <itemID>.<ext> images (local or s3://)")
    p.add_argument("--out", required=True, help="dataset folder (local or s3://): gets <modality>_feat.npy + manifest")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--text-columns", default=None,
                   help="comma-separated columns joined into the item text (default: 'text', else MMRec's "
                        "title,brand,categories,description where present)")
    p.add_argument("--local", action="store_true", help="no Ray: encode in this process")
    add_actor_arguments(p)
    p.add_argument("--threads-per-actor", type=int, default=None, help="torch threads per actor (default: its CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="tracebacks with errors, Ray Data's own logs and bars")
    return p


def main(argv: list[str] | None = None, prog: str = "raymmrec features") -> int:
    args = parser(prog).parse_args(argv)
    return run_main(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    check_actor_arguments(args)
    columns = [c.strip() for c in args.text_columns.split(",") if c.strip()] if args.text_columns else None
    if args.local:
        manifest = extract(args.catalog, args.out, args.modality, batch_size=args.batch_size, text_columns=columns,
                           device=args.device, progress=not args.quiet)
    else:
        manifest = extract_ray(args.catalog, args.out, args.modality, actors=args.actors, batch_size=args.batch_size,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                               device=args.device, threads_per_actor=args.threads_per_actor, text_columns=columns,
                               progress=not args.quiet, verbose=args.verbose)
    run = manifest["runs"][-1]
    print(f"{args.out.rstrip('/')}/{args.modality}_feat.npy: {manifest['rows']} x {manifest['dim']} "
          f"({run['mode']}: items {run['first_id']}..{run['last_id']}, {run['items_per_s']} items/s; "
          f"{len(run['missing'])} missing, {len(run['broken'])} broken)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
