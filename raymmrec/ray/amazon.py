"""``raymmrec data amazon``: an MMRec dataset folder from the raw files of the Amazon review releases.

    raymmrec data amazon --ratings ratings_Baby.csv --meta meta_Baby.json.gz \\
        --images image_features_Baby.b --out data/baby
    raymmrec data amazon --reviews s3://bucket/raw/Baby_Products.jsonl.gz \\
        --meta s3://bucket/raw/meta_Baby_Products.jsonl.gz --out s3://bucket/datasets/baby23 --address auto
    raymmrec data amazon ... --local              # one process, no Ray

The folder holds ``<name>.inter``, ``text_feat.npy`` and ``image_feat.npy`` (each with its manifest),
``u_id_mapping.csv`` / ``i_id_mapping.csv`` (the raw user ids and ASINs of ids 0..n-1, as MMRec names
them) and ``amazon.json`` (the sources and what every step kept). The processing is MMRec's, step by
step (:mod:`raymmrec.data.amazon`). Stages, with a progress line each:

1. interactions: Ray Data reads each file in a task (decompressing it as it goes) and hands chunks of
   lines to parser tasks that run in parallel;
2. MMRec's steps on the driver: repeated pairs, the k-core, ids, the split (a k-core round is a
   ``bincount`` over integer ids, a second for tens of millions of rows: cheaper than a Ray shuffle);
3. metadata: the same two Ray Data stages; only the kept items' texts come back;
4. text features: the encoder actors of ``raymmrec features`` (all-MiniLM-L6-v2);
5. image features: the ``.b`` file read as record ranges in parallel, or a folder of ``<ASIN>.<ext>``
   images through the image encoder's actors.

Everything is written to a temporary folder first: beside ``--out`` and renamed into place on a local disk;
on S3 the files are uploaded with ``<name>.inter`` last, so a reader never takes a half-written folder
for a dataset. Inputs may be local or ``s3://``; on a multi-node cluster give ``s3://`` inputs (or paths
every node sees).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raymmrec.data import amazon as core
from raymmrec.data.builtin import DEFAULT_SEED
from raymmrec.data.schema import DataError
from raymmrec.errors import UserError, run_main
from raymmrec.features.encoders import Encoder, make_encoder
from raymmrec.features.extract import extract
from raymmrec.features.writer import write_features
from raymmrec.files import is_url, location, open_fs
from raymmrec.ray.features import _user_cause, add_actor_arguments, check_actor_arguments, extract_ray

BUILD_FILE = "amazon.json"
#: Files an ``--overwrite`` may replace: a folder holding anything else is refused.
_OURS = re.compile(r"^(.+\.inter|.+_feat\.npy|.+_feat\.manifest\.json|u_id_mapping\.csv|i_id_mapping\.csv|"
                   r"amazon\.json|dataset\.yaml)$")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclass
class Sources:
    """The raw files: interactions from ``ratings`` (2014 CSV) or ``reviews`` (JSON lines, 2014 or 2023)."""

    ratings: str | None = None
    reviews: str | None = None
    meta: str | None = None
    images: str | None = None  # a 2014 image_features_<Cat>.b
    image_dir: str | None = None  # a folder of <ASIN>.<ext> images

    def check(self) -> None:
        if (self.ratings is None) == (self.reviews is None):
            raise UserError("give exactly one of --ratings (2014 ratings_<Cat>.csv) and --reviews "
                            "(2014 reviews_<Cat>_5.json.gz or 2023 <Cat>.jsonl.gz)")
        if self.images and self.image_dir:
            raise UserError("give --images (a .b file) or --image-dir (a folder of images), not both")


@dataclass
class Options:
    """How to run: Ray (``local=False``) or one process, and the encoders."""

    kcore: int = 5
    seed: int = DEFAULT_SEED
    skip_bad_lines: bool = False
    overwrite: bool = False
    name: str | None = None
    local: bool = False
    address: str | None = None
    actors: int = 2
    batch_size: int = 64
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # a share of one GPU (raymmrec.ray.devices)
    device: str | None = None  # auto | cpu | cuda
    text_factory: Callable[[], Encoder] | None = None  # default: all-MiniLM-L6-v2
    image_factory: Callable[[], Encoder] | None = None  # --image-dir only; default: EfficientNet-Lite0
    progress: bool = True
    verbose: bool = False
    storage_options: dict[str, Any] | None = field(default=None, repr=False)


def _encoder_device(opts: Options) -> str | None:
    """The encoders' device: on Ray the one :mod:`raymmrec.ray.devices` settled; in one process the
    one asked for (None, auto: CUDA where this machine has it)."""
    return None if opts.device in (None, "auto") else opts.device


def _say(opts: Options, line: str) -> None:
    if opts.progress:
        print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- stages
def _file_chunks(batch: dict[str, np.ndarray], paths: Sequence[str], chunk_lines: int,
                 storage_options: dict[str, Any] | None) -> Any:
    """(Ray Data, one file per call) the file's non-blank lines in chunks: ``file``, ``line``, ``raw``."""
    for k in batch["file"].tolist():
        for numbers, lines in core.line_chunks(paths[k], chunk_lines, storage_options):
            yield {"file": np.full(len(lines), k, dtype=np.int64), "line": numbers,
                   "raw": np.asarray(lines, dtype=object)}


