"""Forget requests at the edges: pairs only in valid/test, the cold-start split, every run path form,
relative request paths under Ray, and what an unlearned run's best.pt says it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raymmrec.config import load_spec
from raymmrec.data import load_dataset
from raymmrec.data.forget import ForgetRequest, apply_forget
from raymmrec.train.build import build, load_data, ranked_items
from raymmrec.unlearning import unlearn


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A BM3 run on synthetic:tiny with 10% cold-start items, 2 epochs in this process."""
    from raymmrec.train.run import run

    out = tmp_path_factory.mktemp("trained")
    spec = load_spec("bm3", overrides=["data.source=synthetic:tiny", "data.cold_items=0.1", "train.epochs=2",
                                       f"output_dir={out}", "run_name=bm3-cold"])
    run(spec, progress=False)
    return str(out / "bm3-cold")


def _pairs_csv(path: Path, users, items) -> str:
    path.write_text("userID,itemID\n" + "".join(f"{u},{i}\n" for u, i in zip(users, items)))
    return str(path)


def _spec(*overrides: str):
    return load_spec("bpr", overrides=["data.source=synthetic:tiny", "train.epochs=1", *overrides])


def _has(part, u: int, i: int) -> bool:
    return bool(((part.users == u) & (part.items == i)).any())


# -- defect 3: a request whose pairs lie only in valid/test -----------------------------------------

def test_a_request_of_only_held_out_pairs_is_applied_once(tmp_path):
    data = load_dataset("synthetic:tiny")
    users, items = [data.valid.users[0], data.test.users[1]], [data.valid.items[0], data.test.items[1]]
    p = build(_spec(f"data.forget={_pairs_csv(tmp_path / 'r.csv', users, items)}"))
    assert not _has(p.data.valid, users[0], items[0]) and not _has(p.data.test, users[1], items[1])
    assert len(p.data.forgotten) == 0 and p.data.forget_applied
    assert len(p.data.train) == len(data.train)


