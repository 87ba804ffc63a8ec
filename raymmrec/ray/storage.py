"""Run storage for Ray Train: local folders or ``s3://`` (s3fs, configured by the AWS env vars).

Credentials and endpoint come from the usual variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``); nothing here logs them.
"""

from __future__ import annotations

import concurrent.futures
import os
import uuid
from pathlib import Path
from typing import Any

from raymmrec.data.io import arrow_filesystem, open_fs
from raymmrec.errors import UserError
from raymmrec.files import is_url as is_remote
from raymmrec.files import join

__all__ = ["StorageError", "check_writable", "filesystem", "is_remote", "join", "pyarrow_filesystem", "upload_dir"]


class StorageError(UserError, RuntimeError):
    """The storage path cannot be used (unreachable, not writable, bad URL)."""


def _options(path: str) -> dict[str, Any] | None:
    if path.split("://", 1)[0] in ("s3", "s3a"):
        # Fail within seconds on an unreachable endpoint instead of botocore's minute of retries.
        return {"config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}}
    return None


def filesystem(path: str) -> tuple[Any, str]:
    """An fsspec filesystem for ``path`` and the path without its scheme (local: absolute)."""
    if not is_remote(path):
        return open_fs("/")[0], str(Path(path.removeprefix("file://")).expanduser().resolve())
    return open_fs(path, _options(path))


def pyarrow_filesystem(path: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for ``ray.train.RunConfig``.

    Remote paths go through the same fsspec filesystem as the data (wrapped for pyarrow), so the
    same environment variables, including a custom endpoint, apply to data and checkpoints.
    """
    if not is_remote(path):
        return filesystem(path)[1], None
    fs, stripped = arrow_filesystem(path, _options(path))
    return stripped, fs


def check_writable(path: str, timeout_s: float = 20.0) -> None:
    """Write and delete a probe file under ``path`` within ``timeout_s``, or raise StorageError."""

    def probe() -> None:
        fs, root = filesystem(path)
        fs.makedirs(root, exist_ok=True)
        name = f"{root}/.raymmrec-probe-{uuid.uuid4().hex}"
        with fs.open(name, "wb") as f:
            f.write(b"ok")
        fs.rm(name)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise StorageError(f"storage path {path!r} did not answer within {timeout_s:.0f}s "
                           "(unreachable endpoint? check AWS_ENDPOINT_URL and the network)") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise StorageError(f"storage path {path!r} is not writable: {type(e).__name__}: {e}") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def upload_dir(local: str, remote: str, last: str | None = None) -> None:
    """Copy every file under ``local`` to ``remote`` (overwriting); the top-level file ``last``, if
    present, goes after all others (a marker that the upload is complete)."""
    fs, root = filesystem(remote)
    deferred = None
    for dirpath, _, files in os.walk(local):
        rel = os.path.relpath(dirpath, local)
        for name in files:
            if rel == "." and name == last:
                deferred = os.path.join(dirpath, name)
                continue
            target = f"{root}/{name}" if rel == "." else f"{root}/{rel}/{name}"
            fs.put_file(os.path.join(dirpath, name), target)
    if deferred is not None:
        fs.put_file(deferred, f"{root}/{last}")

