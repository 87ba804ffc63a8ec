"""Feature extraction in one process (no Ray): catalogue -> encoder -> ``<modality>_feat.npy`` + manifest.

Example::

    manifest = extract("items.tsv", "data/mydataset", "text")                  # text_feat.npy
    manifest = extract("images/", "data/mydataset", "image", batch_size=32)   # image_feat.npy

The Ray layer (:mod:`raymmrec.ray.features`) runs the same encoders in actors and the same writer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raymmrec.features.catalog import ID, INPUT, read_catalog
from raymmrec.features.encoders import Encoder, Failure, make_encoder
from raymmrec.features.writer import write_features


class Progress:
    """Prints ``<what>: done/total items, items/s, ETA`` every ``every`` seconds (and once at the end)."""

    def __init__(self, total: int, what: str, every: float = 5.0, stream: Any = None,
                 enabled: bool = True) -> None:
        self.total, self.what, self.every = total, what, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = self._last = time.perf_counter()
        self.first: float | None = None  # when the first batch came back (start-up of actors and models)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"ETA {left:.0f}s" if np.isfinite(left) else "ETA ?"
        return f"{self.what}: {self.done}/{self.total} items, {rate:.1f} items/s, {eta}"

    @property
    def startup(self) -> float:
        """Seconds until the first batch came back."""
        return (self.first or self.start) - self.start

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        self.first = self.first or now
        if self.enabled and (now - self._last >= self.every):
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> float:
        seconds = time.perf_counter() - self.start
        if self.enabled:
            print(f"{self.line()} (done in {seconds:.1f}s)", file=self.stream, flush=True)
        return seconds


def item_failures(ids: Sequence[int], failures: Sequence[Failure | None]) -> dict[int, Failure]:
    return {int(i): f for i, f in zip(ids, failures) if f is not None}


def encode_frame(frame: pd.DataFrame, encoder: Encoder, *, batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict[int, Failure]]:
    """Encode the ``[itemID, input]`` rows of ``frame`` batch by batch: ``(features, failures by item id)``."""
    encoder.load()
    out = np.empty((len(frame), encoder.dim), dtype=np.float32)
    failures: dict[int, Failure] = {}
    ids, inputs = frame[ID].to_numpy(np.int64), frame[INPUT].tolist()
    for start in range(0, len(frame), batch_size):
        stop = min(start + batch_size, len(frame))
        try:
            feats, fails = encoder.encode(inputs[start:stop])
        except Exception as exc:
            raise RuntimeError(f"items {ids[start]}..{ids[stop - 1]}: {encoder.name} failed: {exc}") from exc
        out[start:stop] = feats
        failures.update(item_failures(ids[start:stop], fails))
        if on_batch:
            on_batch(stop - start)
    return out, failures


def report_failures(failures: dict[int, Failure], frame: pd.DataFrame, stream: Any = None, most: int = 10) -> None:
    """One line per failed item (the first ``most``): ``item 17 (images/17.jpg): broken: ...``."""
    stream = stream or sys.stderr
    sources = dict(zip(frame[ID].tolist(), frame[INPUT].tolist()))
    for n, (i, (kind, msg)) in enumerate(sorted(failures.items())):
        if n == most:
            print(f"... and {len(failures) - most} more (listed in the manifest)", file=stream)
            break
        src = sources.get(i)
        name = f" ({src})" if isinstance(src, str) and "://" not in msg and src not in msg else ""
        print(f"item {i}{name}: {kind}: {msg}", file=stream)


def extract(catalog: str | pd.DataFrame, out: str, modality: str, *, encoder: Encoder | None = None,
            batch_size: int = 64, text_columns: Sequence[str] | None = None, device: str | None = None,
            progress: bool = True, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Extract ``modality`` features of every item of ``catalog`` into ``out``; return the manifest.

    ``catalog`` is a path/URL (see :mod:`raymmrec.features.catalog`) or an ``[itemID, input]`` frame.
    """
    frame = catalog if isinstance(catalog, pd.DataFrame) else read_catalog(
        catalog, "text" if modality == "text" else "image", columns=text_columns, storage_options=storage_options)
    encoder = encoder or make_encoder(modality, device=device, recipe=recipe_name(text_columns, frame))
    encoder.load()  # before the clock starts: items/s measures encoding
    bar = Progress(len(frame), f"{modality} features", enabled=progress)
    feats, failures = encode_frame(frame, encoder, batch_size=batch_size, on_batch=bar.update)
    seconds = bar.finish()
    if progress and failures:
        report_failures(failures, frame)
    return write_features(out, modality, frame[ID].to_numpy(np.int64), feats, failures, encoder.describe(),
                          seconds=seconds, startup=bar.startup, catalog=catalog if isinstance(catalog, str) else "",
                          storage_options=storage_options)


def recipe_name(columns: Sequence[str] | None, frame: pd.DataFrame | None = None) -> str:
    """How texts were made, for the manifest."""
    cols = list(columns or frame.attrs.get("columns", [])) if frame is not None else list(columns or [])
    return f"columns {' + '.join(cols)} joined with single spaces" if cols else ""