def test_unlearning_a_request_of_only_held_out_pairs_keeps_the_weights(trained, tmp_path):
    from raymmrec.train.artifacts import read_best
    from raymmrec.train.trained import load_trained

    data = load_data(load_spec("bm3", overrides=["data.source=synthetic:tiny", "data.cold_items=0.1"]))
    u, i = int(data.test.users[0]), int(data.test.items[0])
    rep = unlearn(trained, ForgetRequest.of(users=[u], items=[i]), output_dir=str(tmp_path), name="t",
                  progress=False)
    assert rep["epochs_run"] == 0 and rep["request"]["forgotten_train_pairs"] == 0
    before, after = read_best(trained)["model"], read_best(str(tmp_path / "t"))["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not _has(load_trained(str(tmp_path / "t")).data.test, u, i)


# -- defect 4: the cold-start split ---------------------------------------------------------------

def test_forget_requests_reach_the_cold_split():
    data = load_dataset("synthetic:tiny", cold_items=0.1)
    cold_item = int(data.cold_items()[0])
    user = int(data.cold.users[data.cold.items != cold_item][0])  # a user with a cold pair of another item
    by_user = apply_forget(data, ForgetRequest.of(users=[user]))
    assert user not in by_user.cold.users and len(by_user.cold) < len(data.cold)
    by_item = apply_forget(data, ForgetRequest.of(items=[cold_item]))  # was: "has no interaction to forget"
    assert cold_item not in by_item.cold_items() and cold_item in by_item.forgotten_items
    pair = ForgetRequest.of(users=[data.cold.users[0]], items=[data.cold.items[0]])
    assert len(apply_forget(data, pair).cold) == len(data.cold) - 1


def test_a_forgotten_cold_item_leaves_training_and_cold_evaluation(tmp_path):
    data = load_dataset("synthetic:tiny", cold_items=0.1)
    cold = data.cold_items()
    req = tmp_path / "i.csv"
    req.write_text(f"itemID\n{cold[0]}\n")
    p = build(_spec("data.cold_items=0.1", f"data.forget={req}"))
    assert np.array_equal(p.data.cold_items(), cold[1:])  # held out once, not again after the forget
    assert cold[0] not in ranked_items(p.data) and cold[0] in p.data.forgotten_items


def test_unlearning_every_cold_item_keeps_the_cold_split_it_had(trained, tmp_path):
    """All cold items forgotten: the cold split is empty and must not be drawn again from the retain data."""
    data = load_dataset("synthetic:tiny", cold_items=0.1)
    rep = unlearn(trained, ForgetRequest.of(items=data.cold_items()), output_dir=str(tmp_path), name="c",
                  progress=False)
    assert rep["epochs_run"] == 0
    from raymmrec.train.trained import load_trained

    t = load_trained(str(tmp_path / "c"))
    assert len(t.data.cold) == 0 and np.array_equal(t.data.forgotten_items, data.cold_items())
    assert len(t.data.train) == len(data.train)


def test_a_request_of_no_training_pairs_still_resets_its_items(trained, tmp_path):
    """Cold items only (no training pair): reset=zero must still zero their rows of every item-indexed tensor."""
    from raymmrec.train.artifacts import read_best
    from raymmrec.train.trained import load_trained
    from raymmrec.unlearning.reset import indexed_tensors

    cold = load_dataset("synthetic:tiny", cold_items=0.1).cold_items()[:2]
    rep = unlearn(trained, ForgetRequest.of(items=cold), output_dir=str(tmp_path), name="z",
                  options={"reset": "zero"}, progress=False)
    assert rep["epochs_run"] == 0 and rep["request"]["forgotten_train_pairs"] == 0
    keys = [k for k, (_, d) in indexed_tensors(load_trained(trained).model, "items").items() if not d.derived]
    assert keys and set(keys) <= set(rep["reset"])
    before, after = read_best(trained)["model"], read_best(str(tmp_path / "z"))["model"]
    for k in keys:
        ax = indexed_tensors(load_trained(trained).model, "items")[k][1].axis
        rows = torch.as_tensor(cold, dtype=torch.long)
        assert before[k].index_select(ax, rows).abs().sum() > 0, k  # they held something to reset
        assert after[k].index_select(ax, rows).abs().sum() == 0, k


# -- defect 5: every form of --run ----------------------------------------------------------------

@pytest.mark.parametrize("form", ["file", "relative", "plain"])
def test_unlearn_accepts_every_run_path_form(trained, tmp_path, monkeypatch, form):
    from raymmrec.train.trained import load_trained

    run_dir = Path(trained)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    if form == "relative":
        monkeypatch.chdir(run_dir.parent)
        run, output = run_dir.name, None  # default output: beside the run
    else:
        monkeypatch.chdir(cwd)
        run = f"file://{run_dir}" if form == "file" else str(run_dir)
        output = f"file://{out}" if form == "file" else str(out)
    rep = unlearn(run, ForgetRequest.of(users=[0]), output_dir=output, name=f"u-{form}", progress=False)
    folder = Path(rep["folder"].removeprefix("file://"))
    assert folder.is_absolute() and (folder / "best.pt").is_file()
    assert folder.parent == (run_dir.parent if form == "relative" else out)
    assert list(cwd.iterdir()) == []  # no stray ./file:/... tree
    forget = json.loads((folder / "config.json").read_text())["data"]["forget"]
    assert forget == "forget.parquet" and (folder / forget).is_file()  # relative to the run folder
    monkeypatch.chdir(tmp_path)
    t = load_trained(str(folder))
    assert t.data.forget_applied and t.spec.data.forget == str(folder / "forget.parquet")
    if form == "relative":
        import shutil

        shutil.rmtree(folder)  # beside the shared run: leave its parent as the other tests expect


def test_ray_unlearn_driver_hands_tasks_absolute_paths(tmp_path, monkeypatch):
    from raymmrec.ray.unlearn import task_path

    monkeypatch.chdir(tmp_path)
    assert task_path("runs/a") == str(tmp_path / "runs" / "a")
    assert task_path(f"file://{tmp_path}/b/") == str(tmp_path / "b")
    assert task_path("s3://bucket/runs/a") == "s3://bucket/runs/a"
    assert task_path(None) is None


# -- defect 6: a relative data.forget under Ray ---------------------------------------------------

def test_ray_driver_makes_a_relative_forget_path_absolute(tmp_path, monkeypatch):
    from raymmrec.ray.launch import absolute_data_paths

    monkeypatch.chdir(tmp_path)
    Path("req.csv").write_text("userID\n0\n")
    spec = _spec("data.forget=req.csv")
    absolute_data_paths(spec)
    monkeypatch.chdir(tmp_path.parent)  # a Ray Train worker runs in its own directory
    assert len(load_data(spec).forgotten) > 0
    spec = _spec(f"data.forget=file://{tmp_path}/req.csv")
    absolute_data_paths(spec)
    assert spec.data.forget == str(tmp_path / "req.csv")
    spec = _spec("data.forget=s3://bucket/req.csv")
    absolute_data_paths(spec)
    assert spec.data.forget == "s3://bucket/req.csv"


# -- defect 7: what an unlearned run's weights came from ------------------------------------------

def test_unlearned_best_records_where_it_came_from(trained, tmp_path):
    from raymmrec.train.artifacts import read_best
    from raymmrec.train.trained import load_trained

    rep = unlearn(trained, ForgetRequest.of(users=[0, 1]), output_dir=str(tmp_path), name="u",
                  options={"epochs": 1}, progress=False)
    src = read_best(trained)
    best = read_best(str(tmp_path / "u"))
    origin = best["unlearned_from"]
    assert origin["run"] == trained and origin["epoch"] == int(src["epoch"])
    assert origin["request"]["kind"] == "user"
    assert (origin["epochs_run"], origin["epochs_kept"]) == (rep["epochs_run"], rep["epochs_kept"])
    assert origin["unlearning_epochs"] == rep["epochs_kept"]  # the epochs the weights hold
    assert np.isfinite(best["score"]) and best["valid"] and best["test"]
    line = load_trained(str(tmp_path / "u")).weights_note()
    assert line.startswith(f"unlearned from {trained} epoch {int(src['epoch'])}"), line
    assert load_trained(trained).weights_note() == f"weights of epoch {int(src['epoch'])}"


def test_a_cold_item_whose_users_are_all_forgotten_stays_cold():
    """Review finding: cold items were read off the remaining cold pairs, so forgetting every user of a
    cold item turned it into an ordinary item (a training negative, a smaller cold candidate set)."""
    from raymmrec.train.build import build

    data = load_dataset("synthetic:tiny", cold_items=0.1)
    item = int(data.cold_items()[0])
    users = np.unique(data.cold.users[data.cold.items == item])
    after = apply_forget(data, ForgetRequest.of(users=users.tolist()))
    assert item not in after.cold.items  # every pair of it is gone ...
    assert item in after.cold_items()  # ... and it is still a cold-start item
    p = build(_spec("data.cold_items=0.1", "train.negative_pool=all"), data=after)
    assert item not in p.sampler.candidates.tolist()  # never a training negative
