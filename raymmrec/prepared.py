"""Prepared inputs: tensors a model needs beyond its weights, built once per dataset and parameters.

A model names what it needs (``Recommender.prepared_inputs``: ``{"adj": ("norm_adj", {})}``); a
builder registered here makes it from the training data; :func:`prepare` caches the result under
``<cache>/prepared/<content hash>.pt``, where the hash covers the training pairs, the features a
builder reads, the builder's name, version and parameters. The single-process runner calls
:func:`prepare` once; under Ray the driver calls it once and hands the tensors to every worker, so
no rank ever builds them in a model constructor, and a resumed run finds them in the cache.

Sparse tensors are stored as their CSR parts and the file is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from raymmrec.data import RecData
from raymmrec.files import load_tensors, save_tensors


@dataclass(frozen=True)
class Builder:
    fn: Callable[..., Tensor]
    version: int = 1
    uses_features: bool = False
    uses_block_map: bool = False  # takes ``map_blocks=`` (a runner of its row blocks; same result)


_BUILDERS: dict[str, Builder] = {}
# torch warns once per process that sparse CSR is "beta"; message passing has used it for years.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def register_builder(name: str, version: int = 1, uses_features: bool = False,
                     uses_block_map: bool = False) -> Callable:
    """Decorator: register ``fn(data: RecData, **params) -> Tensor`` as a prepared-input builder.

    ``uses_block_map``: ``fn`` also takes ``map_blocks=`` (see :func:`prepare`).
    """

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        _BUILDERS[name] = Builder(fn, version, uses_features, uses_block_map)
        return fn

    return wrap


@register_builder("norm_adj")
def _norm_adj(data: RecData) -> Tensor:
    """The symmetric-normalised user-item adjacency of the training pairs (CSR, U+I square)."""
    from raymmrec.graph import normalized_adjacency

    return normalized_adjacency(data.n_users, data.n_items, data.train.users, data.train.items)


@register_builder("item_knn", uses_features=True, uses_block_map=True)
def _item_knn(data: RecData, k: int = 10, weights: dict[str, float] | None = None,
              non_text_weight: float | None = None, map_blocks: Callable | None = None) -> Tensor:
    """Item-item cosine top-k graph of each modality, mixed with ``weights``.

    Without ``weights``: :func:`~raymmrec.graph.modality_weights` with ``non_text_weight`` when it is
    given (CM3's and LIRDRec's ``mm_image_weight``), else equal weights.
    """
    from raymmrec.graph import mixed_knn_graph, modality_weights

    if weights is None and non_text_weight is not None:
        weights = modality_weights(list(data.features), non_text_weight)
    # an item-wise forget request's items leave the graph: no other item keeps them as a neighbour
    return mixed_knn_graph(data.features, weights=weights, k=k, exclude=data.forgotten_items, map_blocks=map_blocks)


@register_builder("dct_features", uses_features=True)
def _dct_features(data: RecData, modalities: list[str] | None = None) -> Tensor:
    """LIRDRec's multimodal transformation: ``[DCT(x_m1) ‖ DCT(x_m2) ‖ …]``, float32 ``[I, Σ d_m]``.

    DCT is the orthonormal DCT-II over each modality's feature axis (``scipy.fft.dct(type=2,
    norm="ortho")``, the same transform as the reference's ``torch_dct`` with ortho normalisation),
    computed in float64 and stored as float32. ``modalities`` gives the blocks in order; ``None``
    means all of the dataset's modalities in sorted (alphabetical) order, so ``image`` before
    ``text``, as in the reference's ``[DCT(x_v) ‖ DCT(x_t)]``.
    """
    from scipy.fft import dct

    valid = sorted(data.features)
    names = valid if modalities is None else list(modalities)
    unknown = [m for m in names if m not in data.features]
    if not names or unknown or len(set(names)) != len(names):
        why = f"unknown {unknown}" if unknown else ("duplicates" if names else "none given")
        raise ValueError(f"dct_features modalities {names} ({why}); the dataset has: {', '.join(valid) or 'none'}")
    blocks = [dct(np.asarray(data.features[m], dtype=np.float64), type=2, norm="ortho", axis=1) for m in names]
    return torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32))


def data_fingerprint(data: RecData, with_features: bool) -> str:
    """SHA-256 of the training pairs (and the feature matrices when ``with_features``)."""
    h = hashlib.sha256()
    h.update(f"{data.n_users},{data.n_items}".encode())
    for arr in (data.train.users, data.train.items):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    if with_features:
        if data.forgotten_items.size:  # builders over features leave forgotten items out
            h.update(b"forgotten")
            h.update(np.ascontiguousarray(data.forgotten_items, dtype=np.int64).tobytes())
        for m in sorted(data.features):
            h.update(m.encode())
            h.update(np.ascontiguousarray(data.features[m], dtype=np.float32).tobytes())
    return h.hexdigest()


def cache_key(data: RecData, builder: str, params: dict[str, Any]) -> str:
    b = get_builder(builder)
    head = json.dumps({"builder": builder, "version": b.version, "params": params}, sort_keys=True)
    return hashlib.sha256((head + data_fingerprint(data, b.uses_features)).encode()).hexdigest()[:32]


def get_builder(builder: str) -> Builder:
    """The registered builder ``builder`` (its function, version and what it uses); ``KeyError`` names the
    known ones. :func:`prepare` builds through it; a benchmark can call ``get_builder(name).fn(data, ...)``
    to build one input uncached."""
    if builder not in _BUILDERS:
        raise KeyError(f"unknown prepared-input builder {builder!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[builder]


def _to_payload(t: Tensor) -> dict[str, Any]:
    if t.layout == torch.sparse_csr:
        return {"csr": [t.crow_indices(), t.col_indices(), t.values()], "shape": list(t.shape)}
    return {"dense": t}


def _from_payload(p: dict[str, Any]) -> Tensor:
    if "csr" in p:
        crow, col, val = p["csr"]
        return torch.sparse_csr_tensor(crow, col, val, size=tuple(p["shape"]), check_invariants=False)
    return p["dense"]


def frozen_tensor(a: np.ndarray) -> Tensor:
    """``a`` as a tensor that shares its memory, also when ``a`` is read-only (a view of a shared
    store): an input the model only reads. Torch warns that it cannot protect a read-only array;
    nothing writes to these tensors (what is trained or written is copied first)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def to_arrays(prepared: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Prepared inputs (CPU tensors) as numpy arrays, without copies: ``{name: {"csr": [crow, col,
    values], "shape": [...]}}`` for a sparse CSR tensor, ``{name: {"dense": array}}`` otherwise."""
    out: dict[str, dict[str, Any]] = {}
    for name, t in prepared.items():
        p = _to_payload(t.cpu())
        out[name] = ({"csr": [x.numpy() for x in p["csr"]], "shape": p["shape"]} if "csr" in p
                     else {"dense": p["dense"].numpy()})
    return out


def from_arrays(arrays: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
    """The tensors of :func:`to_arrays`, sharing the arrays' memory (read-only arrays stay unwritten)."""
    out = {}
    for name, p in arrays.items():
        out[name] = _from_payload({"csr": [frozen_tensor(x) for x in p["csr"]], "shape": p["shape"]} if "csr" in p
                                  else {"dense": frozen_tensor(p["dense"])})
    return out


def prepare(data: RecData, requests: dict[str, tuple[str, dict[str, Any]]],
            cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
            map_blocks: Callable | None = None) -> dict[str, Tensor]:
    """Build (or load from the cache) every requested input; ``{name: tensor}`` on the CPU.

    ``map_blocks``: how builders that work in row blocks (the item-item graph) run them
    (:data:`raymmrec.graph.build.BlockMap`; the Ray layer passes one that runs them as tasks).
    It never changes the result, so it is not part of the cache key.
    """
    out: dict[str, Tensor] = {}
    for name, (builder, params) in requests.items():
        b = get_builder(builder)
        path = None if cache_dir is None else Path(cache_dir) / "prepared" / f"{builder}-{cache_key(data, builder, params)}.pt"
        if path is not None and path.is_file():
            out[name] = _from_payload(load_tensors(path)["tensor"])
            continue
        if log:
            log(f"building prepared input {name!r} ({builder}, {params or 'defaults'})")
        extra = {"map_blocks": map_blocks} if map_blocks is not None and b.uses_block_map else {}
        out[name] = b.fn(data, **params, **extra)
        if path is not None:
            save_tensors(path, {"tensor": _to_payload(out[name]), "builder": builder, "params": params})
    return out
