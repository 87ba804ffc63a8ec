"""Item catalogues: what feature extraction reads, and the text recipe.

A catalogue is one of

* ``items.parquet``: an ``itemID`` column, text columns and/or an image column (``image``: bytes, or a path
  / URL string; a relative path is relative to the catalogue's folder);
* ``items.tsv`` / ``items.csv``: the same, without image bytes (tab- or comma-separated, header row);
* a folder of images named ``<itemID>.<ext>`` (``.jpg``, ``.png``, ...; hidden files are skipped); ids
  missing between the smallest and the largest are items without an image.

``itemID`` holds dense ids ``0..N-1`` (a whole table) or a contiguous run of ids beyond an existing table
(an append, see :mod:`raymmrec.features.writer`). Everything here reads local paths and fsspec URLs
(``s3://bucket/items.parquet``) through :func:`raymmrec.data.io.open_fs`.
"""

from __future__ import annotations

import ast
import io
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from raymmrec.data.io import open_fs
from raymmrec.data.schema import DataError

ID = "itemID"
#: MMRec's text recipe (Amazon metadata): these columns, where present, joined with spaces.
MMREC_TEXT_COLUMNS = ("title", "brand", "categories", "description")
#: Column names taken as the image of an item (first one present).
IMAGE_COLUMNS = ("image", "image_path", "image_url", "imUrl")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
#: The per-row input column a prepared catalogue frame hands to an encoder.
INPUT = "input"


def catalog_kind(url: str) -> str:
    """``parquet``, ``tsv``, ``csv`` or ``folder`` from the name (a folder when it has no known suffix)."""
    name = str(url).rstrip("/").lower()
    for kind in ("parquet", "tsv", "csv"):
        if name.endswith("." + kind):
            return kind
    return "folder"


