"""Resumable checkpoints: one layout for one process and for any number of column-sharded or
data-parallel workers, written with ``torch.distributed.checkpoint`` (DCP).

A run folder (local or URL) holds::

    ckpt/latest.pt        the loop state (epoch, early stopping, best record, history), the optimizer's
                          hyperparameters and schedule, the config; written by rank 0 alone (torch.save of
                          plain values, loaded weights_only) after the tensors, and naming their folder:
                          writing it commits the checkpoint
    ckpt/epoch-NNNNN/     the tensors (DCP): ``model/<name>``, ``optim/<parameter>/<state>`` (Adam's
                          moments and step) and, during a plateau, ``best/<name>`` (the best weights)

Each split tensor of a column-sharded run (``model.column_layout()``) is stored as the whole logical
tensor, sharded: every rank writes only its own block (a DTensor placed ``Shard(dim)`` over the ranks,
:func:`raymmrec.shard.checkpoint_entries`), and a reader with any number of ranks, or one process with
none, reads only the stored blocks that overlap its own. Replicated tensors are written by rank 0 (so the
checkpoint keeps rank 0's copy, :func:`raymmrec.shard.check_replicated`). No rank ever holds more than
its own blocks of the weights and optimizer state while saving or loading. The format does not depend on
the number of ranks: a checkpoint resumes with any number of workers and in one process.

No RNG state is saved: the loop reseeds batch order, negatives and dropout from (seed, epoch) at
the start of every epoch, so a resumed run replays exactly without it. The loop state (early stopping
included) and the best weights so far are in the checkpoint, so the replay makes the killed run's
decisions again (:func:`raymmrec.train.artifacts.resume_best`).

``best.pt`` (the best weights, what every one-process command loads) is one file, assembled on rank 0
(:func:`raymmrec.shard.assemble_on_rank0`); its layout is unchanged (:data:`BEST_FORMAT_VERSION`).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor

from raymmrec.files import fs_options, is_url, join, open_fs, read_bytes, save_tensors
from raymmrec.shard import Split, check_replicated, checkpoint_entries, join_entries, local_width, splits_of
from raymmrec.train.loop import Trainer, TrainState, unwrap

FORMAT_VERSION = 3  # bumped when the checkpoint's layout changes; older checkpoints are refused
BEST_FORMAT_VERSION = 2  # best.pt's layout (weights, epoch, metrics, config); unchanged by format 3
CKPT, LATEST = "ckpt", "latest.pt"
MODEL, OPTIM, BEST = "model/", "optim/", "best/"  # the tensors' keys in the DCP folder


def check_format(payload: dict[str, Any], where: str, version: int = FORMAT_VERSION) -> None:
    """Refuse a checkpoint (or ``best.pt``, ``version=BEST_FORMAT_VERSION``) of another format version."""
    found = payload.get("format_version")
    if found != version:
        raise ValueError(f"{where} has checkpoint format {found!r}, this raymmrec reads format "
                         f"{version}; start a new run (another run_name) or use the matching version")


def ranks(ctx: Any) -> tuple[int, int]:
    """(rank, number of processes) of a run's :class:`~raymmrec.dist.DistContext`: a column-sharded
    context counts its ranks in ``columns`` (its own ``world_size`` is 1: every rank sees every batch)."""
    cols = getattr(ctx, "columns", None)
    return (cols.rank, cols.world_size) if cols is not None else (ctx.rank, ctx.world_size)


# --- where the tensors are read and written ---------------------------------------------------------------


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` is a pickle: read it with only DCP's own metadata classes allowed, so that a
    checkpoint cannot run code when loaded (the tensors themselves are read ``weights_only``)."""

    ALLOWED = {
        *(("torch.distributed.checkpoint.metadata", n) for n in (
            "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
            "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in self.ALLOWED or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


def _safe(reader_cls: type) -> type:
    class Reader(reader_cls):  # type: ignore[misc, valid-type]
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except pickle.UnpicklingError as e:
                    raise ValueError(f"{path} could not be loaded safely: {e}") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader


def _reader(folder: str) -> Any:
    if is_url(folder):  # DCP's fsspec storage: byte ranges of the objects, as from local files
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        reader = _safe(FsspecReader)(folder, **fs_options(folder))
        reader.fs.fs.invalidate_cache()  # written by other processes since this one last listed
        return reader
    return _safe(dcp.FileSystemReader)(folder.removeprefix("file://"))


def _writer(folder: str) -> Any:
    if is_url(folder):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(folder, **fs_options(folder))
    return dcp.FileSystemWriter(folder.removeprefix("file://"))


@contextlib.contextmanager
def _one_process_quietly() -> Iterator[None]:
    """DCP warns at every save and load in one process that it assumes one process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _write_latest(target: str, payload: dict[str, Any]) -> None:
    """Atomically: a local temporary file renamed into place, or one object put."""
    save_tensors(target, payload)


def _remove_others(ckpt: str, keep: str) -> None:
    """Every tensor folder but ``keep``: those of older checkpoints, or of a save that never committed."""
    fs, root = open_fs(ckpt)
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("epoch-") and name != keep:
            fs.rm(path, recursive=True)


# --- saving ---------------------------------------------------------------------------------------------------


def _optimizer_tensors(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, Tensor]:
    """``optim/<parameter name>/<state name>`` -> this rank's state tensor (Adam's moments, its step)."""
    names = {id(p): k for k, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for what, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    out[f"{OPTIM}{names[id(p)]}/{what}"] = v
    return out


def _split_of(key: str, splits: dict[str, Split]) -> Split | None:
    """The split of the tensor under ``key`` (model, best or optimizer state): its parameter's."""
    for prefix in (MODEL, BEST):
        if key.startswith(prefix):
            return splits.get(key[len(prefix):])
    return splits.get(key[len(OPTIM):].rsplit("/", 1)[0])


def save_checkpoint(run: str | Path, trainer: Trainer, state: TrainState, config: dict[str, Any],
                    best: dict[str, Tensor] | None = None, warn: Any = None) -> str:
    """Write the checkpoint of ``state`` under ``<run>/ckpt`` (see the module's docstring); every rank of a
    distributed run calls it at the same point (a collective). ``best``: this rank's blocks of the best
    weights when they are not the current ones (:meth:`~raymmrec.train.callbacks.BestWeightsCallback.for_checkpoint`).
    ``warn``: where a column-sharded run's rank 0 reports replicated parameters whose copies differ.
    Returns the tensors' folder name."""
    model = unwrap(trainer.model)
    cols = getattr(model, "columns", None)
    rank, world = ranks(trainer.ctx)
    if cols is not None:  # every rank: do the replicated parameters' copies still agree? (raymmrec.shard)
        check_replicated(model, warn)
    splits = splits_of(model)
    mine: dict[str, Tensor] = {}
    sources = [(MODEL + k, v) for k, v in model.state_dict().items()]
    sources += list(_optimizer_tensors(trainer.optimizer, model).items())
    sources += [(BEST + k, v) for k, v in (best or {}).items()]
    for key, t in sources:
        for name, entry in checkpoint_entries(key, t.detach(), _split_of(key, splits), cols).items():
            if rank == 0 or _is_dtensor(entry):
                mine[name] = entry  # blocks from every rank, replicated tensors from rank 0
    folder_name = f"epoch-{state.epoch:05d}"
    ckpt = join(str(run), CKPT)
    with _one_process_quietly():
        dcp.save(mine, storage_writer=_writer(join(ckpt, folder_name)), no_dist=world == 1)
    if rank == 0:  # every rank's blocks are written (dcp.save returns after the metadata): commit
        groups = trainer.optimizer.state_dict()["param_groups"]
        schedule = None if trainer.scheduler is None else trainer.scheduler.state_dict()
        _write_latest(join(ckpt, LATEST), {
            "format_version": FORMAT_VERSION, "tensors": folder_name, "state": state.to_dict(), "config": config,
            "optimizer": {"param_groups": groups}, "scheduler": schedule, "best": best is not None,
            "world_size": world, "shard": "columns" if cols is not None else "none",
            "splits": {k: [s.dim, s.parts] for k, s in splits.items()},
        })
        _remove_others(ckpt, folder_name)
    return folder_name


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


# --- reading --------------------------------------------------------------------------------------------------


def read_latest(run: str | Path) -> dict[str, Any] | None:
    """The loop state of ``run``'s checkpoint (``ckpt/latest.pt``, weights_only), or None where the run
    has none; a checkpoint of another format (or an older raymmrec's Ray checkpoints) is refused."""
    path = join(str(run), CKPT, LATEST)
    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        fs, root = open_fs(str(run))
        if fs.exists(root) and fs.glob(f"{root}/checkpoint_*/latest.pt"):
            raise ValueError(f"run folder {run} holds checkpoints of an older raymmrec (checkpoint_*/, format 2), "
                             f"this raymmrec reads format {FORMAT_VERSION}; start a new run (another run_name) "
                             "or use the matching version") from None
        return None
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path} could not be loaded safely (weights_only=True): {e}") from None
    check_format(payload, path)
    return payload


def _load(folder: str, targets: dict[str, Tensor], world: int) -> None:
    if targets or world > 1:  # a collective: every rank takes part, even one that reads nothing
        with _one_process_quietly():
            dcp.load(targets, storage_reader=_reader(folder), no_dist=world == 1)


def read_tensors(run: str | Path, prefix: str = MODEL, payload: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """The whole tensors of ``run``'s checkpoint under ``prefix`` (``model/``: the weights by state-dict
    name; ``best/``; ``optim/``), assembled in this process from every rank's blocks (no process group)."""
    payload = payload or read_latest(run)
    if payload is None:
        raise FileNotFoundError(f"{join(str(run), CKPT, LATEST)} does not exist")
    folder = join(str(run), CKPT, payload["tensors"])
    md = _reader(folder).read_metadata().state_dict_metadata
    targets = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.items()
               if k.startswith(prefix) and hasattr(m, "size")}
    _load(folder, targets, 1)
    splits = {k: Split(dim, parts, 0) for k, (dim, parts) in payload["splits"].items()}
    out = {}
    for key in sorted({k.split("#", 1)[0] for k in targets}):
        out[key[len(prefix):]] = join_entries(key, targets, _split_of(key, splits))
    return out


def _local_optimizer_targets(md: dict[str, Any], splits: dict[str, Split], cols: Any) -> dict[str, Tensor]:
    """Every optimizer state tensor the checkpoint holds (``md``: its metadata) as this rank's empty tensor."""
    out = {}
    for key in sorted({k.split("#", 1)[0] for k in md if k.startswith(OPTIM)}):
        m = md[key] if key in md else md[f"{key}#0"]
        shape, split = list(m.size), _split_of(key, splits)
        if split is not None and len(shape) > split.dim:  # this rank's columns (all parts' sections)
            shape[split.dim] = local_width(split, cols)
        out[key] = torch.empty(shape, dtype=m.properties.dtype)  # every element is read
    return out


def _optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, tensors: dict[str, Tensor],
                     param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """An ``optimizer.state_dict()`` from ``optim/<parameter>/<state>`` tensors and the saved groups."""
    index = {id(prm): i for i, prm in enumerate(q for g in optimizer.param_groups for q in g["params"])}
    names = dict(model.named_parameters())
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        name, what = key[len(OPTIM):].rsplit("/", 1)
        state.setdefault(index[id(names[name])], {})[what] = t
    return {"state": state, "param_groups": param_groups}


def restore(p: Any, run: str | Path, where: str) -> tuple[TrainState, dict[str, Tensor] | None] | None:
    """Resume ``p`` (:class:`~raymmrec.train.build.Pieces`: model, optimizer, schedule, config, context)
    from ``run``'s checkpoint, reading only this rank's blocks; a collective in a distributed run.

    Returns the loop state (early stopping included: the checkpoint alone decides, see
    artifacts.resume_best) and this rank's blocks of the best weights where the checkpoint holds them
    and this rank keeps them (rank 0, or every rank of a column-sharded run; None otherwise, and where the
    best are the current weights); None where the run has no checkpoint yet. The checkpoint may come from
    any number of ranks, or one process.
    """
    from raymmrec.train.build import check_same_run

    payload = read_latest(run)
    if payload is None:
        return None
    check_same_run(payload["config"], p.config, where)
    model, cols = p.model, getattr(p.model, "columns", None)
    rank, world = ranks(p.ctx)
    splits = splits_of(model)
    folder = join(str(run), CKPT, payload["tensors"])
    wanted = {MODEL + k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()}
    wanted.update(_local_optimizer_targets(_reader(folder).read_metadata().state_dict_metadata, splits, cols))
    keeps_best = payload["best"] and (cols is not None or rank == 0)  # best.pt's writer, or every block holder
    if keeps_best:
        wanted.update({BEST + k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()})
    # the load fills each tensor through its entries (a DTensor's local block, a section)
    entries = {key: checkpoint_entries(key, t, _split_of(key, splits), cols) for key, t in wanted.items()}
    _load(folder, {name: e for each in entries.values() for name, e in each.items()}, world)
    got = {key: join_entries(key, each, _split_of(key, splits)) for key, each in entries.items()}
    model.load_state_dict({k[len(MODEL):]: v for k, v in got.items() if k.startswith(MODEL)})
    moments = {k: v for k, v in got.items() if k.startswith(OPTIM)}
    p.optimizer.load_state_dict(_optimizer_state(p.optimizer, model, moments, payload["optimizer"]["param_groups"]))
    if p.scheduler is not None and payload.get("scheduler") is not None:
        p.scheduler.load_state_dict(payload["scheduler"])
    state = TrainState.from_dict(payload["state"])
    state.resumes.append(state.epoch)
    best = {k[len(BEST):]: v for k, v in got.items() if k.startswith(BEST)} if keeps_best else None
    return state, best


def read_checkpoint(run: str | Path) -> dict[str, Any]:
    """``run``'s checkpoint in this process: the loop state of ``ckpt/latest.pt`` with the whole weights
    under ``"model"`` (assembled from every rank's blocks), e.g. to inspect a run or compare two."""
    payload = read_latest(run)
    if payload is None:
        raise FileNotFoundError(f"{join(str(run), CKPT, LATEST)} does not exist")
    return {**payload, "model": read_tensors(run, MODEL, payload)}
