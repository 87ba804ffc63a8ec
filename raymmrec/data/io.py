"""Reading and writing datasets on local disks and any fsspec URL (``s3://bucket/prefix`` through s3fs).

Two layouts are supported:

* **MMRec folder**: one tab-separated ``<name>.inter`` (header ``userID itemID rating timestamp x_label``), one
  ``<modality>_feat.npy`` per modality (row ``i`` = item ``i``) and optionally ``dataset.yaml`` with
  ``modalities: [...]`` naming the default modalities.
* **Columnar** (what the Ray layer shards): ``train.parquet``, ``valid.parquet``, ``test.parquet`` (int64
  columns ``user``, ``item``), ``features/<modality>.npy`` and ``meta.json``. ``meta.json`` is written last,
  so a folder without it is incomplete; on local disks the whole folder is also renamed into place atomically.

S3 credentials and endpoint come from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ...); they are never logged.
This is the only module of the package that talks to filesystems.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
import warnings
from typing import Any, Callable

import fsspec
import numpy as np
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from raymmrec.files import arrow_filesystem, open_fs  # noqa: F401 (the dataset API re-exports them)
from raymmrec.data.filters import apply_filters, frame_to_recdata, recdata_to_frame
from raymmrec.data.schema import INTER_COLUMNS, SPLITS, DataError, Interactions, RecData
from raymmrec.data.validate import (
    check_dense,
    check_features,
    check_id_range,
    check_inter_columns,
    check_labels,
    check_no_cold_users,
    check_splits_nonempty,
    drop_duplicates,
    parse_int_column,
    validate_recdata,
)

FEAT_SUFFIX = "_feat.npy"
META_FILE = "meta.json"
COLUMNAR_FORMAT = "raymmrec-columnar"
COLUMNAR_VERSION = 1
FEATURES_DIR = "features"
#: The top-level files of a columnar dataset (besides ``features/<modality>.npy``).
_COLUMNAR_FILES = (META_FILE, *(f"{s}.parquet" for s in SPLITS))
_DATASET_YAML_KEYS = {"modalities"}


def _join(url: str, *parts: str) -> str:
    if "://" in url:
        return "/".join([url.rstrip("/"), *parts])
    return os.path.join(os.path.abspath(os.path.expanduser(url)), *parts)


def split_parquet_path(url: str, split: str) -> str:
    """URL (or absolute local path) of one split's parquet file inside a columnar dataset."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
    return _join(url, f"{split}.parquet")


def train_parquet_path(url: str) -> str:
    """URL of ``train.parquet`` in a columnar dataset, for ``ray.data.read_parquet``."""
    return split_parquet_path(url, "train")


def _load_npy(fs: fsspec.AbstractFileSystem, path: str) -> np.ndarray:
    try:
        with fs.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # corrupt file, pickled object array, ...
        raise DataError(f"{path}: cannot load as a numeric .npy array (allow_pickle=False): {exc}") from exc


def _save_npy(fs: fsspec.AbstractFileSystem, path: str, arr: np.ndarray) -> None:
    with fs.open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _select(requested: list[str] | tuple[str, ...] | None, available: list[str], where: str) -> list[str]:
    if requested is None:
        return list(available)
    missing = [m for m in requested if m not in available]
    if missing:
        raise DataError(f"{where}: modality {missing[0]!r} not found; available modalities: {available or 'none'}")
    return list(dict.fromkeys(requested))


# --------------------------------------------------------------------------------------------- MMRec layout
def find_inter_file(fs: fsspec.AbstractFileSystem, folder: str) -> str:
    """Path of the single ``*.inter`` file in ``folder``; raise if there are none or several."""
    names = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".inter"))
    if len(names) != 1:
        found = [posixpath.basename(p) for p in names]
        raise DataError(f"{folder}: expected exactly one <name>.inter file, found {len(names)}: {found}")
    return names[0]


