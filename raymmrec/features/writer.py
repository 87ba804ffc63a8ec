"""Writing ``<modality>_feat.npy`` and its manifest, whole or appended, never half-written.

``<out>/<modality>_feat.npy`` holds row ``i`` = item ``i`` (float32), as every method reads it.
``<out>/<modality>_feat.manifest.json`` says how it was made: encoder name, version, dimension and
preprocessing, which ids had a missing or broken input (they hold the mean of the good rows, as MMRec
does), and each extraction run (ids, seconds, items/s).

Both files go to a temporary name in the same folder and are then renamed into place (object stores: each
file is one put of the finished bytes), so a job killed while writing leaves the previous files as they were.
The array is renamed first: a manifest always describes the array beside it, or an older one with fewer rows.

Ids ``0..N-1`` replace the table; ids ``n..n+k-1`` where the table has ``n`` rows append ``k`` rows (the
encoder must be the one the manifest names). Anything else is refused before anything is written.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from raymmrec.data.io import open_fs
from raymmrec.data.schema import DataError
from raymmrec.features.encoders import Failure

MANIFEST_FORMAT = "raymmrec-features"
MANIFEST_VERSION = 1


def feature_path(out: str, modality: str) -> str:
    return f"{str(out).rstrip('/')}/{modality}_feat.npy"


def manifest_path(out: str, modality: str) -> str:
    return f"{str(out).rstrip('/')}/{modality}_feat.manifest.json"


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _write_atomic(fs: Any, path: str, fill: Any) -> None:
    """Write through ``fill(fileobj)`` to a temporary file beside ``path``, then rename it into place."""
    if not _is_local(fs):
        buf = io.BytesIO()
        fill(buf)
        fs.pipe_file(path, buf.getvalue())  # one put of finished bytes
        return
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npy(fs: Any, path: str, array: np.ndarray) -> None:
    _write_atomic(fs, path, lambda f: np.save(f, array, allow_pickle=False))


def save_json(fs: Any, path: str, obj: Any) -> None:
    _write_atomic(fs, path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def read_manifest(out: str, modality: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    fs, path = open_fs(manifest_path(out, modality), storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        try:
            return json.load(f)
        except ValueError as exc:
            raise DataError(f"{manifest_path(out, modality)}: not valid JSON ({exc})") from exc


def _load_existing(out: str, modality: str, storage_options: dict[str, Any] | None) -> np.ndarray | None:
    fs, path = open_fs(feature_path(out, modality), storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        try:
            arr = np.load(io.BytesIO(f.read()), allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{feature_path(out, modality)}: not a .npy array ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{feature_path(out, modality)}: expected a 2-d array, found shape {arr.shape}")
    return arr


def plan(ids: np.ndarray, existing_rows: int | None, where: str) -> str:
    """``replace`` (ids are 0..N-1) or ``append`` (ids continue a table of ``existing_rows``); else DataError."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise DataError(f"{where}: no items to extract")
    contiguous = bool(np.all(np.diff(ids) == 1))
    if contiguous and ids[0] == 0:
        return "replace"
    if contiguous and existing_rows is not None and ids[0] == existing_rows:
        return "append"
    if existing_rows is None:
        raise DataError(f"{where}: item ids must be 0..N-1 without gaps for a new table; got {_span(ids)}")
    raise DataError(f"{where}: item ids must be 0..N-1 (replace the table) or continue it from {existing_rows} "
                    f"(append); got {_span(ids)}")


def _span(ids: np.ndarray) -> str:
    gaps = np.flatnonzero(np.diff(ids) != 1)
    text = f"{len(ids)} ids from {ids[0]} to {ids[-1]}"
    return text + (f" with a gap after {ids[gaps[0]]}" if gaps.size else "")


