"""The Amazon review datasets from their public raw files, processed as MMRec processes them.

Plain functions on bytes, pandas and numpy (no Ray): :mod:`raymmrec.ray.amazon` runs them, the parsing
and the encoders as Ray Data stages or everything in one process, and writes the folder.

Raw files (local or any fsspec URL; ``.gz`` is decompressed on the fly):

* 2014 release (McAuley et al.): ``ratings_<Cat>.csv`` (``user,item,rating,timestamp``, no header) or the
  5-core ``reviews_<Cat>_5.json.gz`` (JSON lines: ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``);
  ``meta_<Cat>.json.gz``, one *Python literal* dict per line, read with :func:`ast.literal_eval` (which
  evaluates nothing: a line holding an expression is a bad line, never code that runs);
  ``image_features_<Cat>.b``: records of a 10-byte ASIN and 4096 little-endian float32.
* 2023 release (Hou et al.): ``<Cat>.jsonl.gz`` (``user_id``, ``parent_asin``, ``rating``, ``timestamp`` in
  milliseconds) and ``meta_<Cat>.jsonl.gz`` (JSON lines: ``parent_asin``, ``title``, ``store``,
  ``categories``, ``description``, ...). The item is the ``parent_asin``; timestamps are stored in seconds.

The steps (MMRec's ``preprocessing/`` notebooks 0 to 3):

1. interactions: rows without a user, an item or a timestamp are dropped, then repeated (user, item) pairs
   (the first one is kept; MMRec drops repeated (user, item, timestamp) rows, and a folder here holds each
   pair once because the loader counts a pair once);
2. iterative k-core on users and items (:func:`raymmrec.data.filters.kcore_mask`, k = 5 by default);
3. users and items numbered 0..n-1 in order of first appearance in the raw file (MMRec's ``pd.unique``);
4. MMRec's per-user random split (:func:`raymmrec.data.split.mmrec_split`), seeded;
5. text: title, brand, categories and description joined with spaces (:func:`item_text`), for the text
   encoder (all-MiniLM-L6-v2 by default);
6. image: each item's vector of the ``.b`` file; the writer gives items without one the mean of the others.

Errors name the file and the line (the record, for a ``.b`` file) and what was expected; with
``skip_bad=True`` a bad line is counted and skipped instead.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raymmrec.data.filters import kcore_mask
from raymmrec.data.schema import DataError
from raymmrec.data.split import mmrec_split
from raymmrec.files import open_fs

#: Lines per chunk handed to a parser (one Ray Data batch).
CHUNK_LINES = 50_000
#: Row status of a parsed line: kept, dropped for a missing field (as MMRec's ``dropna``), bad.
OK, MISSING, BAD = 0, 1, 2
#: ``.b`` image features: a 10-byte ASIN then 4096 little-endian float32.
B_ASIN_BYTES, B_DIM = 10, 4096
B_RECORD = np.dtype([("asin", "S10"), ("feature", "<f4", (B_DIM,))])
#: Records per read of a ``.b`` file (one Ray Data task): 4,000 records are 66 MB.
B_RECORDS_PER_READ = 4_000
#: The text recipe, for the manifest.
TEXT_RECIPE = "title, brand (2023: store), categories (the first list of a 2014 item) and description, joined with spaces"
INTER_HEADER = ("userID", "itemID", "rating", "timestamp", "x_label")
USER_MAP, ITEM_MAP = "u_id_mapping.csv", "i_id_mapping.csv"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# --------------------------------------------------------------------------------------------- reading lines
def line_chunks(path: str, chunk_lines: int = CHUNK_LINES, storage_options: dict[str, Any] | None = None
                ) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """``(line numbers, lines)`` of a text file in chunks, 1-based numbers, blank lines left out.

    ``.gz`` files are decompressed as they are read; a corrupt or cut gzip stream raises :class:`DataError`.
    """
    fs, p = open_fs(path, storage_options)
    if not fs.exists(p):
        raise FileNotFoundError(f"{path} does not exist")
    numbers: list[int] = []
    lines: list[bytes] = []
    n = 0
    try:
        with fs.open(p, "rb", compression="gzip" if str(p).endswith(".gz") else None) as f:
            for raw in f:
                n += 1
                if not raw.strip():
                    continue
                numbers.append(n)
                lines.append(raw)
                if len(lines) >= chunk_lines:
                    yield np.asarray(numbers, dtype=np.int64), lines
                    numbers, lines = [], []
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read past line {n}: {exc} (a corrupt or incomplete download?)") from exc
    if lines:
        yield np.asarray(numbers, dtype=np.int64), lines


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8").strip()


def _bad(path: str, where: str, why: str, skip_bad: bool) -> str:
    """``<path>: <where>: <why>``, raised as a :class:`DataError` unless ``skip_bad`` (then returned)."""
    message = f"{path}: {where}: {why}"
    if not skip_bad:
        raise DataError(message + " (--skip-bad-lines counts and skips such lines)")
    return message


# --------------------------------------------------------------------------------------------- interactions
#: Columns of a parsed interaction chunk.
INTER_COLUMNS = ("line", "user", "item", "rating", "timestamp", "status", "error")


def _rating_csv(text: str) -> float:
    return float(text) if text else math.nan


def _ratings_row(text: str) -> tuple[str, str, float, int | None]:
    """``user,item,rating,timestamp`` of the 2014 ratings file; ``ValueError`` says what is wrong."""
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != 4:
        raise ValueError(f"expected 4 comma-separated fields user,item,rating,timestamp (the file has no "
                         f"header), found {len(fields)} in {_clip(text)!r}")
    user, item, rating, ts = fields
    try:
        r = _rating_csv(rating)
    except ValueError:
        raise ValueError(f"rating: expected a number, got {_clip(rating)!r}") from None
    if not ts:
        return user, item, r, None
    try:
        t = int(ts) if ts.lstrip("-").isdigit() else int(float(ts))
    except (ValueError, OverflowError):
        raise ValueError(f"timestamp: expected an integer (unix seconds), got {_clip(ts)!r}") from None
    return user, item, r, t


def _review_row(text: str) -> tuple[str, str, float, int | None]:
    """A review JSON line of either release: (user, item, rating, unix seconds); ``ValueError`` says what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    user = obj.get("reviewerID", obj.get("user_id"))
    item = obj.get("parent_asin") or obj.get("asin")
    for name, value in (("user", user), ("item", item)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ValueError(f"{name}: expected a string id, got {_clip(repr(value))}")
    raw_rating = obj.get("overall", obj.get("rating"))
    if raw_rating is not None and (isinstance(raw_rating, bool) or not isinstance(raw_rating, (int, float))):
        raise ValueError(f"rating: expected a number, got {_clip(repr(raw_rating))}")
    if "unixReviewTime" in obj:
        ts, scale = obj["unixReviewTime"], 1
    else:
        ts, scale = obj.get("timestamp"), 1000  # the 2023 release counts milliseconds
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        raise ValueError(f"timestamp: expected a number, got {_clip(repr(ts))}")
    return ("" if user is None else str(user), "" if item is None else str(item),
            math.nan if raw_rating is None else float(raw_rating), None if ts is None else int(ts) // scale)


def parse_interactions(lines: Sequence[bytes], numbers: np.ndarray, path: str, kind: str,
                       skip_bad: bool = False) -> pd.DataFrame:
    """Parse a chunk of a ratings CSV (``kind="ratings"``) or a reviews JSON-lines file (``"reviews"``).

    One row per line, columns :data:`INTER_COLUMNS`: ``status`` is :data:`OK`, :data:`MISSING` (no user,
    item or timestamp: dropped, as MMRec's ``dropna``) or :data:`BAD` (with ``error``; only with
    ``skip_bad``, else the first bad line raises :class:`DataError` naming ``path`` and the line).
    """
    if kind not in ("ratings", "reviews"):
        raise ValueError(f"kind: expected 'ratings' or 'reviews', got {kind!r}")
    row_of = _ratings_row if kind == "ratings" else _review_row
    n = len(lines)
    users, items = [""] * n, [""] * n
    ratings = np.full(n, np.nan)
    stamps = np.zeros(n, dtype=np.int64)
    status = np.zeros(n, dtype=np.int8)
    errors = [""] * n
    for k, (raw, line) in enumerate(zip(lines, numbers)):
        try:
            user, item, rating, ts = row_of(_decode(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            errors[k] = _bad(path, f"line {int(line)}", str(exc), skip_bad)
            status[k] = BAD
            continue
        if not user or not item or ts is None:
            status[k] = MISSING
            continue
        users[k], items[k], ratings[k], stamps[k] = user, item, rating, ts
    return pd.DataFrame({"line": np.asarray(numbers, dtype=np.int64), "user": users, "item": items,
                         "rating": ratings, "timestamp": stamps, "status": status, "error": errors})


# --------------------------------------------------------------------------------------------- metadata
#: Columns of a parsed metadata chunk.
META_COLUMNS = ("line", "asin", "text", "status", "error")


def meta_record(text: str) -> dict[str, Any]:
    """One metadata line as a dict: JSON (2023), else a Python literal (2014), never evaluated as code."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            why = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0]
            raise ValueError(f"expected a JSON object or a Python literal dict (metadata is parsed, never "
                             f"evaluated as code), got {_clip(text)!r} ({_clip(why, 50)})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of item fields, got {type(obj).__name__}: {_clip(text)!r}")
    return obj


def _words(value: Any) -> str:
    """A field as one line of text: lists joined, whitespace runs made single spaces, missing -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(p for p in (_words(v) for v in value) if p)
    if isinstance(value, dict):
        return ""
    return " ".join(str(value).split())


def item_text(record: dict[str, Any]) -> str:
    """MMRec's item text: title, brand, categories, description, joined with spaces (empty parts left out).

    2014: ``categories`` is a list of category paths and only the first is used, as MMRec does; 2023: a
    flat list, used whole, and the brand is the ``store`` (else ``details["Brand"]``). A 2023
    ``description`` is a list of paragraphs. Runs of whitespace become one space, which the word-piece
    tokenizer ignores anyway.
    """
    brand = record.get("brand")
    if brand is None:
        details = record.get("details")
        brand = record.get("store") or (details.get("Brand") if isinstance(details, dict) else None)
    cats = record.get("categories")
    if isinstance(cats, (list, tuple)) and cats and isinstance(cats[0], (list, tuple)):
        cats = cats[0]
    parts = (_words(record.get("title")), _words(brand), _words(cats), _words(record.get("description")))
    return " ".join(p for p in parts if p)


def meta_key(record: dict[str, Any]) -> str:
    """The item id of a metadata record: ``parent_asin`` (2023), else ``asin``; '' if it has neither."""
    key = record.get("parent_asin") or record.get("asin")
    return str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else ""


def parse_meta(lines: Sequence[bytes], numbers: np.ndarray, path: str, keep: frozenset[str] | set[str] | None = None,
               skip_bad: bool = False) -> pd.DataFrame:
    """Parse a chunk of a metadata file into ``(line, asin, text, status, error)`` rows (:data:`META_COLUMNS`).

    Every line is parsed (a bad line is reported whichever item it describes); only items in ``keep``
    (all when ``None``) come back, with their text (:func:`item_text`). Bad lines raise as in
    :func:`parse_interactions`, or come back with ``status`` :data:`BAD` when ``skip_bad``.
    """
    rows: list[tuple[int, str, str, int, str]] = []
    for raw, line in zip(lines, numbers):
        try:
            text = _decode(raw)
            record = meta_record(text)
            key = meta_key(record)
            if not key:
                raise ValueError(f"no 'asin' or 'parent_asin' field in {_clip(text)!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            rows.append((int(line), "", "", BAD, _bad(path, f"line {int(line)}", str(exc), skip_bad)))
            continue
        if keep is None or key in keep:
            rows.append((int(line), key, item_text(record), OK, ""))
    frame = pd.DataFrame(rows, columns=list(META_COLUMNS))
    return frame.astype({"line": np.int64, "asin": object, "text": object, "status": np.int8, "error": object})


# --------------------------------------------------------------------------------------------- .b image features
def b_record_count(size: int, path: str, skip_bad: bool = False) -> tuple[int, list[str]]:
    """Whole records in a ``.b`` file of ``size`` bytes, and the message of a cut last record (skipped
    with ``skip_bad``; else it raises :class:`DataError`)."""
    n, rest = divmod(int(size), B_RECORD.itemsize)
    if not rest:
        return n, []
    return n, [_bad(path, f"record {n + 1}", f"cut off after {rest} of its {B_RECORD.itemsize} bytes "
                    f"({B_ASIN_BYTES}-byte ASIN + {B_DIM} float32); the file is incomplete", skip_bad)]


def b_ranges(n_records: int, per_read: int = B_RECORDS_PER_READ) -> list[tuple[int, int]]:
    """``(first record, count)`` pieces covering ``n_records`` records."""
    return [(s, min(per_read, n_records - s)) for s in range(0, n_records, per_read)]


def read_b_records(path: str, start: int, count: int, keep: frozenset[str] | set[str] | None = None,
                   skip_bad: bool = False, storage_options: dict[str, Any] | None = None
                   ) -> tuple[list[str], np.ndarray, list[str]]:
    """Records ``start .. start+count-1`` of a ``.b`` file: (ASINs, float32 ``[m, 4096]``, bad-record messages).

    Only ASINs in ``keep`` (all when ``None``) are returned. An ASIN that is not UTF-8 is a bad record
    (reported as ``record N``, 1-based).
    """
    fs, p = open_fs(path, storage_options)
    with fs.open(p, "rb") as f:
        f.seek(start * B_RECORD.itemsize)
        data = f.read(count * B_RECORD.itemsize)
    if len(data) != count * B_RECORD.itemsize:
        raise DataError(f"{path}: expected {count} records from record {start + 1}, the file ended early")
    records = np.frombuffer(data, dtype=B_RECORD)
    asins, rows, bad = [], [], []
    for k, raw in enumerate(records["asin"].tolist()):
        try:
            asin = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(_bad(path, f"record {start + k + 1}", f"the ASIN {raw!r} is not UTF-8 text", skip_bad))
            continue
        if keep is None or asin in keep:
            asins.append(asin)
            rows.append(k)
    feats = np.ascontiguousarray(records["feature"][rows], dtype=np.float32) if rows else \
        np.zeros((0, B_DIM), dtype=np.float32)
    return asins, feats, bad


def align_rows(item_ids: Sequence[str], asins: Sequence[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (one per entry of ``asins``) placed at their item's index in ``item_ids``: ``(table, found)``.

    Items without a row get NaN rows (``found`` False); an ASIN listed twice keeps its first row.
    """
    index = {a: i for i, a in enumerate(item_ids)}
    table = np.full((len(item_ids), rows.shape[1] if rows.ndim == 2 else 0), np.nan, dtype=np.float32)
    found = np.zeros(len(item_ids), dtype=bool)
    for asin, row in zip(asins, rows):
        i = index.get(asin)
        if i is not None and not found[i]:
            table[i] = row
            found[i] = True
    return table, found


# --------------------------------------------------------------------------------------------- the dataset
@dataclass
class AmazonData:
    """The processed interactions: the ``.inter`` table, the raw ids by new id, and what each step did."""

    inter: pd.DataFrame  # userID, itemID, rating, timestamp, x_label (grouped by user, train rows first)
    user_ids: np.ndarray  # raw user id of user u at position u
    item_ids: np.ndarray  # ASIN (2023: parent ASIN) of item i at position i
    steps: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)


def check_kcore(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 3:
        raise DataError(f"--kcore: expected an integer >= 3 (MMRec's split gives every user a training, a "
                        f"validation and a test interaction), got {k!r}")
    return int(k)


def process(rows: pd.DataFrame, *, kcore: int = 5, seed: int = 999, source: str = "interactions") -> AmazonData:
    """MMRec's steps 1-4 on parsed interaction rows (``user``, ``item``, ``rating``, ``timestamp`` in file order).

    Drops repeated (user, item) pairs (the first is kept), runs the iterative k-core, numbers users and items
    in order of first appearance, and splits each user's interactions with :func:`mmrec_split` (``seed``).
    """
    k = check_kcore(kcore)
    steps: dict[str, Any] = {"rows": int(len(rows))}
    rows = rows.drop_duplicates(["user", "item"], keep="first")
    steps["duplicates_dropped"] = steps["rows"] - int(len(rows))
    users, _ = pd.factorize(rows["user"], sort=False)
    items, _ = pd.factorize(rows["item"], sort=False)
    keep, rounds = kcore_mask(users.astype(np.int64), items.astype(np.int64), k)
    rows = rows.loc[keep]
    steps.update(kcore=k, kcore_rounds=rounds, after_kcore=int(len(rows)))
    if len(rows) == 0:
        raise DataError(f"{source}: no interaction is left after the {k}-core ({steps['rows']:,} rows, "
                        f"{steps['duplicates_dropped']:,} repeated pairs); try a smaller --kcore")
    user_codes, user_ids = pd.factorize(rows["user"], sort=False)
    item_codes, item_ids = pd.factorize(rows["item"], sort=False)
    labels = mmrec_split(user_codes, seed)
    inter = pd.DataFrame({"userID": user_codes.astype(np.int64), "itemID": item_codes.astype(np.int64),
                          "rating": rows["rating"].to_numpy(dtype=np.float64),
                          "timestamp": rows["timestamp"].to_numpy(dtype=np.int64), "x_label": labels})
    inter = inter.sort_values(["userID", "x_label"], kind="stable").reset_index(drop=True)
    steps.update(seed=int(seed), users=int(len(user_ids)), items=int(len(item_ids)),
                 **{s: int((labels == c).sum()) for c, s in enumerate(("train", "valid", "test"))})
    return AmazonData(inter, np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object), steps)


def item_texts(item_ids: Sequence[str], meta: pd.DataFrame) -> tuple[list[str], int]:
    """The text of each item (``''`` where the metadata has no line for it) and how many had a line.

    ``meta``: parsed rows (``asin``, ``text``) in file order; an item listed twice keeps its first line.
    """
    first = meta.drop_duplicates("asin", keep="first").set_index("asin")["text"]
    texts = first.reindex(pd.Index(item_ids, dtype=object)).fillna("").tolist()
    found = int(pd.Index(item_ids, dtype=object).isin(first.index).sum())
    return texts, found


# --------------------------------------------------------------------------------------------- files
def inter_bytes(inter: pd.DataFrame) -> bytes:
    """The ``.inter`` file: tab-separated with a header ``userID itemID rating timestamp x_label``."""
    return inter.loc[:, list(INTER_HEADER)].to_csv(sep="\t", index=False, na_rep="").encode()


def id_map_bytes(ids: np.ndarray, raw_name: str, id_name: str) -> bytes:
    """An id map as MMRec writes it (tab-separated despite the ``.csv`` name): ``<raw_name> <id_name>``."""
    return pd.DataFrame({raw_name: ids, id_name: np.arange(len(ids), dtype=np.int64)}).to_csv(
        sep="\t", index=False).encode()


def read_id_map(text: bytes | str, raw_name: str, id_name: str) -> np.ndarray:
    """The raw ids by id from an id map written by :func:`id_map_bytes` (ids as strings)."""
    import io

    raw = text.encode() if isinstance(text, str) else text
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype={raw_name: str}, keep_default_na=False)
    return frame.sort_values(id_name)[raw_name].to_numpy(dtype=object)
