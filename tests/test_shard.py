"""Column-sharded training (raymmrec.shard) is exact: W gloo ranks, each holding a block of every table's
columns, give the one-process loss and gradients at a step and the same metrics after 3 epochs; their
checkpoint (each rank writes its own blocks) resumes with another W and in one process, and loads into one
process; no rank materialises more than its own share while writing it."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from _shard import data_for, run_methods, worker
from _tiny import tiny_data
from conftest import free_port
from raymmrec.dist import DistContext
from raymmrec.shard import Columns, ShardingUnsupported, split_sizes, supported_methods
from raymmrec.train.artifacts import read_best
from raymmrec.train.build import build, local_evaluate
from raymmrec.train.checkpoint import read_tensors, restore

METHODS = supported_methods()
#: Every method, and the options of CM3 and LIRDRec that change what is split or summed: the fusions, the
#: uncalibrated ablation, three modalities (``+audio``), cold-start items, the raw shared input, no weight
#: copying, and the scoring tables cached by the last batch (split by columns too).
VARIANTS = METHODS + ["cm3+model.fusion=concat+audio+data.cold_items=0.2",
                      "cm3+model.fusion=mean+model.calibration=false",
                      "cm3+audio+model.eval_from_last_batch=true",
                      "lirdrec+model.weight_copying=false+audio+data.cold_items=0.2",
                      "lirdrec+model.dct=false+model.eval_from_last_batch=true"]


def test_supported_methods_and_uneven_split():
    assert set(METHODS) == {"bpr", "lightgcn", "vbpr", "bm3", "bpo", "nbpo", "cm3", "lirdrec"}
    assert split_sizes(64, 3) == [22, 22, 20] and sum(split_sizes(7, 4)) == 7  # torch.chunk's, DTensor's Shard
    assert split_sizes(64, 3) == [len(c) for c in torch.arange(64).chunk(3)]
    t = torch.arange(2 * 10.0).view(2, 10)
    blocks = [Columns(r, 3).local(t, 1, parts=2) for r in range(3)]
    assert [b.shape[1] for b in blocks] == [4, 4, 2]  # each 5-column section splits 2, 2, 1
    assert blocks[0][0].tolist() == [0, 1, 5, 6] and blocks[2][0].tolist() == [4, 9]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {4: run_methods(VARIANTS, str(out / "e4"), 4), 3: run_methods(VARIANTS, str(out / "e3"), 3)}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """W = 2 trains 3 epochs, writing its checkpoints into ``w2/<method>``; W = 3 (64 columns split 22/22/20)
    resumes from them to epoch 4, and so does one process. The W = 2 processes then run ``_shard.replicas``
    (the replicated parameters' copies)."""
    out = tmp_path_factory.mktemp("sharded")
    two, three, rep = out / "w2.pt", out / "w3.pt", out / "replicas.pt"
    mp.spawn(worker, args=(2, free_port(), VARIANTS, str(two), 3, "", str(rep)), nprocs=2, join=True)
    mp.spawn(worker, args=(3, free_port(), VARIANTS, str(three), 4, str(out / "w2")), nprocs=3, join=True)
    return {2: torch.load(two, weights_only=True), 3: torch.load(three, weights_only=True),
            "ranks": {w: [torch.load(f"{out / f'w{w}.pt'}.{r}", weights_only=True) for r in range(w)] for w in (2, 3)},
            1: run_methods(VARIANTS, str(out / "one"), 4, resume=str(out / "w2")),
            "replicas": torch.load(rep, weights_only=True), "runs": out}


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("method", VARIANTS)
def test_loss_and_gradients_equal_one_process(single, sharded, method, world):
    one, cols = single[3][method]["step"], sharded[world][method]["step"]
    torch.testing.assert_close(cols["loss"], one["loss"], rtol=1e-5, atol=1e-7)
    assert cols["grads"].keys() == one["grads"].keys()
    for name, g in one["grads"].items():
        torch.testing.assert_close(cols["grads"][name], g, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{method} {name} (W={world}): {m}")  # noqa: B023 - called now


#: Weights after 3-4 epochs: Adam moves a weight whose gradient sits near 0 by up to the rate (0.01) either
#: way, so a sum taken in another order (the column blocks' partial sums) can move it by a fraction of a step:
#: 1 of LIRDRec's 16 384 encoder weights and 2 of the 1 920 entries of a CM3 user table moved by up to 1.8e-4.
WEIGHTS = {"rtol": 1e-3, "atol": 5e-4}


@pytest.mark.parametrize("world", [2, 3])
def test_a_column_sharded_slerp_is_the_one_process_slerp(tmp_path, world):
    """CM3's fusion on column blocks: rows in general position, identical, parallel and antipodal, whose fixed
    perpendicular is the axis of the row's smallest entry, found on whichever rank holds it; values and
    gradients equal one process's."""
    from _shard import slerp_case, slerp_worker

    mp.spawn(slerp_worker, args=(world, free_port(), str(tmp_path / "s.pt")), nprocs=world, join=True)
    cols, one = torch.load(tmp_path / "s.pt", weights_only=True), slerp_case(None)
    for k, v in one.items():
        torch.testing.assert_close(cols[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k} (W={world}): {m}")  # noqa: B023


def _metrics(logs: dict) -> dict:
    return {k: v for k, v in logs.items() if k.startswith(("test/", "valid/", "cold/")) or k == "loss"}


@pytest.mark.slow
@pytest.mark.parametrize("method", VARIANTS)
def test_three_epochs_then_a_resume_with_another_world_size_match_one_process(single, sharded, method):
    two, one3 = _metrics(sharded[2][method]["test"]), _metrics(single[3][method]["test"])
    assert two.keys() == one3.keys() and "test/recall@10" in two
    assert ("cold/recall@10" in two) == ("data.cold_items" in method)  # the cold-start items' split, where held out
    for k, v in one3.items():
        assert two[k] == pytest.approx(v, abs=1e-4), (method, k)
    one4 = _metrics(single[4][method]["test"])
    for world in (3, 1):  # W = 3 and one process resumed W = 2's checkpoint at epoch 3 and ran epoch 4
        resumed = _metrics(sharded[world][method]["test"])
        assert resumed.keys() == one4.keys()
        for k, v in one4.items():
            assert resumed[k] == pytest.approx(v, abs=1e-4), (method, world, k)
    for k, v in single[4][method]["weights"].items():  # one process from W = 2's checkpoint: the same weights
        torch.testing.assert_close(sharded[1][method]["weights"][k], v, **WEIGHTS, msg=lambda m: f"{k}: {m}")  # noqa: B023


@pytest.mark.slow
@pytest.mark.parametrize("method", VARIANTS)
def test_sharded_checkpoint_loads_into_one_process(tmp_path, sharded, single, method):
    from _shard import spec

    run = sharded["runs"] / "w2" / method  # written by 2 ranks, each its own blocks
    whole = read_tensors(run)
    p = build(spec(method, str(tmp_path), 3), data=data_for(method), device=torch.device("cpu"))
    restore(p, run, "checkpoint of a W=2 run")
    for k, v in p.model.state_dict().items():  # full tables, not one rank's block
        torch.testing.assert_close(v, single[3][method]["weights"][k], **WEIGHTS, msg=lambda m: f"{k}: {m}")  # noqa: B023
        torch.testing.assert_close(whole[k], v, rtol=0, atol=0)
    best = read_best(run)["model"]  # rank 0 assembled it from both ranks' blocks of the same epoch
    assert list(best) == list(p.model.state_dict())
    for k, v in p.model.state_dict().items():
        torch.testing.assert_close(best[k], v, rtol=0, atol=0, msg=lambda m: f"best.pt {k}: {m}")  # noqa: B023
    got = local_evaluate(p.evaluators)(p.model)["test"]
    want = _metrics(single[3][method]["test"])
    for k, v in got.items():
        assert v == pytest.approx(want[f"test/{k}"], abs=1e-4), (method, k)


def test_unsupported_methods_and_objectives_are_refused_in_one_line():
    from raymmrec.models.base import Recommender
    from raymmrec.objectives.base import Objective
    from raymmrec.registry import get_model, get_objective
    from raymmrec.shard import check_supported

    method = type("Plain", (Recommender,), {"name": "plain"})  # every registered method splits by columns
    with pytest.raises(ShardingUnsupported, match="method 'plain' does not support train.shard=columns; methods "
                                                  "that do: bm3, bpo, bpr, cm3, lightgcn, lirdrec, nbpo, vbpr"):
        check_supported(method, get_objective("bpr"))
    plain = type("Plain", (Objective,), {"name": "plain"})  # an objective that never declared column support
    with pytest.raises(ShardingUnsupported, match="objective 'plain' does not support train.shard=columns; "
                                                  "objectives that do: bm3, bpo, bpr, cm3, lirdrec, nbpo, "
                                                  "nbpo_original, nbpo_surrogate"):
        check_supported(get_model("lightgcn"), plain)


@pytest.mark.slow
@pytest.mark.parametrize("method", VARIANTS)
def test_no_rank_materialises_more_than_its_share_while_checkpointing(sharded, single, method):
    """While writing a checkpoint a rank creates tensors of at most its own share of the weights and optimizer
    state (its blocks, the replicated tensors), never the whole tables; while ``best.pt`` is assembled, only
    rank 0 receives the other blocks, and of the weights alone."""
    whole = single[3][method]["saves"][-1]
    for world in (2, 3):
        for rank, res in enumerate(sharded["ranks"][world]):
            for save in res[method]["saves"]:
                assert save["total"] < whole["total"], (method, world, rank)  # a share, not everything
                assert save["made"] <= save["total"], (method, world, rank, save)
                assert save["made_largest"] <= save["largest"], (method, world, rank, save)
            for best in res[method]["best"]:  # rank 0: each whole tensor and block received; others send
                limit = 2 * whole["weights"] if rank == 0 else best["weights"]
                assert best["made"] <= limit, (method, world, rank, best)
                # rank 0 writes each whole tensor before it assembles the next: one at a time in memory
                assert best["peak"] <= 2 * whole["largest"], (method, world, rank, best, whole)


@pytest.fixture(scope="module")
def replicas(sharded):
    return sharded["replicas"]


@pytest.mark.slow
def test_replicated_gradients_are_averaged_so_the_copies_stay_equal(replicas):
    assert replicas["bm3"]["replicated"] == ["predictor.bias", "predictor.weight", "proj.image.bias", "proj.text.bias"]
    assert replicas["nbpo"]["replicated"] == ["objective_module.P", "objective_module.Q"]
    for method, r in replicas.items():  # rank 1's gradient was 0.1 % off at every step of an epoch
        assert r["fresh"] == {} and r["trained"] == {}, method


@pytest.mark.slow
def test_copies_that_differ_are_reported_in_one_line_naming_them(replicas):
    for method, name in (("bm3", "predictor.weight"), ("nbpo", "objective_module.P")):
        r = replicas[method]
        assert r["perturbed"].keys() == {name} and r["perturbed"][name] == pytest.approx(1e-3, rel=1e-3)
        assert r["lines"] == [f"replicated parameters differ across the 2 column-sharded workers: {name} (by up to "
                              f"0.001); the checkpoint keeps worker 0's copy"], method


@pytest.mark.parametrize("rank,world", [(1, 2), (2, 3)])
def test_a_worker_builds_its_blocks_with_the_values_of_the_full_tables(tmp_path, monkeypatch, rank, world):
    """Drawn in chunks of 64 elements (ID tables of 30-48 rows x 64-128 columns: many chunks, with tails), a
    worker's blocks are bit for bit the one-process tables' columns, and every other parameter (NBPO's flip
    tables come after the ID tables) the one-process value: the generator ends where a full draw leaves it."""
    import raymmrec.shard as shard
    from _shard import spec

    monkeypatch.setattr(shard, "CHUNK_ELEMENTS", 64)
    cols = Columns(rank, world)
    for method in METHODS:
        s = spec(method, str(tmp_path), 1)
        one = build(s, data=tiny_data(), device=torch.device("cpu")).model
        mine = build(s, data=tiny_data(), device=torch.device("cpu"), ctx=DistContext(columns=cols)).model
        layout, full = shard.layout_of(mine), one.state_dict()
        assert mine.column_widths == {k: full[k].shape[layout[k][0]] for k in layout}, method
        for k, v in mine.state_dict().items():
            want = cols.local(full[k], *layout[k]) if k in layout else full[k]
            assert torch.equal(v, want), (method, k)


class _LargestStorage(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest storage (bytes) any operation allocates while active: a storage it returns that none of
    its inputs holds (a view of an input, e.g. a slice of a frozen feature table, allocates nothing). Sparse
    tensors (the item-item graph: not a table) have no one storage and are left out."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))

        def dense(t) -> bool:  # noqa: ANN001
            return isinstance(t, torch.Tensor) and t.layout == torch.strided

        leaves = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        held = {t.untyped_storage().data_ptr() for t in leaves if dense(t)}
        for t in torch.utils._pytree.tree_leaves(out):
            if dense(t) and t.untyped_storage().data_ptr() not in held:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("method", METHODS)
def test_building_a_column_sharded_model_never_allocates_a_whole_id_table(method):
    """30 000 users x 64 (VBPR: 128) columns: rank 1 of 2 allocates at most one row chunk (about 4 MiB) or
    its block, never the table, which one process does allocate (CM3's and LIRDRec's user tables, one per
    branch, likewise)."""
    from raymmrec.models.base import RecGraph, build_config
    from raymmrec.registry import get_model
    from raymmrec.shard import CHUNK_ELEMENTS, building_blocks, row_chunks

    n_users, n_items = 30_000, 500
    feats = {"image": torch.randn(n_items, 4), "text": torch.randn(n_items, 3)}
    pairs = torch.arange(n_items)
    eye = torch.eye(n_items).to_sparse_csr()  # CM3's and LIRDRec's item-item graph; LIRDRec's DCT features
    graph = RecGraph(n_users, n_items, feats, pairs, pairs, {"adj": None, "mm_adj": eye, "dct": torch.randn(n_items, 7)})
    cls = get_model(method)
    cfg = build_config(cls, {})
    width = 2 * cfg.embedding_size if method == "vbpr" else cfg.embedding_size
    whole = n_users * width * 4
    with _LargestStorage() as one:
        cls(cfg, graph)
    assert one.largest >= whole  # the measure sees a whole table where one is made
    chunk = max(b - a for a, b in row_chunks(n_users, width)) * width * 4
    assert chunk <= 4 * CHUNK_ELEMENTS < whole
    with _LargestStorage() as mine, building_blocks(Columns(1, 2)) as built:
        model = cls(cfg, graph)
    assert mine.largest <= max(chunk, whole // 2), (mine.largest, whole)
    if hasattr(model, "user_branch"):  # CM3, LIRDRec: a user table per branch, no item table
        tables = list(model.user_branch.values())
    else:
        tables = [model.user_emb.weight, model.item_emb.weight, *getattr(model, "feat", {}).values()]  # BM3's copies
    assert tables[0].shape == (n_users, width // 2)
    assert set(built) == {id(p) for p in tables}


def test_building_bm3_column_sharded_copies_only_its_columns_of_the_feature_tables():
    """BM3's trainable feature copies (500 items x 3 000 columns, read-only like the node's shared arrays):
    rank 1 of 2 allocates at most its block of them (and small tables), never a whole table, which one process
    copies; each copy holds the frozen table's values (its columns) in memory of its own, never a view."""
    import numpy as np

    from raymmrec.models.base import RecGraph, build_config
    from raymmrec.prepared import frozen_tensor
    from raymmrec.registry import get_model
    from raymmrec.shard import building_blocks

    n_users, n_items, width = 40, 500, 3000
    rng = np.random.default_rng(0)
    arrays = {"image": rng.standard_normal((n_items, width), dtype=np.float32),
              "text": rng.standard_normal((n_items, 7), dtype=np.float32)}
    for a in arrays.values():
        a.flags.writeable = False
    feats = {m: frozen_tensor(a) for m, a in arrays.items()}
    pairs = torch.arange(n_items)
    graph = RecGraph(n_users, n_items, feats, pairs, pairs, {"adj": None})
    cls = get_model("bm3")
    cfg = build_config(cls, {})
    whole = n_items * width * 4
    with _LargestStorage() as one:
        full = cls(cfg, graph)
    assert one.largest >= whole  # one process copies the whole table
    cols = Columns(1, 2)
    with _LargestStorage() as mine, building_blocks(cols) as built:
        model = cls(cfg, graph)
    assert mine.largest <= whole // 2, (mine.largest, whole)
    assert set(built) == {id(p) for p in (model.user_emb.weight, model.item_emb.weight, *model.feat.values())}
    for m, t in feats.items():
        assert torch.equal(full.feat[m], t) and torch.equal(model.feat[m], cols.local(t, 1)), m
        for p in (full.feat[m], model.feat[m]):
            assert p.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() and p.requires_grad, m


@pytest.mark.parametrize("n,width,elements", [(1001, 7, 16), (999, 21, 500), (17, 1, 16), (5, 3, 16)])
def test_a_table_drawn_in_row_chunks_is_the_table_drawn_at_once(monkeypatch, n, width, elements):
    """Chunks of 16 rows with a tail of 9 rows, uneven chunks, a 1-element tail (joined to the chunk
    before), a table under 16 elements: normal then uniform draws give the full draw's columns, and
    the generator's next numbers are the same."""
    import raymmrec.shard as shard

    monkeypatch.setattr(shard, "CHUNK_ELEMENTS", elements)
    torch.manual_seed(3)
    t = torch.empty(n, width).normal_().uniform_(-0.5, 0.5)
    after = torch.rand(4)
    torch.manual_seed(3)
    block = shard.drawn_columns(n, width, (lambda c: c.normal_(), lambda c: c.uniform_(-0.5, 0.5)), Columns(0, 2))
    assert torch.equal(block, Columns(0, 2).local(t, 1))
    assert torch.equal(torch.rand(4), after)
