"""Unlearning (MMRecUn): forget requests, the retain data and graphs, the unlearning run folder, Ray tasks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raymmrec.config import ConfigError, load_spec
from raymmrec.data import DataError, load_dataset
from raymmrec.data.forget import ForgetRequest, all_pairs, apply_forget, parse_request, read_request
from raymmrec.train.build import build
from raymmrec.unlearning import unlearn
from raymmrec.unlearning.mmrecun import options_from

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A BM3 run on synthetic:tiny, trained for 3 epochs in this process."""
    from raymmrec.train.run import run

    out = tmp_path_factory.mktemp("trained")
    spec = load_spec("bm3", overrides=["data.source=synthetic:tiny", "train.epochs=3", f"output_dir={out}",
                                       "run_name=bm3-tiny"])
    run(spec, progress=False)
    return str(out / "bm3-tiny")


def tree_digest(folder: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# -- requests --------------------------------------------------------------------------------------

def test_request_kind_follows_the_columns(tmp_path):
    pd.DataFrame({"userID": [3, 1, 3]}).to_parquet(tmp_path / "u.parquet")
    (tmp_path / "i.csv").write_text("itemID\n5\n2\n")
    (tmp_path / "p.csv").write_text("userID,itemID\n1,2\n3,4\n")
    u, i, p = (read_request(str(tmp_path / f)) for f in ("u.parquet", "i.csv", "p.csv"))
    assert (u.kind, u.users.tolist()) == ("user", [1, 3])
    assert (i.kind, i.items.tolist()) == ("item", [2, 5])
    assert (p.kind, p.users.tolist(), p.items.tolist()) == ("interaction", [1, 3], [2, 4])


@pytest.mark.parametrize("text, match", [
    ("user\n1\n", "expected columns userID"),
    ("userID\n1\nx\n", "row 2, column userID: expected an integer id"),
    ("userID\n", "no rows"),
])
def test_bad_request_files_are_one_line_errors(text, match):
    with pytest.raises(DataError, match=match):
        parse_request(text.encode(), "req.csv")


def test_ids_that_do_not_exist_are_errors_naming_the_row():
    data = load_dataset("synthetic:tiny")
    with pytest.raises(DataError, match=r"req: row 2: userID 40 does not exist \(the dataset has ids 0..39\)"):
        apply_forget(data, ForgetRequest.of(users=[0, 40], source="req"))
    u, i = int(data.train.users[0]), int(data.train.items[0])
    every = all_pairs(data)
    absent = next(j for j in range(data.n_items) if (u, j) not in set(zip(every.users, every.items)))
    with pytest.raises(DataError, match=rf"row 2: user {u}, item {absent} is not an interaction"):
        apply_forget(data, ForgetRequest.of(users=[u, u], items=[i, absent], source="req"))


def test_forgotten_interactions_leave_every_split():
    data = load_dataset("synthetic:tiny")
    users = np.unique(data.train.users)[:4]
    out = apply_forget(data, ForgetRequest.of(users=users))
    for s in ("train", "valid", "test"):
        assert not np.isin(out.split(s).users, users).any()
    assert set(out.forgotten.users) == set(users) and len(out.forgotten) + len(out.train) == len(data.train)


# -- the retain data a run trains on (Gold) and an unlearned model is rebuilt with ------------------

def test_item_request_rebuilds_graphs_and_sampler_without_the_items(tmp_path, monkeypatch):
    data = load_dataset("synthetic:tiny")
    monkeypatch.setenv("RAYMMREC_CACHE", str(tmp_path / "cache"))  # prepared inputs built here, not read
    items = np.unique(data.train.items)[:5]
    path = tmp_path / "items.parquet"
    ForgetRequest.of(items=items).to_frame().to_parquet(path)
    spec = load_spec("cm3", overrides=["data.source=synthetic:tiny", f"data.forget={path}",
                                       "train.negative_pool=all"])  # the pool itself would hold them
    p = build(spec)
    ids = torch.as_tensor(items)
    adj = p.graph.prepared["adj"].to_dense()
    assert adj[:, data.n_users + ids].abs().sum() == 0, "the user-item graph keeps forgotten edges"
    mm = p.graph.prepared["mm_adj"].to_dense()
    others = torch.ones(data.n_items, dtype=torch.bool)
    others[ids] = False
    assert mm[others][:, ids].abs().sum() == 0, "another item keeps a forgotten item as a neighbour"
    neg = p.sampler.sample(torch.arange(data.n_users).repeat(50), torch.Generator().manual_seed(0))
    assert not torch.isin(neg, ids).any(), "the retain-side sampler served a forgotten item"
    assert "forgotten" in p.summary


# -- unlearning a trained run ---------------------------------------------------------------------

def test_unlearning_writes_a_new_run_and_never_alters_the_original(trained, tmp_path):
    before = tree_digest(trained)
    data = load_dataset("synthetic:tiny")
    users = np.unique(data.train.users)[:6]
    rep = unlearn(trained, ForgetRequest.of(users=users), output_dir=str(tmp_path), name="u", gold=True,
                  progress=False)
    assert tree_digest(trained) == before
    folder = tmp_path / "u"
    assert {p.name for p in folder.iterdir()} >= {"best.pt", "config.json", "forget.parquet", "report.json",
                                                   "report.md", "gold"}
    saved = json.loads((folder / "report.json").read_text())
    for model in ("original", "unlearned", "gold"):
        assert {"forget recall@20", "test recall@20", "retain recall@20", "membership_auc"} <= set(saved[model])
    assert saved["unlearned"]["seconds"] > 0 and saved["gold"]["seconds"] > 0
    # reset=auto zeroes BM3's forgotten users (what BM3's full-table regulariser leaves of them)
    w = torch.load(folder / "best.pt", weights_only=True)["model"]["user_emb.weight"]
    assert w[torch.as_tensor(users)].abs().sum() == 0 and w.abs().sum() > 0
    assert rep["unlearned"]["forget recall@20"] < rep["original"]["forget recall@20"]
    # Gold records the request beside it, relative to its own folder, and loads from it
    from raymmrec.train.trained import load_trained

    assert json.loads((folder / "gold" / "config.json").read_text())["data"]["forget"] == "../forget.parquet"
    assert len(load_trained(str(folder / "gold")).data.forgotten) == len(load_trained(str(folder)).data.forgotten) > 0


def test_unlearned_run_never_recommends_forgotten_items(trained, tmp_path):
    from raymmrec.recommend import evaluate, top_k
    from raymmrec.train.trained import load_trained

    data = load_dataset("synthetic:tiny")
    items = np.unique(data.train.items)[:6]
    unlearn(trained, ForgetRequest.of(items=items), output_dir=str(tmp_path), name="i", progress=False)
    t = load_trained(str(tmp_path / "i"))
    assert np.array_equal(t.data.forgotten_items, items)
    top, _ = top_k(t, torch.arange(data.n_users), k=10)
    assert not torch.isin(top, torch.as_tensor(items)).any()
    assert set(evaluate(t)) == {"valid", "test"}


def test_a_moved_unlearned_run_still_evaluates_and_ranks(trained, tmp_path, capsys, monkeypatch):
    """The request is recorded relative to the run folder: a moved (or uploaded) folder loads; so does
    an older one that recorded the absolute path it was written at."""
    import shutil

    from raymmrec.cli import main as cli_main
    from raymmrec.serving import Ranker

    items = np.unique(load_dataset("synthetic:tiny").train.items)[:4]
    unlearn(trained, ForgetRequest.of(items=items), output_dir=str(tmp_path / "a"), name="i", progress=False)
    moved = tmp_path / "b" / "i"
    shutil.move(tmp_path / "a" / "i", moved)
    config = json.loads((moved / "config.json").read_text())
    assert config["data"]["forget"] == "forget.parquet"
    best = torch.load(moved / "best.pt", weights_only=True)
    assert best["config"]["data"]["forget"] == "forget.parquet"  # best.pt agrees with config.json
    assert cli_main(["evaluate", "--run", str(moved)]) == 0
    assert "test " in capsys.readouterr().out
    ranker = Ranker.load(str(moved))
    assert ranker.info["forgotten_items"] == len(items)
    shown = {e["item"] for row in ranker.recommend(list(range(ranker.n_users)), 10) for e in row}
    assert shown and not shown & set(items.tolist())
    # as the previous version wrote it: the absolute path of the folder before it was moved
    config["data"]["forget"] = str(tmp_path / "a" / "i" / "forget.parquet")
    (moved / "config.json").write_text(json.dumps(config))
    assert Ranker.load(str(moved)).info["forgotten_items"] == len(items)
    # a request of the same name where the command runs is never read in place of the run's own
    config["data"]["forget"] = "forget.parquet"
    (moved / "config.json").write_text(json.dumps(config))
    (moved / "forget.parquet").rename(moved / "kept.parquet")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "forget.parquet").write_bytes(ForgetRequest.of(items=items[:1]).to_parquet_bytes())
    monkeypatch.chdir(other)
    with pytest.raises(Exception, match="forget.parquet"):
        Ranker.load(str(moved))


