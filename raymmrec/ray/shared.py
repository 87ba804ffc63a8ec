"""One data route for every Ray command: the dataset read and checked once per job, its arrays in
the object store once, mapped by every worker of a node without copying.

:func:`share` (on the driver) runs one loading task on the cluster. The task reads and checks the
dataset (:func:`raymmrec.train.build.load_data`; a columnar dataset's parquet files are read in
parallel by Ray Data, local or ``s3://``; an MMRec folder or a built-in dataset is converted there),
builds the model's prepared inputs (the normalised graph, the item-item graph: from the cache beside
the datasets, or built with the graph's blocks as tasks), and returns both as plain dicts of numpy
arrays (:meth:`raymmrec.data.RecData.to_arrays`, :func:`raymmrec.prepared.to_arrays`). Ray stores
each once, on the task's node. A bad dataset ends here, with its one-line error, before any worker
starts.

:func:`fetch` (on a worker, a Tune trial, an unlearning task) gets them back: ``ray.get`` of a numpy
array returns a read-only view of the node's shared memory, and the core wraps it with
``torch.from_numpy`` (:func:`raymmrec.prepared.frozen_tensor`), so the workers of one node hold one
copy of the pairs, the graph and the frozen features whatever their number. No worker reads the
source again. Nothing writes to these arrays: a model copies what it trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from raymmrec.config import RunSpec, spec_from_dict


@dataclass(frozen=True)
class SharedData:
    """A job's dataset in the object store (picklable: it travels in a worker's config)."""

    summary: str  # the dataset's summary line
    data: Any  # ObjectRef of RecData.to_arrays()
    prepared: Any = None  # ObjectRef of raymmrec.prepared.to_arrays(), or None (not built)
    seconds: float = 0.0  # how long the loading task took, seen from the driver


def get_or_raise_cause(ref: Any, *siblings: Any) -> Any:
    """``ray.get(ref)``; a task's own error (e.g. a bad dataset's one-line DataError) instead of a remote traceback.

    ``siblings``: the task's other return values, which hold the same error; they are fetched too so
    that Ray does not print that error again as unhandled when the driver exits.
    """
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        for other in siblings:
            try:
                ray.get(other)
            except ray.exceptions.RayTaskError:
                pass
        raise (e.cause if isinstance(e.cause, Exception) else e) from None


def read_parquet_tables(urls: list[str]) -> list[Any]:
    """The parquet files ``urls`` (local paths or URLs on one filesystem) as pyarrow tables, in order,
    read in parallel by Ray Data; each table's rows in the file's order."""
    import logging

    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data

    from raymmrec.files import arrow_filesystem

    located = [arrow_filesystem(u) for u in urls]
    fs, paths = located[0][0], [p for _, p in located]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # this task's context: rows as in the files
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-execution lines among the driver's
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True)
    blocks = ray.get(ds.to_arrow_refs())
    table = pa.concat_tables(blocks) if blocks else None
    out = []
    for path in paths:
        if table is None:
            out.append(pa.table({"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64())}))
            continue
        part = table.filter(pc.equal(table["path"], path))
        out.append(part.drop_columns(["path"]))
    return out


def _load(spec_dict: dict[str, Any], lines: Any, data: dict[str, Any] | None, prepare: bool
          ) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """(Ray task) read and check the dataset (unless ``data``, its arrays, is given), build the model's
    prepared inputs (when ``prepare``); (summary, the data's arrays or None when given, the prepared
    inputs' arrays or None). ``lines``: the driver's queue for this task's output (warnings, a first
    build's progress)."""
    from raymmrec import prepared as prep
    from raymmrec.data import RecData
    from raymmrec.ray.item_graph import RayBlockMap  # the item-item graph's blocks as tasks
    from raymmrec.ray.logs import lines_to_driver
    from raymmrec.train.build import load_data, prepared_inputs

    with lines_to_driver(lines):
        spec = spec_from_dict(spec_dict)
        loaded = RecData.from_arrays(data) if data is not None else load_data(spec, read_tables=read_parquet_tables)
        tensors = prepared_inputs(spec, loaded, map_blocks=RayBlockMap(log=print)) if prepare else None
        return (loaded.summary(), None if data is not None else loaded.to_arrays(),
                None if tensors is None else prep.to_arrays(tensors))


def share(spec: RunSpec, lines: Any = None, *, data: SharedData | None = None, prepare: bool = True) -> SharedData:
    """(Driver) ``spec``'s dataset read and checked by one task on the cluster, its arrays (and, with
    ``prepare``, the model's prepared inputs) in the object store; raises the dataset's own error.

    ``data``: a dataset this job already shared (a Tune sweep's): only the prepared inputs are built,
    from its arrays; the source is not read again.
    """
    import ray

    if data is not None and not prepare:
        return data
    t0 = time.perf_counter()
    # "DEFAULT": outside any placement group (a Tune trial that calls launch() would capture it).
    # No CPU held: the task mostly waits on its Ray Data reads, which need CPUs of their own; holding
    # one while waiting deadlocks a small cluster whose other CPUs are taken (e.g. by Serve replicas)
    # max_calls=1: the task's process exits once its arrays are in the object store, giving back its heap
    # (reading and checking a large dataset leaves GBs there that an idle pooled worker would keep)
    task = ray.remote(num_returns=3, num_cpus=0, max_calls=1)(_load).options(scheduling_strategy="DEFAULT")
    summary_ref, data_ref, prepared_ref = task.remote(spec.to_dict(), lines, None if data is None else data.data,
                                                      prepare)
    summary = get_or_raise_cause(summary_ref, data_ref, prepared_ref)
    return SharedData(summary, data.data if data is not None else data_ref, prepared_ref if prepare else None,
                      time.perf_counter() - t0)


def fetch(shared: SharedData) -> tuple[Any, dict[str, Any] | None]:
    """(Worker) the job's :class:`~raymmrec.data.RecData` and prepared inputs (tensors, or None), as
    read-only views of this node's object store: no copy, and no read of the source."""
    import ray

    from raymmrec import prepared as prep
    from raymmrec.data import RecData

    data = RecData.from_arrays(ray.get(shared.data))
    prepared = None if shared.prepared is None else prep.from_arrays(ray.get(shared.prepared))
    return data, prepared