def read_table(url: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The catalogue file or folder as a frame with an int64 ``itemID`` column (image folders: ``image``
    holds each file's URL). Raises :class:`DataError` naming the file for anything malformed."""
    fs, path = open_fs(url, storage_options)
    if not fs.exists(path):
        raise DataError(f"{url}: catalogue not found (expected items.parquet, items.tsv/.csv or a folder of images)")
    kind = catalog_kind(url)
    if kind == "folder":
        if not fs.isdir(path):
            raise DataError(f"{url}: expected items.parquet, items.tsv, items.csv or a folder of images")
        return _image_folder(fs, path, url)
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        if kind == "parquet":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            frame = pd.read_csv(io.BytesIO(raw), sep="\t" if kind == "tsv" else ",", dtype=str,
                                keep_default_na=False, quoting=3 if kind == "tsv" else 0, encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{url}: cannot read it as {kind} ({str(exc).splitlines()[0]})") from exc
    return with_item_ids(frame, url)


def with_item_ids(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame`` with ``itemID`` as int64, checked: present, integers, no duplicates, no negatives."""
    if ID not in frame.columns:
        raise DataError(f"{where}: no {ID!r} column (found {list(frame.columns)[:8]})")
    raw = frame[ID]
    ids = pd.to_numeric(raw, errors="coerce")
    bad = ids.isna() | (ids != np.floor(ids)) | (ids < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: {ID} must hold non-negative integers; row {row} has {raw.iloc[row]!r}")
    frame = frame.assign(**{ID: ids.astype(np.int64)})
    dup = frame[ID].duplicated()
    if dup.any():
        raise DataError(f"{where}: {ID} {int(frame[ID][dup].iloc[0])} appears more than once")
    return frame.sort_values(ID, kind="stable").reset_index(drop=True)


def _image_folder(fs: Any, path: str, url: str) -> pd.DataFrame:
    ids, files = [], []
    for entry in fs.ls(path, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] != "file" or name.startswith("."):
            continue
        stem, ext = posixpath.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS or not stem.isdigit():
            raise DataError(f"{url}: {name!r} is not named <itemID>.<ext> with ext one of "
                            f"{', '.join(IMAGE_EXTENSIONS)}")
        ids.append(int(stem))
        files.append(name)  # relative: prepare() resolves it against the folder
    if not ids:
        raise DataError(f"{url}: no image files named <itemID>.<ext> in this folder")
    frame = with_item_ids(pd.DataFrame({ID: ids, "image": files}), url)
    # ids without a file between the smallest and the largest are items whose image is missing
    every = pd.DataFrame({ID: np.arange(frame[ID].iloc[0], frame[ID].iloc[-1] + 1, dtype=np.int64)})
    return every.merge(frame, on=ID, how="left")


def catalog_root(url: str) -> str:
    """The folder relative image paths of a catalogue file are resolved against."""
    url = str(url).rstrip("/")
    return url if catalog_kind(url) == "folder" else url.rsplit("/", 1)[0] if "/" in url else "."


# --------------------------------------------------------------------------------------------- text recipe
def is_null(value: Any) -> bool:
    """None, NaN, pd.NA, NaT: a scalar missing value (lists, arrays, bytes and text are values)."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, bytearray, memoryview, list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _text_part(value: Any) -> str:
    """One cell as text: lists (Amazon's nested ``categories``, also as their string form) are flattened."""
    if is_null(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(p for p in (_text_part(v) for v in value) if p)
    text = str(value)
    stripped = text.strip()
    if stripped[:1] == "[" and stripped[-1:] == "]":
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            return _text_part(parsed)
    return " ".join(text.split())  # newlines and runs of whitespace -> one space


def text_columns(frame: pd.DataFrame, columns: Sequence[str] | None, where: str) -> list[str]:
    """The columns the recipe joins: ``columns`` if given (each must exist), else a ``text`` column, else
    MMRec's title/brand/categories/description where present."""
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"{where}: text column {missing[0]!r} not found (columns: {list(frame.columns)[:12]})")
        return list(columns)
    if "text" in frame.columns:
        return ["text"]
    found = [c for c in MMREC_TEXT_COLUMNS if c in frame.columns]
    if not found:
        raise DataError(f"{where}: no text column: expected 'text' or any of {', '.join(MMREC_TEXT_COLUMNS)} "
                        f"(or name them with --text-columns)")
    return found


def item_texts(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Each row's text: the non-empty parts of ``columns``, in that order, joined with single spaces."""
    parts = [frame[c].map(_text_part) for c in columns]
    return [" ".join(p for p in row if p) for row in zip(*parts)] if parts else [""] * len(frame)


# --------------------------------------------------------------------------------------------- preparation
def image_column(frame: pd.DataFrame, where: str) -> str:
    for c in IMAGE_COLUMNS:
        if c in frame.columns:
            return c
    raise DataError(f"{where}: no image column: expected one of {', '.join(IMAGE_COLUMNS)} (bytes or a path/URL), "
                    f"or give a folder of <itemID>.<ext> images")


def _image_source(value: Any, root: str) -> Any:
    """Bytes as they are; a path/URL string made absolute against ``root``; empty -> None (missing)."""
    if is_null(value):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) if len(value) else None
    text = str(value).strip()
    if not text:
        return None
    if "://" in text or text.startswith("/") or root in (".", ""):
        return text
    return f"{root.rstrip('/')}/{text}"


def prepare(frame: pd.DataFrame, modality: str, *, root: str = ".", columns: Sequence[str] | None = None,
            where: str = "catalogue") -> pd.DataFrame:
    """``[itemID, input]``: the text of each item (text modality) or its image source (bytes, path/URL, None)."""
    used: list[str] = []
    if modality == "text":
        used = text_columns(frame, columns, where)
        inputs: list[Any] = item_texts(frame, used)
    else:
        used = [image_column(frame, where)]
        inputs = [_image_source(v, root) for v in frame[used[0]].tolist()]
    out = pd.DataFrame({ID: frame[ID].to_numpy(np.int64), INPUT: pd.Series(inputs, dtype=object)})
    out.attrs["columns"] = used
    return out


def read_catalog(url: str, modality: str, *, columns: Sequence[str] | None = None,
                 storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """:func:`read_table` then :func:`prepare`: the ``[itemID, input]`` frame of a catalogue, by item id."""
    return prepare(read_table(url, storage_options), modality, root=catalog_root(url), columns=columns,
                   where=str(url))
