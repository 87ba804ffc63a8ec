"""Datasets: MMRec folders, a columnar form for Ray, built-in ml100k and synthetic data, filters and splits.

Typical use::

    from raymmrec.data import load_dataset
    data = load_dataset("synthetic:tiny")            # or "ml100k", "/path/to/mmrec_folder", "s3://bucket/ds"
    print(data.summary())

Everything here is plain numpy/pandas/pyarrow/fsspec; nothing imports Ray.
"""

from raymmrec.data.builtin import BUILTIN_NAMES, DEFAULT_SEED, cache_root, load_dataset, ml100k_path, resolve_source
from raymmrec.data.filters import filter_recdata
from raymmrec.data.io import (
    arrow_filesystem,
    is_columnar,
    read_columnar,
    read_meta,
    read_mmrec,
    split_parquet_path,
    train_parquet_path,
    write_columnar,
    write_mmrec,
)
from raymmrec.data.schema import COLD, INTER_COLUMNS, SPLITS, DataError, Interactions, RecData
from raymmrec.data.split import hide_positives, hold_out_cold_items, mmrec_split, split_sizes
from raymmrec.data.synthetic import PRESETS, SyntheticSpec, generate_synthetic, make_synthetic
from raymmrec.data.validate import validate_recdata

__all__ = [
    "resolve_source",
    "BUILTIN_NAMES",
    "COLD",
    "DEFAULT_SEED",
    "INTER_COLUMNS",
    "PRESETS",
    "SPLITS",
    "DataError",
    "Interactions",
    "RecData",
    "SyntheticSpec",
    "arrow_filesystem",
    "cache_root",
    "filter_recdata",
    "generate_synthetic",
    "hide_positives",
    "hold_out_cold_items",
    "is_columnar",
    "load_dataset",
    "make_synthetic",
    "ml100k_path",
    "mmrec_split",
    "read_columnar",
    "read_meta",
    "read_mmrec",
    "split_parquet_path",
    "split_sizes",
    "train_parquet_path",
    "validate_recdata",
    "write_columnar",
    "write_mmrec",
]