def _parse_chunk(batch: dict[str, np.ndarray], paths: Sequence[str], parse: Callable[..., pd.DataFrame],
                 kwargs: dict[str, Any]) -> pd.DataFrame:
    """(Ray Data) ``parse`` on the rows of each file in the batch, with a ``file`` column."""
    out = []
    for k in np.unique(batch["file"]).tolist():
        rows = batch["file"] == k
        frame = parse(batch["raw"][rows], batch["line"][rows], paths[k], **kwargs)
        out.append(frame.assign(file=np.int64(k)))
    return pd.concat(out, ignore_index=True)


def _b_batch(batch: dict[str, np.ndarray], path: str, keep: frozenset[str] | None, skip_bad: bool,
             storage_options: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """(Ray Data) the kept records of each ``(start, count)`` range; bad records as rows with an ``error``."""
    asins, feats, errors = [], [], []
    for start, count in zip(batch["start"].tolist(), batch["count"].tolist()):
        a, f, bad = core.read_b_records(path, start, count, keep, skip_bad, storage_options)
        asins += a + [""] * len(bad)
        feats += [f, np.zeros((len(bad), core.B_DIM), dtype=np.float32)]
        errors += [""] * len(a) + bad
    return {"asin": np.asarray(asins, dtype=object), "feature": np.concatenate(feats),
            "error": np.asarray(errors, dtype=object)}


class LocalStages:
    """The stages in this process, one chunk after another."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts

    def lines(self, path: str, parse: Callable[..., pd.DataFrame], kwargs: dict[str, Any], what: str) -> pd.DataFrame:
        parts, t0, last, n = [], time.perf_counter(), time.perf_counter(), 0
        for numbers, lines in core.line_chunks(path, storage_options=self.opts.storage_options):
            parts.append(parse(lines, numbers, path, **kwargs))
            n += len(lines)
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                _say(self.opts, f"{what}: {n:,} lines parsed ({last - t0:.0f}s)")
        return pd.concat(parts, ignore_index=True).assign(file=np.int64(0)) if parts else pd.DataFrame()

    def b_records(self, path: str, ranges: list[tuple[int, int]], keep: frozenset[str]) -> pd.DataFrame:
        return pd.concat([_b_frame(_b_batch({"start": np.array([s]), "count": np.array([c])}, path, keep,
                                            self.opts.skip_bad_lines, self.opts.storage_options))
                          for s, c in ranges] or [_b_frame(_NO_RECORDS)], ignore_index=True)

    def close(self) -> None:
        pass

    def encode(self, frame: pd.DataFrame, out: str, modality: str, factory: Callable[[], Encoder]) -> dict[str, Any]:
        return extract(frame, out, modality, encoder=factory(), batch_size=self.opts.batch_size,
                       progress=self.opts.progress)


_NO_RECORDS = {"asin": np.zeros(0, object), "feature": np.zeros((0, core.B_DIM), np.float32),
               "error": np.zeros(0, object)}


def _b_frame(batch: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"asin": batch["asin"], "feature": list(batch["feature"]), "error": batch["error"]})


class RayStages(LocalStages):
    """The stages as Ray Data pipelines on a local Ray or the cluster of ``--address``."""

    def __init__(self, opts: Options) -> None:
        super().__init__(opts)
        import ray

        if not ray.is_initialized():  # Ray's own processes' output reaches us only with --verbose
            ray.init(address=opts.address, log_to_driver=opts.verbose,
                     logging_level=logging.INFO if opts.verbose else logging.WARNING)
        from raymmrec.ray.devices import cluster_gpus, device_and_gpus

        opts.device, opts.gpus_per_actor = device_and_gpus(opts.device, opts.gpus_per_actor, cluster_gpus(), "actor")
        ctx = ray.data.DataContext.get_current()
        self._restore = (ctx.enable_progress_bars, ctx.raise_original_map_exception,
                         logging.getLogger("ray.data").level)
        ctx.enable_progress_bars = opts.verbose
        # a parser's DataError reaches the driver as itself (one line naming the file and line), not as
        # Ray Data's UserCodeException, whose message is the worker's traceback
        ctx.raise_original_map_exception = True
        if not opts.verbose:  # the error is raised here in any case; Ray Data's log lines about it are noise
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)

    def close(self) -> None:
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars, ctx.raise_original_map_exception, level = self._restore
        logging.getLogger("ray.data").setLevel(level)

    def _collect(self, ds: Any, what: str, count: Callable[[Any], int]) -> list[Any]:
        parts, t0, last, n = [], time.perf_counter(), time.perf_counter(), 0
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                parts.append(batch)
                n += count(batch)
                if time.perf_counter() - last > 10:
                    last = time.perf_counter()
                    _say(self.opts, f"{what}: {n:,} so far ({last - t0:.0f}s)")
        except Exception as exc:
            cause = _user_cause(exc)
            if cause is exc:
                raise
            if cause.args and isinstance(cause.args[0], str):  # our messages are one line: Ray Data appends
                cause.args = (cause.args[0].splitlines()[0], *cause.args[1:])  # its retry advice below it
            raise cause from None
        return parts

    def lines(self, path: str, parse: Callable[..., pd.DataFrame], kwargs: dict[str, Any], what: str) -> pd.DataFrame:
        import ray

        paths = [path]
        ds = ray.data.from_items([{"file": 0}])
        # the reader asks for half a CPU: a different request than the parsers', so Ray Data keeps the two
        # stages apart and parses the chunks of one file in parallel while the file is being read
        ds = ds.map_batches(_file_chunks, batch_size=1, num_cpus=0.5, fn_kwargs={
            "paths": paths, "chunk_lines": core.CHUNK_LINES, "storage_options": self.opts.storage_options})
        ds = ds.map_batches(_parse_chunk, batch_size=None, batch_format="numpy",
                            fn_kwargs={"paths": paths, "parse": parse, "kwargs": kwargs})
        parts = self._collect(ds, f"{what}: lines parsed", len)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def b_records(self, path: str, ranges: list[tuple[int, int]], keep: frozenset[str]) -> pd.DataFrame:
        import ray

        ds = ray.data.from_items([{"start": s, "count": c} for s, c in ranges])
        ds = ds.map_batches(_b_batch, batch_size=1, batch_format="numpy", fn_kwargs={
            "path": path, "keep": keep, "skip_bad": self.opts.skip_bad_lines,
            "storage_options": self.opts.storage_options})
        parts = self._collect(ds, "image features: records read", len)
        return pd.concat(parts, ignore_index=True) if parts else _b_frame(_NO_RECORDS)

    def encode(self, frame: pd.DataFrame, out: str, modality: str, factory: Callable[[], Encoder]) -> dict[str, Any]:
        o = self.opts
        return extract_ray(frame, out, modality, actors=o.actors, batch_size=o.batch_size,
                           cpus_per_actor=o.cpus_per_actor, gpus_per_actor=o.gpus_per_actor or None,
                           device=o.device, factory=factory, progress=o.progress, verbose=o.verbose)


# --------------------------------------------------------------------------------------------- the build
def _split_status(rows: pd.DataFrame, what: str, opts: Options) -> tuple[pd.DataFrame, dict[str, int]]:
    """Good rows in file order, and the counts of lines, missing and bad ones (the first bad one said)."""
    if rows.empty:
        return rows, {"lines": 0, "missing": 0, "bad_lines": 0}
    rows = rows.sort_values(["file", "line"], kind="stable")
    status = rows["status"].to_numpy()
    counts = {"lines": int(len(rows)), "missing": int((status == core.MISSING).sum()),
              "bad_lines": int((status == core.BAD).sum())}
    if counts["bad_lines"]:
        first = rows.loc[status == core.BAD, "error"].iloc[0]
        _say(opts, f"{what}: skipped {counts['bad_lines']:,} bad line(s); the first: {first}")
    return rows.loc[status == core.OK].drop(columns=["status", "error", "file"]), counts


def _interactions(src: Sources, stages: LocalStages, opts: Options,
                  times: dict[str, float]) -> tuple[core.AmazonData, dict[str, Any]]:
    path = src.ratings or src.reviews
    kind = "ratings" if src.ratings else "reviews"
    t0 = time.perf_counter()
    rows = stages.lines(path, core.parse_interactions, {"kind": kind, "skip_bad": opts.skip_bad_lines},
                        "interactions")
    times["interactions: read and parse"] = time.perf_counter() - t0
    rows, counts = _split_status(rows, "interactions", opts)
    if rows.empty:
        raise DataError(f"{path}: no interaction with a user, an item and a timestamp")
    data = core.process(rows, kcore=opts.kcore, seed=opts.seed, source=path)
    s = data.steps
    _say(opts, f"interactions: {counts['lines']:,} lines of {posixpath.basename(path)} ({counts['missing']:,} "
               f"without user/item/timestamp, {s['duplicates_dropped']:,} repeated pair(s)) -> {s['after_kcore']:,} "
               f"in the {s['kcore']}-core after {s['kcore_rounds']} round(s); {s['users']:,} users, "
               f"{s['items']:,} items; {s['train']:,}/{s['valid']:,}/{s['test']:,} train/valid/test "
               f"(seed {s['seed']}) ({time.perf_counter() - t0:.1f}s)")
    times["MMRec's steps"] = time.perf_counter() - t0 - times["interactions: read and parse"]
    return data, {**counts, **s}


def _text(src: Sources, data: core.AmazonData, tmp: str, stages: LocalStages, opts: Options,
          times: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    keep = frozenset(data.item_ids.tolist())
    rows = stages.lines(src.meta, core.parse_meta, {"keep": keep, "skip_bad": opts.skip_bad_lines}, "metadata")
    rows, counts = _split_status(rows, "metadata", opts)
    texts, found = core.item_texts(data.item_ids, rows if not rows.empty else
                                   pd.DataFrame({"asin": [], "text": []}, dtype=object))
    if not found:
        raise DataError(f"{src.meta}: no line for any of the {data.n_items:,} items of the interactions "
                        "(the metadata of another category?)")
    times["metadata: read and parse"] = time.perf_counter() - t0
    _say(opts, f"metadata: {posixpath.basename(src.meta)} has a line for {found:,} of {data.n_items:,} items "
               f"({times['metadata: read and parse']:.1f}s)")
    factory = opts.text_factory or functools.partial(
        make_encoder, "text", device=_encoder_device(opts), recipe=core.TEXT_RECIPE)
    frame = pd.DataFrame({"itemID": np.arange(data.n_items, dtype=np.int64),
                          "input": pd.Series(texts, dtype=object)})
    manifest = stages.encode(frame, tmp, "text", factory)
    times["text features"] = time.perf_counter() - t0 - times["metadata: read and parse"]
    return {"bad_lines": counts["bad_lines"], "items_with_meta": found,
            "items_without_text": manifest["missing"]["count"], "encoder": manifest["encoder"]["name"],
            "dim": manifest["dim"]}


def _b_images(src: Sources, data: core.AmazonData, tmp: str, stages: LocalStages, opts: Options,
              times: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    fs, p = open_fs(src.images, opts.storage_options)
    if not fs.exists(p):
        raise FileNotFoundError(f"{src.images} does not exist")
    n, cut = core.b_record_count(fs.size(p), src.images, opts.skip_bad_lines)
    rows = stages.b_records(src.images, core.b_ranges(n), frozenset(data.item_ids.tolist()))
    bad = rows["error"].astype(str) != ""
    errors = cut + rows.loc[bad, "error"].tolist()
    if errors:
        _say(opts, f"image features: skipped {len(errors):,} bad record(s); the first: {errors[0]}")
    rows = rows.loc[~bad]
    feats = np.stack(rows["feature"].tolist()) if len(rows) else np.zeros((0, core.B_DIM), np.float32)
    table, found = core.align_rows(data.item_ids.tolist(), rows["asin"].tolist(), feats)
    if not found.any():
        raise DataError(f"{src.images}: no record for any of the {data.n_items:,} items of the interactions "
                        f"({n:,} records; the image features of another category?)")
    failures = {int(i): ("missing", f"no record in {posixpath.basename(src.images)}") for i in np.flatnonzero(~found)}
    seconds = times["image features"] = time.perf_counter() - t0
    describe = {"modality": "image", "name": f"{posixpath.basename(src.images)} (the release's CNN features)",
                "version": "", "dim": core.B_DIM, "preprocessing": {"source": "records of a 10-byte ASIN and 4096 "
                                                                    "little-endian float32, taken as they are"}}
    write_features(tmp, "image", np.arange(data.n_items), table, failures, describe, seconds=seconds)
    _say(opts, f"image features: {n:,} records of {posixpath.basename(src.images)}; {int(found.sum()):,} of "
               f"{data.n_items:,} items have one, {int((~found).sum()):,} get the mean ({seconds:.1f}s)")
    return {"records": n, "bad_records": len(errors), "items_with_vector": int(found.sum()),
            "items_without_vector": int((~found).sum()), "dim": core.B_DIM}


def _dir_images(src: Sources, data: core.AmazonData, tmp: str, stages: LocalStages, opts: Options,
                times: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    fs, folder = open_fs(src.image_dir, opts.storage_options)
    if not fs.isdir(folder):
        raise FileNotFoundError(f"{src.image_dir}: not a folder of <ASIN>.<ext> images")
    by_asin: dict[str, str] = {}
    for entry in sorted(fs.ls(folder, detail=False)):
        stem, ext = posixpath.splitext(posixpath.basename(entry.rstrip("/")))
        if ext.lower() in IMAGE_EXTENSIONS and stem not in by_asin:
            by_asin[stem] = f"{src.image_dir.rstrip('/')}/{posixpath.basename(entry.rstrip('/'))}"
    inputs = [by_asin.get(a) for a in data.item_ids.tolist()]
    frame = pd.DataFrame({"itemID": np.arange(data.n_items, dtype=np.int64), "input": pd.Series(inputs, dtype=object)})
    factory = opts.image_factory or functools.partial(
        make_encoder, "image", device=_encoder_device(opts))
    manifest = stages.encode(frame, tmp, "image", factory)
    times["image features"] = time.perf_counter() - t0
    return {"images": len(by_asin), "items_with_image": int(sum(i is not None for i in inputs)),
            "items_without_vector": manifest["missing"]["count"] + manifest["broken"]["count"],
            "encoder": manifest["encoder"]["name"], "dim": manifest["dim"]}


def build_amazon(src: Sources, out: str, opts: Options | None = None) -> dict[str, Any]:
    """Build the dataset folder ``out`` (local or ``s3://``) from ``src``; return the build record
    (what ``amazon.json`` holds, plus ``seconds``: each stage's wall-clock time, kept out of the file so
    that a rebuild writes the same bytes). Nothing is left at ``out`` or beside it when a step fails."""
    opts = opts or Options()
    src.check()
    core.check_kcore(opts.kcore)
    out = location(out)
    name = opts.name or posixpath.basename(out.rstrip("/")) or "amazon"
    if not re.fullmatch(r"[\w.-]+", name):
        raise UserError(f"--name: expected letters, digits, '.', '_' or '-', got {name!r}")
    old = _replaceable(out, opts)
    tmp = _temporary(out)
    stages: LocalStages | None = None
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        stages = LocalStages(opts) if opts.local else RayStages(opts)
        times["start"] = time.perf_counter() - t0
        data, inter_steps = _interactions(src, stages, opts, times)
        record: dict[str, Any] = {
            "format": "raymmrec-amazon", "version": 1, "name": name,
            "sources": {k: v for k, v in vars(src).items() if v}, "kcore": opts.kcore, "seed": opts.seed,
            "interactions": inter_steps}
        if src.meta:
            record["text"] = _text(src, data, tmp, stages, opts, times)
        if src.images:
            record["image"] = _b_images(src, data, tmp, stages, opts, times)
        elif src.image_dir:
            record["image"] = _dir_images(src, data, tmp, stages, opts, times)
        t1 = time.perf_counter()
        _write_files(tmp, name, data, record)
        _publish(tmp, out, name, old, opts)
        times["write"] = time.perf_counter() - t1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stages is not None:
            stages.close()
    _say(opts, f"wrote {out}: {name}.inter ({data.n_users:,} users, {data.n_items:,} items, "
               f"{len(data.inter):,} interactions)" + "".join(f", {m}_feat.npy" for m in ("text", "image")
                                                          if m in record))
    times["total"] = time.perf_counter() - t0
    _say(opts, "time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    return {**record, "seconds": {k: round(v, 3) for k, v in times.items()}}


def _write_files(tmp: str, name: str, data: core.AmazonData, record: dict[str, Any]) -> None:
    with open(os.path.join(tmp, core.USER_MAP), "wb") as f:
        f.write(core.id_map_bytes(data.user_ids, "user_id", "userID"))
    with open(os.path.join(tmp, core.ITEM_MAP), "wb") as f:
        f.write(core.id_map_bytes(data.item_ids, "asin", "itemID"))
    with open(os.path.join(tmp, BUILD_FILE), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(tmp, f"{name}.inter"), "wb") as f:
        f.write(core.inter_bytes(data.inter))


def _replaceable(out: str, opts: Options) -> list[str]:
    """The files at ``out`` that the build will replace (``[]``: nothing there); refuses a non-empty
    folder without ``--overwrite``, and one holding anything but a dataset's files even with it."""
    fs, folder = open_fs(out, opts.storage_options)
    if not fs.exists(folder):
        return []
    if not fs.isdir(folder):
        raise UserError(f"--out {out}: exists and is not a folder")
    entries = [e for e in fs.ls(folder, detail=True) if e["name"].rstrip("/") != folder]
    if not entries:
        return []
    if not opts.overwrite:
        raise UserError(f"--out {out}: the folder is not empty; pass --overwrite to replace the dataset there, "
                        "or choose another folder")
    foreign = [posixpath.basename(e["name"].rstrip("/")) for e in entries
               if e["type"] != "file" or not _OURS.match(posixpath.basename(e["name"].rstrip("/")))]
    if foreign:
        raise UserError(f"--out {out}: refusing to overwrite a folder that holds {', '.join(sorted(foreign)[:5])} "
                        "(not a file of a dataset folder); delete it yourself or choose another folder")
    return [e["name"] for e in entries]


def _temporary(out: str) -> str:
    """A new local folder to build in: beside ``out`` on a local disk (so a rename publishes it)."""
    if is_url(out):
        return tempfile.mkdtemp(prefix="raymmrec-amazon-")
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    return tmp


def _publish(tmp: str, out: str, name: str, old: list[str], opts: Options) -> None:
    if not is_url(out):
        parent, base = os.path.split(out)
        gone = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
        if os.path.exists(out):
            os.rename(out, gone)
        try:
            os.rename(tmp, out)
        except OSError:
            if os.path.exists(gone):
                os.rename(gone, out)  # the previous dataset back in place
            raise
        shutil.rmtree(gone, ignore_errors=True)
        return
    from raymmrec.ray.storage import upload_dir

    fs, _ = open_fs(out, opts.storage_options)
    for path in sorted(old, key=lambda p: not p.endswith(".inter")):  # the old .inter first: no longer a dataset
        fs.rm(path)
    upload_dir(tmp, out, last=f"{name}.inter")


# --------------------------------------------------------------------------------------------- command line
def parser(prog: str = "raymmrec data") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Build a dataset folder (MMRec layout) from public raw "
                                                       "files: `amazon`, the Amazon review releases of 2014 and 2023.")
    p.add_argument("source", choices=("amazon",), help="which raw files: amazon")
    g = p.add_argument_group("raw files (local or s3://; .gz decompressed)")
    g.add_argument("--ratings", help="2014 ratings_<Cat>.csv (user,item,rating,timestamp; MMRec's starting point)")
    g.add_argument("--reviews", help="2014 reviews_<Cat>_5.json.gz or 2023 <Cat>.jsonl.gz (JSON lines)")
    g.add_argument("--meta", help="meta_<Cat>.json.gz (2014) or meta_<Cat>.jsonl.gz (2023): text features")
    g.add_argument("--images", help="2014 image_features_<Cat>.b: image features (4096-d)")
    g.add_argument("--image-dir", help="a folder of <ASIN>.<ext> images instead, encoded by EfficientNet-Lite0")
    p.add_argument("--out", required=True, help="the dataset folder to create (local or s3://)")
    p.add_argument("--name", default=None, help="<name>.inter (default: the folder's name)")
    p.add_argument("--kcore", type=int, default=5, help="iterative k-core on users and items (default 5, at least 3)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the split (default {DEFAULT_SEED})")
    p.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    r = p.add_argument_group("where it runs")
    r.add_argument("--local", action="store_true", help="one process, no Ray")
    r.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    add_actor_arguments(r)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="tracebacks with errors, Ray's own logs and bars")
    return p


def main(argv: list[str] | None = None, prog: str = "raymmrec data") -> int:
    args = parser(prog).parse_args(argv)
    return run_main(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    check_actor_arguments(args)
    if args.local and args.address:
        raise UserError("--local runs in this process: it takes no --address")
    src = Sources(ratings=args.ratings, reviews=args.reviews, meta=args.meta, images=args.images,
                  image_dir=args.image_dir)
    opts = Options(kcore=args.kcore, seed=args.seed, skip_bad_lines=args.skip_bad_lines, overwrite=args.overwrite,
                   name=args.name, local=args.local, address=args.address, actors=args.actors,
                   batch_size=args.batch_size, cpus_per_actor=args.cpus_per_actor,
                   gpus_per_actor=args.gpus_per_actor, device=args.device, progress=not args.quiet,
                   verbose=args.verbose)
    build_amazon(src, args.out, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
