"""The item-item kNN graph built in item blocks as Ray tasks is the one-process graph, exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from raymmrec.graph import knn_graph, mixed_knn_graph


def tied_features(n: int = 53, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Small integer features: many exact ties (repeated rows, parallel rows, zero rows)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).float()
    x[5] = x[3]  # identical rows: similarity exactly 1 with each other
    x[40] = 2 * x[3]  # parallel: the same cosine
    x[17] = x[3]
    x[8] = 0.0  # zero row: similarity 0 to everything
    x[30] = 0.0
    return x


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(a.crow_indices(), b.crow_indices())
    assert torch.equal(a.col_indices(), b.col_indices())
    assert torch.equal(a.values(), b.values())


@pytest.mark.ray
@pytest.mark.parametrize("features, k, block_size, blocks_per_task, exclude", [
    ("tied", 4, 7, 1, None),  # 53 rows in 8 blocks, the last one short
    ("tied", 10, 16, 2, None),  # several blocks per task
    ("tied", 3, 5, 3, [3, 17, 8]),  # excluded items (forgotten); one of them tied, one zero
    ("random", 6, 9, 1, None),  # float features (rounding, not exact ties)
])
def test_ray_blocks_give_the_one_process_graph(ray_cluster, features, k, block_size, blocks_per_task, exclude):
    from raymmrec.ray.item_graph import RayBlockMap

    x = tied_features() if features == "tied" else torch.randn(61, 12, generator=torch.Generator().manual_seed(1))
    lines = []
    ray_map = RayBlockMap(blocks_per_task=blocks_per_task, min_items=0, log=lines.append)
    ref = knn_graph(x, k=k, block_size=block_size, exclude=exclude)
    got = knn_graph(x, k=k, block_size=block_size, exclude=exclude, map_blocks=ray_map)
    same(got, ref)
    n_blocks = -(-x.shape[0] // block_size)
    assert len(lines) == 1 and f"{n_blocks} blocks as {-(-n_blocks // blocks_per_task)} Ray tasks" in lines[0]


@pytest.mark.ray
def test_mixed_modalities_with_weights_match(ray_cluster):
    from raymmrec.ray.item_graph import RayBlockMap

    feats = {"text": tied_features(seed=2).numpy(), "image": tied_features(d=4, seed=3).numpy()}
    weights = {"text": 0.9, "image": 0.1}
    ref = mixed_knn_graph(feats, weights=weights, k=5, block_size=8)
    lines = []
    ray_map = RayBlockMap(min_items=0, log=lines.append)
    got = mixed_knn_graph(feats, weights=weights, k=5, block_size=8, map_blocks=ray_map)
    same(got, ref)
    assert len(lines) == 2 and all("7 blocks as 7 Ray tasks" in line for line in lines)  # one build per modality
    assert len(set(got.values().tolist())) > 1  # 0.9 / 5 and 0.1 / 5 where the modalities disagree


@pytest.mark.ray
def test_the_launchers_loading_task_builds_the_graph_as_ray_tasks(ray_cluster, tmp_path, monkeypatch, capsys):
    """``_load`` (the task that reads a Ray job's dataset and prepares its inputs) builds CM3's graph in blocks
    on the cluster."""
    from raymmrec.config import load_spec
    from raymmrec.prepared import prepare
    from raymmrec.ray import item_graph
    from raymmrec.prepared import from_arrays
    from raymmrec.ray.shared import _load
    from raymmrec.registry import get_model
    from raymmrec.train.build import check_spec, load_data

    monkeypatch.setenv("RAYMMREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(item_graph, "MIN_ITEMS", 0)
    import raymmrec.graph

    # blocks of 8 of synthetic:tiny's 30 items (the builder's default, 1024, is one block)
    monkeypatch.setattr(raymmrec.graph, "mixed_knn_graph", functools.partial(mixed_knn_graph, block_size=8))
    spec = load_spec("cm3", overrides=[f"output_dir={tmp_path}", "data.source=synthetic:tiny"])
    _, _, arrays = _load(spec.to_dict(), None, None, True)  # here, not as a task: its sub-tasks run on the cluster
    prepared = from_arrays(arrays)
    assert "item-item graph: 30 items, 4 blocks as 4 Ray tasks" in capsys.readouterr().out
    cls, cfg, _ = check_spec(spec)
    assert cls is get_model("cm3")
    ref = prepare(load_data(spec), cls.prepared_inputs(cfg))  # one process, no cache
    graphs = [n for n, (b, _) in cls.prepared_inputs(cfg).items() if b == "item_knn"]
    assert graphs
    for name in graphs:
        same(prepared[name], ref[name])


def test_a_block_map_that_loses_blocks_is_an_error():
    with pytest.raises(ValueError, match="returned 1 blocks for 3 spans"):
        knn_graph(np.eye(5, dtype=np.float32), k=2, block_size=2,
                  map_blocks=lambda fn, shared, spans: [fn(*shared, 0, 2)])