def test_a_failed_request_leaves_no_partial_folder(trained, tmp_path, monkeypatch):
    import raymmrec.unlearning.run as ur

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(ur, "fine_tune", boom)
    with pytest.raises(RuntimeError, match="killed"):
        unlearn(trained, ForgetRequest.of(users=[0]), output_dir=str(tmp_path), name="x", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_options_are_errors():
    with pytest.raises(ConfigError, match="unknown option"):
        options_from({"forget_wieght": 1})
    with pytest.raises(ConfigError, match="reset"):
        options_from({"reset": "sometimes"})


def test_cli_errors_are_one_line(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("userID\n100000\n")
    out = subprocess.run([sys.executable, "-m", "raymmrec", "unlearn", "--run", trained, "--request", str(bad),
                          "--local", "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: row 1: userID 100000 does not exist")


# -- Ray: each request its own task ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.ray
def test_two_requests_run_as_concurrent_ray_tasks(ray_cluster, trained, tmp_path, monkeypatch):
    """Each task waits at a barrier (an async Ray actor) until the other task has reached it too, so
    both pass only if they run at the same time; a task left waiting 120 s fails the test. Neither
    task reads the dataset: the command read it once, and the tasks map it from the object store."""
    import ray

    import raymmrec.ray.unlearn as ru

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self, n: int) -> None:
            import asyncio

            self.n, self.arrived, self.all_in = n, set(), asyncio.Event()

        async def wait(self, who: str) -> int:
            self.arrived.add(who)
            if len(self.arrived) == self.n:
                self.all_in.set()
            await self.all_in.wait()
            return len(self.arrived)

    barrier = Barrier.remote(2)
    task = ru._unlearn_task

    def at_barrier(run, request, *args):  # runs in each Ray task (pickled by value)
        import raymmrec.unlearning.run as ur

        def no_read(*a, **k):  # noqa: ANN002, ANN003
            raise AssertionError("an unlearning task read the dataset itself")

        assert ray.get(barrier.wait.remote(request), timeout=120) == 2
        reader, ur.load_data = ur.load_data, no_read  # this task's process only, and only while it runs
        try:
            return task(run, request, *args)
        finally:
            ur.load_data = reader

    monkeypatch.setattr(ru, "_unlearn_task", at_barrier)
    reqs = []
    for name, req in (("a", ForgetRequest.of(users=[0, 1])), ("b", ForgetRequest.of(items=[0, 1]))):
        path = tmp_path / f"{name}.parquet"
        req.to_frame().to_parquet(path)
        reqs.append(str(path))
    out = tmp_path / "out"
    reports = ru.submit(trained, reqs, output_dir=str(out), names=["a", "b"], cpus=1, echo=False,
                        options={"epochs": 3, "stop_auc": None})
    assert all(isinstance(r, dict) for r in reports), reports  # a task that waited in vain raised GetTimeoutError
    assert (out / "a" / "report.json").is_file() and (out / "b" / "report.json").is_file()


def test_unlearning_reads_and_writes_s3(trained, s3_bucket, tmp_path):
    import s3fs

    from raymmrec.train.trained import load_trained

    fs = s3fs.S3FileSystem()
    src = f"{s3_bucket}/unlearn/runs/bm3-tiny"
    for name in ("config.json", "best.pt"):
        fs.put_file(str(Path(trained) / name), f"{src}/{name}")
    req = tmp_path / "req.csv"
    req.write_text("userID\n0\n1\n")
    fs.put_file(str(req), f"{s3_bucket}/unlearn/req.csv")
    rep = unlearn(f"s3://{src}", f"s3://{s3_bucket}/unlearn/req.csv", progress=False)
    out = f"{s3_bucket}/unlearn/runs/{Path(rep['folder']).name}"
    assert rep["folder"] == f"s3://{out}"
    for name in ("config.json", "best.pt", "forget.parquet", "report.json", "report.md"):
        assert fs.exists(f"{out}/{name}"), name
    assert not list(tmp_path.glob("unlearn-*"))
    t = load_trained(rep["folder"])
    assert t.spec.data.forget == f"s3://{out}/forget.parquet" and len(t.data.forgotten) > 0


def test_unlearning_stops_at_chance_or_on_a_plateau():
    from raymmrec.data.forget import apply_forget
    from raymmrec.train.build import make_sampler
    from raymmrec.unlearning.mmrecun import UnlearnOptions, fine_tune

    spec = load_spec("bpr", overrides=["data.source=synthetic:tiny"])
    data = apply_forget(load_dataset("synthetic:tiny"), ForgetRequest.of(users=[0, 1, 2]))
    p = build(spec, data=data)
    sampler = make_sampler(spec, data, p.graph, num_negatives=1)

    def epochs_run(aucs: list[float], **opts) -> int:
        seq = iter(aucs)
        res = fine_tune(p.model, data, sampler, UnlearnOptions(epochs=6, **opts), lr=1e-3, batch_size=64,
                        device=torch.device("cpu"), stop_metric=lambda m: next(seq))
        return res.epochs_run

    assert epochs_run([0.8, 0.7, 0.6, 0.49]) == 3  # at chance
    assert epochs_run([0.8, 0.7, 0.699, 0.6]) == 2  # a plateau
    assert epochs_run([0.8, 0.7, 0.699, 0.6, 0.5, 0.4, 0.3], stop_auc=None) == 6


@pytest.mark.parametrize("method", ["lightgcn", "cm3", "lirdrec"])
def test_unlearning_runs_on_every_graph_backbone(method, tmp_path):
    from raymmrec.train.trained import load_trained
    from raymmrec.train.run import run

    spec = load_spec(method, overrides=["data.source=synthetic:tiny", "train.epochs=2", f"output_dir={tmp_path}",
                                        "run_name=r"])
    run(spec, progress=False)
    rep = unlearn(str(tmp_path / "r"), ForgetRequest.of(items=[3, 4]), name="u", progress=False,
                  options={"epochs": 2, "stop_auc": None})
    assert rep["epochs_run"] == 2 and rep["unlearned"]["top50_exposure"] is not None
    assert all(np.isfinite(v) for k, v in rep["unlearned"].items() if "@" in k)
    t = load_trained(str(tmp_path / "u"))
    before = torch.load(tmp_path / "r" / "best.pt", weights_only=True)["model"]
    changed = [k for k, v in t.model.state_dict().items()
               if k in before and not k.startswith(("item_", "feat")) and not torch.equal(v.cpu(), before[k])]
    assert changed, "fine-tuning left every weight but the reset item rows as trained"


def test_a_killed_request_leaves_no_run_folder_and_a_rerun_succeeds(trained, tmp_path):
    import os
    import signal
    import time

    script = (
        "import time, raymmrec.unlearning.run as ur\n"
        "ur.fine_tune = lambda *a, **k: time.sleep(600)\n"
        f"ur.unlearn({trained!r}, ur.ForgetRequest.of(users=[0]), output_dir={str(tmp_path)!r}, name='k', progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".k.tmp-*/best.pt")) and not list(tmp_path.glob(".k.tmp-*/forget.parquet")):
            assert time.time() < deadline and proc.poll() is None, "the request never started"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "k").exists()
    unlearn(trained, ForgetRequest.of(users=[0]), output_dir=str(tmp_path), name="k", progress=False)
    assert (tmp_path / "k" / "report.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["k"], "the killed request's staging folder was left behind"


# -- every user- or item-indexed tensor, the objective's included, is declared and reset -------------

N_USERS, N_ITEMS = 37, 29  # distinct from each other and from every width (64, 50, 20, 12, 8, 3, ...)


def _pairs():
    """(method, objective) for every registered method and every objective that fits it."""
    from raymmrec.registry import get_model, get_objective, model_names, objective_names

    out = []
    for m in model_names():
        for o in objective_names():
            try:
                get_objective(o).check_compatible(get_model(m))
            except ValueError:
                continue
            out.append((m, o))
    return out


def _variants(cls) -> list[dict]:
    """The defaults, and each boolean option flipped (options that add state, e.g. eval_from_last_batch)."""
    import dataclasses

    flips = [{f.name: not f.default} for f in dataclasses.fields(cls.config_cls) if isinstance(f.default, bool)]
    return [{}, *flips]


def _build(method: str, objective: str, overrides: dict, seed: int = 0):
    from _tiny import tiny_data
    from raymmrec.models.base import build_config
    from raymmrec.objectives.base import build_objective
    from raymmrec.prepared import prepare
    from raymmrec.registry import get_model
    from raymmrec.train.build import build_graph

    cls = get_model(method)
    cfg = build_config(cls, overrides)
    data = tiny_data(N_USERS, N_ITEMS)
    graph = build_graph(data, torch.device("cpu"), prepare(data, cls.prepared_inputs(cfg)))
    torch.manual_seed(seed)
    model = cls(cfg, graph)
    build_objective(cls, cfg, objective).attach(model, N_USERS, N_ITEMS)
    return model


@pytest.mark.parametrize("method, objective", _pairs())
def test_every_user_or_item_indexed_tensor_is_declared_and_reset(method, objective):
    from raymmrec.registry import get_model
    from raymmrec.unlearning.reset import reset_state

    for overrides in _variants(get_model(method)):
        model = _build(method, objective, overrides)
        declared = model.indexed_state()
        state = model.state_dict()
        where = f"{method} x {objective} {overrides or ''}"
        for key, t in state.items():  # every parameter and buffer, model and objective
            for ax, n in enumerate(t.shape):
                who = {N_USERS: "users", N_ITEMS: "items"}.get(n)
                if who is not None:
                    d = declared.get(key)
                    assert d is not None and (d.who, d.axis) == (who, ax), \
                        f"{where}: {key} {tuple(t.shape)} has {who} on axis {ax} but is not declared so"
        for key, d in declared.items():
            assert state[key].shape[d.axis] == {"users": N_USERS, "items": N_ITEMS}[d.who], f"{where}: {key}"
        fresh = _build(method, objective, overrides, seed=1)  # other initial values than the model's
        for who, ids in (("users", [1, 5]), ("items", [2, 7])):
            for how in ("zero", "init"):
                for key, d in declared.items():
                    if d.derived:  # a cache: marked, to see that the reset recomputes it
                        model.state_dict(keep_vars=True)[key].data.fill_(123.0)
                before = {k: v.clone() for k, v in model.state_dict().items()}
                reset_state(model, who, ids, how, fresh=lambda: fresh)  # noqa: B023 - called within the call
                after, ref = model.state_dict(), fresh.state_dict()
                idx = torch.tensor(ids)
                for key, d in declared.items():
                    if d.who != who:
                        continue
                    rows = after[key].index_select(d.axis, idx)
                    if d.derived:
                        assert not (rows == 123.0).any(), f"{where}: cache {key} not recomputed after the reset"
                        continue
                    want = torch.zeros_like(rows) if how == "zero" else ref[key].index_select(d.axis, idx)
                    assert torch.equal(rows, want), f"{where}: {key} rows of forgotten {who} not {how} after the reset"
                    keep = torch.tensor([i for i in range(after[key].shape[d.axis]) if i not in ids])
                    assert torch.equal(after[key].index_select(d.axis, keep), before[key].index_select(d.axis, keep)), \
                        f"{where}: {key}: the reset changed rows of {who} it was not asked to"


def test_cached_scoring_tables_follow_the_reset():
    """CM3 with eval_from_last_batch scores from a cache: after a reset it holds the reset weights' tables."""
    from raymmrec.unlearning.reset import reset_state

    model = _build("cm3", "cm3", {"eval_from_last_batch": True})
    model.train()
    model.score_tables()  # the cache: a training forward's tables
    reset_state(model, "users", [1, 5], "zero")
    model.eval()
    users, items = model.scoring_embeddings()
    with torch.no_grad():
        want_u, want_i = model.tables()
    assert torch.equal(users, want_u) and torch.equal(items, want_i)


@pytest.mark.parametrize("method, how", [("nbpo", "zero"), ("cm3", "init")])
def test_unlearned_best_pt_holds_no_forgotten_users_state(method, how, tmp_path):
    """best.pt after a user-wise request: every user-sized tensor (model and objective, parameters and
    buffers, found by shape) holds zeros / an untrained model's values in the forgotten users' rows."""
    from raymmrec.train.run import run

    over = ["data.source=synthetic:tiny", "train.epochs=1", f"output_dir={tmp_path}", "run_name=r"]
    spec = load_spec(method, overrides=over)
    run(spec, progress=False)
    forgotten = [3, 17, 22]
    unlearn(str(tmp_path / "r"), ForgetRequest.of(users=forgotten), name="u", progress=False,
            options={"epochs": 1, "reset": how})
    best = torch.load(tmp_path / "u" / "best.pt", weights_only=True)["model"]
    trained = torch.load(tmp_path / "r" / "best.pt", weights_only=True)["model"]
    fresh = build(spec).model.state_dict()  # an untrained model of the run's seed
    n_users, idx = 40, torch.tensor(forgotten)
    checked = []
    for key, t in best.items():
        if t.dim() and t.shape[0] == n_users:
            want = torch.zeros_like(t[idx]) if how == "zero" else fresh[key][idx]
            assert torch.equal(t[idx], want), f"{key}: forgotten users' rows are not {how}"
            assert not torch.equal(t[idx], trained[key][idx]), key
            checked.append(key)
    assert {"nbpo": "objective_module.P", "cm3": "branch_logits"}[method] in checked


def _to_fake_device(model, device: torch.device) -> None:
    """Move ``model``'s dense parameters and buffers to ``device`` as fake tensors (the graph's sparse
    buffers stay: a reset never reads them)."""
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and p.layout == torch.strided:
                p.data = p.data.to(device)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.layout == torch.strided:
                mod._buffers[name] = b.to(device)


@pytest.mark.parametrize("method, objective", _pairs())
def test_a_reset_keeps_every_index_on_its_tables_device(method, objective):
    """On a GPU the model and the fresh model live on CUDA while request ids arrive on the CPU. Fake
    CUDA tensors (no GPU needed) check devices as CUDA does, so an index left on the CPU raises here."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from raymmrec.unlearning.reset import reset_state

    model, fresh = _build(method, objective, {}), _build(method, objective, {}, seed=1)
    cuda = torch.device("cuda", 0)
    with FakeTensorMode(allow_non_fake_inputs=True):
        _to_fake_device(model, cuda)
        _to_fake_device(fresh, cuda)
        written = [reset_state(model, who, np.array([1, 5]), how, fresh=lambda: fresh)
                   for who in ("users", "items") for how in ("zero", "init", "mean")]
    assert any(written), f"{method} x {objective}: nothing was reset"
