"""Bytes and JSON at a local path or a URL (``s3://...``, anything fsspec opens): the storage floor
under run folders, forget requests and sweeps. Local writes go to a temporary file first and are
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem


def fs_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options for ``url``: ``storage_options``, and for S3 the endpoint of ``AWS_ENDPOINT_URL``."""
    options = dict(storage_options or {})
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    explicit = "endpoint_url" in options or "endpoint_url" in options.get("client_kwargs", {})
    if protocol in ("s3", "s3a") and endpoint and not explicit:
        options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": endpoint}
    return options


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or fsspec URL; S3 picks up ``AWS_ENDPOINT_URL``."""
    url = os.path.expanduser(str(url))
    fs, path = fsspec.core.url_to_fs(url, **fs_options(url, storage_options))
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache()  # another process may have written since the last listing
    return fs, path.rstrip("/") or path


def arrow_filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Return ``(pyarrow.fs.FileSystem, path)`` for ``url``, e.g. for ``ray.data.read_parquet(filesystem=...)``."""
    import pyarrow.fs as pafs

    fs, path = open_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def location(path: str | Path) -> str:
    """A run, request or output location as commands pass it on: a URL (``s3://...``) as given, a local path
    (plain, relative, ``~``, ``file://``) absolute and plain, so that a ``file://`` prefix never becomes
    a folder name and a Ray task in another directory finds the same place."""
    path = str(path)
    if is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def join(base: str | Path, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to a local path (temporary file, then rename) or a URL (one object put)."""
    target = str(target)
    if is_url(target):
        fs, path = open_fs(target)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    path = Path(target.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_bytes(source: str | Path) -> bytes:
    source = str(source)
    if is_url(source):
        fs, path = open_fs(source)
        if not fs.exists(path):
            raise FileNotFoundError(f"{source} does not exist")
        return fs.cat_file(path)
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path.read_bytes()


def write_json(target: str | Path, obj: Any) -> None:
    write_bytes(target, json.dumps(obj, indent=2).encode())


def save_tensors(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (a dict of tensors and plain values) to ``path``, streamed (no copy of it in memory):
    a local path via a temporary file in the same folder, then renamed; a URL as one upload, aborted if
    the write fails, so nothing half-written appears."""
    if is_url(str(path)):
        fs, key = open_fs(str(path))
        f = fs.open(key, "wb")
        try:
            torch.save(payload, f)
        except BaseException:
            if hasattr(f, "discard"):
                f.discard()  # the upload is dropped, not completed with what was written so far
                f.closed = True  # and not flushed again when the file object is collected
            raise
        f.close()
        return
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path: str | Path) -> dict[str, Any]:
    """Load a file written by :func:`save_tensors` onto the CPU; never unpickles objects.

    Always CPU: ``load_state_dict`` copies weights and optimizer state to wherever the model
    lives, and nothing here may end up on a device that expects a CPU tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path} could not be loaded safely (weights_only=True): {e}") from e