def write_features(
    out: str,
    modality: str,
    ids: np.ndarray,
    features: np.ndarray,
    failures: Mapping[int, Failure],
    encoder: Mapping[str, Any],
    *,
    seconds: float,
    startup: float = 0.0,
    catalog: str = "",
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write (or append to) ``<out>/<modality>_feat.npy`` and its manifest; return the manifest.

    ``ids`` are the item ids of the rows of ``features`` (any order); rows of ``failures``' ids (missing or
    broken inputs) are replaced by the mean of the good rows. ``encoder`` is ``Encoder.describe()``;
    ``seconds`` is the extraction's wall time, ``startup`` the part of it until the first batch came back.
    """
    where = feature_path(out, modality)
    ids = np.asarray(ids, dtype=np.int64)
    features = np.asarray(features, dtype=np.float32)
    if features.shape != (ids.size, int(encoder["dim"])):
        raise DataError(f"{where}: expected features of shape {(ids.size, encoder['dim'])}, got {features.shape}")
    order = np.argsort(ids, kind="stable")
    ids, features = ids[order], features[order]
    existing = _load_existing(out, modality, storage_options)
    mode = plan(ids, None if existing is None else existing.shape[0], where)
    old_manifest = read_manifest(out, modality, storage_options) if mode == "append" else None
    if mode == "append":
        _check_same_encoder(existing, old_manifest, encoder, where)

    bad = np.isin(ids, np.fromiter(failures, dtype=np.int64, count=len(failures)))
    bad |= ~np.isfinite(features).all(axis=1)
    if (~bad).any():
        fill = features[~bad].mean(axis=0)
        filled_from = f"mean of the {int((~bad).sum())} good rows of this run"
    elif mode == "append" and existing is not None and len(existing):
        fill = existing.mean(axis=0)
        filled_from = "mean of the existing table (no good row in this run)"
    else:
        first = int(ids[0])
        raise DataError(f"{where}: no item has a usable input (item {first}: "
                        f"{failures.get(first, ('broken', 'not finite'))[1]}); nothing written")
    features[bad] = fill
    table = features if mode == "replace" else np.concatenate([existing.astype(np.float32), features])

    run = _run_record(ids, failures, bad, mode, seconds, catalog, filled_from)
    run["first_batch_seconds"] = round(float(startup), 3)  # actors starting, models loading, first batch
    manifest = _manifest(modality, table, encoder, run, old_manifest)
    fs, _ = open_fs(out, storage_options)
    save_npy(fs, open_fs(where, storage_options)[1], table)
    save_json(fs, open_fs(manifest_path(out, modality), storage_options)[1], manifest)
    return manifest


def _check_same_encoder(existing: np.ndarray, manifest: dict[str, Any] | None, encoder: Mapping[str, Any],
                        where: str) -> None:
    if existing.shape[1] != int(encoder["dim"]):
        raise DataError(f"{where}: cannot append {encoder['dim']}-d features of {encoder['name']} to a table of "
                        f"{existing.shape[1]}-d rows")
    old = (manifest or {}).get("encoder", {})
    if old and (old.get("name"), old.get("preprocessing")) != (encoder["name"], encoder.get("preprocessing")):
        raise DataError(f"{where}: the table was made by {old.get('name')!r} with other preprocessing than "
                        f"{encoder['name']!r} now; extract all items again instead of appending")


def _run_record(ids: np.ndarray, failures: Mapping[int, Failure], bad: np.ndarray, mode: str, seconds: float,
                catalog: str, filled_from: str) -> dict[str, Any]:
    missing = sorted(int(i) for i, (kind, _) in failures.items() if kind == "missing")
    broken = sorted(int(i) for i, (kind, _) in failures.items() if kind != "missing")
    extra = sorted({int(i) for i in ids[bad]} - set(missing) - set(broken))  # non-finite outputs
    broken = sorted(broken + extra)
    return {
        "mode": mode, "catalog": catalog, "first_id": int(ids[0]), "last_id": int(ids[-1]), "items": int(ids.size),
        "seconds": round(float(seconds), 3), "items_per_s": round(ids.size / seconds, 2) if seconds > 0 else None,
        "missing": missing, "broken": broken, "filled_with": filled_from if (missing or broken) else None,
        "errors": {str(i): failures[i][1] for i in sorted(failures)[:100]},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _manifest(modality: str, table: np.ndarray, encoder: Mapping[str, Any], run: dict[str, Any],
              old: dict[str, Any] | None) -> dict[str, Any]:
    runs = [*(old or {}).get("runs", []), run] if run["mode"] == "append" else [run]
    missing = sorted(i for r in runs for i in r["missing"])
    broken = sorted(i for r in runs for i in r["broken"])
    return {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "modality": modality,
        "file": f"{modality}_feat.npy", "rows": int(table.shape[0]), "dim": int(table.shape[1]),
        "dtype": "float32", "encoder": dict(encoder),
        "missing": {"count": len(missing), "ids": missing},
        "broken": {"count": len(broken), "ids": broken},
        "seconds": round(sum(r["seconds"] for r in runs), 3),
        "runs": runs,
    }