def list_modalities(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Modalities of an MMRec folder: the prefixes of its ``<modality>_feat.npy`` files, sorted."""
    names = [posixpath.basename(p) for p in fs.ls(folder, detail=False)]
    return sorted(n[: -len(FEAT_SUFFIX)] for n in names if n.endswith(FEAT_SUFFIX) and len(n) > len(FEAT_SUFFIX))


def _dataset_yaml_modalities(fs: fsspec.AbstractFileSystem, folder: str) -> list[str] | None:
    path = posixpath.join(folder, "dataset.yaml")
    if not fs.exists(path):
        return None
    import yaml

    with fs.open(path, "r") as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: expected a mapping such as 'modalities: [text, image]', got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _DATASET_YAML_KEYS)
    if unknown:
        warnings.warn(
            f"{path}: ignoring unknown key(s) {unknown}; known keys: {sorted(_DATASET_YAML_KEYS)}", stacklevel=3
        )
    mods = cfg.get("modalities")
    if mods is None:
        return None
    if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
        raise DataError(f"{path}: 'modalities' must be a list of names, got {mods!r}")
    return mods


def read_inter(fs: fsspec.AbstractFileSystem, path: str, *, need_rating: bool = False) -> pd.DataFrame:
    """Read and check an MMRec ``.inter`` file into an interaction frame (duplicates warned about and dropped)."""
    try:
        with fs.open(path, "rb") as f:
            raw = pd.read_csv(f, sep="\t")
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"{path}: no interaction rows (the file is empty); expected a header {list(INTER_COLUMNS)} and rows"
        ) from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid tab-separated file: {exc}") from exc
    if len(raw) == 0:
        raise DataError(f"{path}: no interaction rows (header only); expected one row per interaction below it")
    raw.columns = [str(c).strip() for c in raw.columns]
    check_inter_columns(list(raw.columns), path, need_rating=need_rating)
    frame = pd.DataFrame(
        {
            "user": parse_int_column(raw["userID"], "userID", path),
            "item": parse_int_column(raw["itemID"], "itemID", path),
            "label": parse_int_column(raw["x_label"], "x_label", path),
        }
    )
    check_labels(frame["label"].to_numpy(), path)
    frame["label"] = frame["label"].astype(np.int8)
    if "rating" in raw.columns:
        frame["rating"] = pd.to_numeric(raw["rating"], errors="coerce").to_numpy(dtype=np.float64)
    return drop_duplicates(frame, path)


def read_mmrec(
    url: str,
    *,
    modalities: list[str] | tuple[str, ...] | None = None,
    rating_threshold: float | None = None,
    kcore: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RecData:
    """Read and validate an MMRec-layout folder (local or fsspec URL), optionally filtering it.

    Without filters, users with validation/test rows but no training row raise :class:`DataError`; with a filter
    their rows are dropped with a warning and ids are re-indexed densely (feature rows follow).
    """
    fs, folder = open_fs(url, storage_options)
    if not fs.isdir(folder):
        raise DataError(f"{url}: not a directory")
    inter_path = find_inter_file(fs, folder)
    available = list_modalities(fs, folder)
    default = _dataset_yaml_modalities(fs, folder)
    if modalities is not None:
        chosen = _select(modalities, available, folder)
    elif default is not None:
        chosen = _select(default, available, posixpath.join(folder, "dataset.yaml"))
    else:
        chosen = available
    frame = read_inter(fs, inter_path, need_rating=rating_threshold is not None)
    n_users = check_dense(frame["user"].to_numpy(), "userID", inter_path)
    n_items = check_dense(frame["item"].to_numpy(), "itemID", inter_path)
    features: dict[str, np.ndarray] = {}
    for m in chosen:
        fpath = posixpath.join(folder, m + FEAT_SUFFIX)
        features[m] = check_features(_load_npy(fs, fpath), m, fpath, n_items)
    name = posixpath.basename(inter_path)[: -len(".inter")]
    if rating_threshold is None and kcore is None:
        check_splits_nonempty(frame["label"].to_numpy(), inter_path)
        check_no_cold_users(frame, inter_path)
    else:
        frame, features, n_users, n_items = apply_filters(
            frame, features, rating_threshold=rating_threshold, kcore=kcore, source=inter_path
        )
    return frame_to_recdata(name, frame, features, n_users, n_items)


def write_mmrec(data: RecData, url: str, *, storage_options: dict[str, Any] | None = None) -> str:
    """Write ``data`` as an MMRec folder (``<name>.inter``, ``<modality>_feat.npy``, ``dataset.yaml``); return its path.

    Every row gets ``rating`` 1 and ``timestamp`` 0 (the in-memory form keeps neither).
    """
    fs, folder = open_fs(url, storage_options)
    fs.makedirs(folder, exist_ok=True)
    frame = recdata_to_frame(data)
    inter = pd.DataFrame(
        {"userID": frame["user"], "itemID": frame["item"], "rating": 1, "timestamp": 0, "x_label": frame["label"]}
    )
    stem = data.name.replace(":", "_").replace("/", "_")
    with fs.open(posixpath.join(folder, f"{stem}.inter"), "wb") as f:
        f.write(inter.to_csv(sep="\t", index=False).encode())
    for m, feats in data.features.items():
        _save_npy(fs, posixpath.join(folder, m + FEAT_SUFFIX), feats)
    with fs.open(posixpath.join(folder, "dataset.yaml"), "w") as f:  # keeps the modality order
        f.write("modalities: [" + ", ".join(data.features) + "]\n")
    return folder


# --------------------------------------------------------------------------------------------- columnar layout
def _write_columnar_files(fs: fsspec.AbstractFileSystem, folder: str, data: RecData, meta: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs.makedirs(posixpath.join(folder, FEATURES_DIR), exist_ok=True)
    for s in SPLITS:
        inter = data.split(s)
        table = pa.table({"user": pa.array(inter.users, pa.int64()), "item": pa.array(inter.items, pa.int64())})
        with fs.open(posixpath.join(folder, f"{s}.parquet"), "wb") as f:
            pq.write_table(table, f)
    for m, feats in data.features.items():
        _save_npy(fs, posixpath.join(folder, FEATURES_DIR, f"{m}.npy"), np.ascontiguousarray(feats, dtype=np.float32))
    with fs.open(posixpath.join(folder, META_FILE), "w") as f:  # last: marks the folder complete
        json.dump(meta, f, indent=2)


def _replaceable_files(fs: fsspec.AbstractFileSystem, folder: str, url: str) -> list[str]:
    """Files to delete so that a columnar dataset can be written at ``folder`` (``meta.json`` first).

    Nothing there, or an empty folder: ``[]``. Otherwise ``folder`` must be a dataset of ours: a ``meta.json``
    with our format marker and nothing besides ``train/valid/test.parquet`` and ``features/*.npy``; anything
    else raises :class:`DataError` and nothing is deleted.
    """
    if not fs.exists(folder):
        return []
    if not fs.isdir(folder):
        raise DataError(f"{url}: exists and is not a folder; refusing to replace it with a columnar dataset")
    refuse = f"{url}: refusing to overwrite"
    found: dict[str, str] = {}  # name relative to folder -> path, for files of our layout
    unexpected: list[str] = []
    for entry in fs.ls(folder, detail=True):
        path = entry["name"].rstrip("/")
        name = posixpath.basename(path)
        if path == folder:  # an object store's folder marker
            continue
        if entry["type"] == "file" and name in _COLUMNAR_FILES:
            found[name] = path
        elif entry["type"] == "directory" and name == FEATURES_DIR:
            for sub in fs.ls(path, detail=True):
                sub_path = sub["name"].rstrip("/")
                rel = f"{FEATURES_DIR}/{posixpath.basename(sub_path)}"
                if sub["type"] == "file" and rel.endswith(".npy"):
                    found[rel] = sub_path
                elif sub_path != path:
                    unexpected.append(rel)
        else:
            unexpected.append(name)
    if unexpected:
        raise DataError(
            f"{refuse}: it holds {len(unexpected)} entry(ies) that a raymmrec columnar dataset does not have "
            f"({', '.join(sorted(unexpected)[:5])}); expected only {', '.join(_COLUMNAR_FILES)} and "
            f"{FEATURES_DIR}/*.npy; delete it yourself or choose another path"
        )
    if not found:
        return []
    if META_FILE not in found:
        raise DataError(
            f"{refuse}: no {META_FILE}, so not a complete raymmrec columnar dataset; "
            "delete it yourself or choose another path"
        )
    try:
        with fs.open(found[META_FILE], "r") as f:
            marker = json.load(f).get("format")
    except (ValueError, AttributeError) as exc:
        raise DataError(f"{refuse}: its {META_FILE} is not a JSON object ({exc}); delete it yourself") from exc
    if marker != COLUMNAR_FORMAT:
        raise DataError(
            f"{refuse}: its {META_FILE} has format {marker!r}, expected {COLUMNAR_FORMAT!r}; "
            "delete it yourself or choose another path"
        )
    return [found.pop(META_FILE), *found.values()]


def write_columnar(
    data: RecData,
    url: str,
    *,
    source: str = "",
    overwrite: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write ``data`` in columnar form to ``url`` and return the folder path.

    Local: written into a hidden temporary sibling, then renamed into place (an existing folder is swapped out
    only if ``overwrite``). Object stores: the old files are removed (``meta.json`` first) and the new
    ``meta.json`` written last. With ``overwrite=False`` a complete dataset already at ``url`` is kept and nothing
    is written. Only an empty folder or a columnar dataset of ours is ever replaced: anything else at ``url``
    (another ``meta.json``, unknown files) raises :class:`DataError` before anything is written or deleted.
    """
    validate_recdata(data)
    meta = {
        "format": COLUMNAR_FORMAT,
        "version": COLUMNAR_VERSION,
        "name": data.name,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "modalities": {m: int(f.shape[1]) for m, f in data.features.items()},
        "counts": {s: len(data.split(s)) for s in SPLITS},
        "source": source,
    }
    fs, folder = open_fs(url, storage_options)
    meta_path = posixpath.join(folder, META_FILE)
    if not overwrite and fs.exists(meta_path):
        return folder
    old_files = _replaceable_files(fs, folder, url)
    if isinstance(fs, LocalFileSystem):
        parent, base = os.path.split(folder)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
        old = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
        try:
            _write_columnar_files(fs, tmp, data, meta)
            if os.path.exists(folder) and (overwrite or not os.path.exists(meta_path)):
                _replaceable_files(fs, folder, url)  # again, right before the swap
                os.rename(folder, old)  # swap out the previous version (or an empty folder)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not overwrite and os.path.exists(meta_path):
                    return folder  # another process finished first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return folder
    for path in old_files:  # meta.json first: readers never see a complete-looking half-deleted dataset
        fs.rm(path)
    _write_columnar_files(fs, folder, data, meta)
    return folder


def read_meta(url: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the ``meta.json`` of a columnar dataset; raise :class:`DataError` if absent (incomplete) or foreign."""
    fs, folder = open_fs(url, storage_options)
    path = posixpath.join(folder, META_FILE)
    if not fs.exists(path):
        raise DataError(
            f"{url}: no {META_FILE}; not a columnar dataset, or an incomplete one (meta.json is written last)"
        )
    with fs.open(path, "r") as f:
        meta = json.load(f)
    if meta.get("format") != COLUMNAR_FORMAT or meta.get("version") != COLUMNAR_VERSION:
        raise DataError(
            f"{path}: expected format {COLUMNAR_FORMAT!r} version {COLUMNAR_VERSION}, "
            f"found {meta.get('format')!r} version {meta.get('version')!r}"
        )
    counts = meta.get("counts") if isinstance(meta.get("counts"), dict) else {}
    for key, value in [("n_users", meta.get("n_users")), ("n_items", meta.get("n_items"))] + [
        (f"counts.{s}", counts.get(s)) for s in SPLITS
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{path}: {key} must be a non-negative integer, found {value!r}")
    return meta


def is_columnar(url: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` holds a complete columnar dataset (has ``meta.json``)."""
    fs, folder = open_fs(url, storage_options)
    return fs.exists(posixpath.join(folder, META_FILE))


def _id_column(table: Any, column: str, path: str, n: int) -> np.ndarray:
    """Column ``column`` of a split's parquet table as int64, checked to hold ids in ``[0, n)`` (``n`` from meta)."""
    import pyarrow as pa

    col = table.column(column)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise DataError(
            f"{path}: column {column!r} must hold integer ids without nulls, found type {col.type} "
            f"with {col.null_count} null(s)"
        )
    ids = col.to_numpy().astype(np.int64, copy=False)  # uint64 ids >= 2**63 wrap to negatives: rejected below
    check_id_range(ids, column, path, n, f"{META_FILE} says n_{column}s = {n}")
    return ids


def read_columnar(
    url: str,
    *,
    modalities: list[str] | tuple[str, ...] | None = None,
    storage_options: dict[str, Any] | None = None,
    read_tables: Callable[[list[str]], list[Any]] | None = None,
) -> RecData:
    """Read a columnar dataset written by :func:`write_columnar` and validate it.

    ``read_tables(urls)``: the splits' parquet files (their URLs, or absolute local paths) as pyarrow
    tables, in order; the default reads them one after another with pyarrow. The Ray layer passes a
    reader that reads them in parallel on the cluster (Ray Data).
    """
    import pyarrow.parquet as pq

    meta = read_meta(url, storage_options=storage_options)
    fs, folder = open_fs(url, storage_options)
    splits: dict[str, Interactions] = {}
    paths = [posixpath.join(folder, f"{s}.parquet") for s in SPLITS]
    if read_tables is not None:
        tables = read_tables([split_parquet_path(url, s) for s in SPLITS])
    else:
        tables = []
        for path in paths:
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f))
    for s, path, table in zip(SPLITS, paths, tables):
        if table.column_names[:2] != ["user", "item"]:
            raise DataError(f"{path}: expected columns ['user', 'item'], found {table.column_names}")
        users = _id_column(table, "user", path, meta["n_users"])
        items = _id_column(table, "item", path, meta["n_items"])
        if users.shape[0] != meta["counts"][s]:
            raise DataError(f"{path}: {users.shape[0]} rows but meta.json says {meta['counts'][s]}")
        splits[s] = Interactions(users, items)
    features: dict[str, np.ndarray] = {}
    for m in _select(modalities, list(meta["modalities"]), url):
        path = posixpath.join(folder, FEATURES_DIR, f"{m}.npy")
        features[m] = check_features(_load_npy(fs, path), m, path, int(meta["n_items"]))
    data = RecData(
        meta["name"],
        int(meta["n_users"]),
        int(meta["n_items"]),
        splits["train"],
        splits["valid"],
        splits["test"],
        features,
    )
    validate_recdata(data)
    return data
