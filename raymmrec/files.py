"""Bytes and JSON at a local path or a URL (``s3://...``, anything fsspec opens): the storage floor
under run folders, forget requests and sweeps. Local writes go to a temporary file first and are
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
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


def placeholder(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``shape`` and ``dtype`` whose bytes :func:`save_tensors` writes later from its ``parts``:
    its storage is allocated and never touched, so its pages never become resident."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage(nbytes), 0, tuple(shape))


def save_tensors(path: str | Path, payload: dict[str, Any],
                 parts: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
    """Write ``payload`` (a dict of tensors and plain values) to ``path``, streamed (no copy of it in memory):
    a local path via a temporary file in the same folder, then renamed; a URL as one upload, aborted if
    the write fails, so nothing half-written appears.

    ``parts``: ``payload`` holds :func:`placeholder` tensors, and ``parts`` yields ``(name, tensor)`` with
    their bytes, in the order the placeholders appear in ``payload``; a placeholder may come in several
    parts, its leading rows in order (row chunks). The file is laid out first
    (``torch.serialization.skip_data``), then each part is written into its place and dropped, so the
    whole payload never lies in memory at once (a column-sharded run's ``best.pt``, assembled on rank 0
    a chunk at a time). A URL gets the file from a local temporary one, uploaded at the end.
    """
    if parts is not None:
        _save_in_parts(path, payload, parts)
        return
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
    _write_locally(path, lambda f: torch.save(payload, f))


def _write_locally(path: str | Path, write: Any) -> None:
    """``write(file)`` into a temporary file beside ``path``, synced, then renamed to ``path``."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_in_parts(path: str | Path, payload: dict[str, Any], parts: Iterable[tuple[str, torch.Tensor]]) -> None:
    def write(f: Any) -> None:
        with torch.serialization.skip_data():
            torch.save(payload, f)
        f.flush()
        records = [(start, info.file_size) for info, start in _storage_records(f)[1]]
        crcs: list[int] = []
        filled = crc = count = 0
        for name, t in parts:  # not enumerate(): it would keep the last part alive while the next is made
            raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            i = len(crcs)
            left = records[i][1] - filled if i < len(records) else 0
            if i >= len(records) or raw.nbytes > left:
                raise ValueError(f"save_tensors: part {count} ({name!r}, {raw.nbytes} bytes) does not fit the "
                                 f"payload's placeholder {i} ({left} bytes left)")
            f.seek(records[i][0] + filled)
            f.write(raw)
            crc = zlib.crc32(raw, crc)
            filled += raw.nbytes
            count += 1
            del raw, t
            if filled == records[i][1]:  # this placeholder is complete: the next part starts the next one
                crcs.append(crc)
                filled = crc = 0
        if len(crcs) != len(records):
            raise ValueError(f"save_tensors: the parts filled {len(crcs)} of {len(records)} placeholders")
        _set_crcs(f, crcs)

    if not is_url(str(path)):
        _write_locally(path, write)
        return
    fd, tmp = tempfile.mkstemp(suffix=".pt.tmp")
    os.close(fd)
    try:
        _write_locally(tmp, write)
        fs, key = open_fs(str(path))
        fs.put_file(tmp, key)  # one upload, completed only when whole
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _storage_records(f: Any) -> tuple[zipfile.ZipFile, list[tuple[zipfile.ZipInfo, int]]]:
    """The zip of a torch.save file and its storage records (``<archive>/data/<i>``), by ``i``: each one's
    entry and the offset of its bytes (after the local header's name and extra field)."""
    f.seek(0)
    z = zipfile.ZipFile(f)
    found = {}
    for info in z.infolist():
        head, _, index = info.filename.rpartition("/")
        if head.endswith("/data") or head == "data":
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            found[int(index)] = (info, info.header_offset + 30 + name_len + extra_len)
    return z, [found[i] for i in range(len(found))]


def _set_crcs(f: Any, crcs: list[int]) -> None:
    """Put each storage record's CRC-32 (``crcs`` by record index) into its data descriptor and the zip's
    central directory, where ``skip_data`` left zeros, so the file is a valid zip (``zipfile.testzip``)."""
    z, records = _storage_records(f)
    by_name = {}
    for (info, start), crc in zip(records, crcs, strict=True):
        by_name[info.filename] = crc
        if info.flag_bits & 0x08:  # a data descriptor follows the bytes, with or without its signature
            end = start + info.compress_size
            f.seek(end)
            sig = f.read(4)
            f.seek(end + 4 if sig == b"PK\x07\x08" else end)
            f.write(struct.pack("<I", crc))
    pos = z.start_dir
    for _ in z.infolist():  # the central directory's entries: fixed 46 bytes, then name, extra, comment
        f.seek(pos)
        fixed = f.read(46)
        name_len, extra_len, comment_len = struct.unpack("<HHH", fixed[28:34])
        name = f.read(name_len).decode("utf-8")
        if name in by_name:
            f.seek(pos + 16)
            f.write(struct.pack("<I", by_name[name]))
        pos += 46 + name_len + extra_len + comment_len


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
