"""Cold-start items: the hold-out split, cold-only ranking, the content-kNN baseline, and what a run reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _tiny import tiny_data
from raymmrec.config import ConfigError, load_spec
from raymmrec.data import DataError, Interactions, RecData, hold_out_cold_items, write_columnar
from raymmrec.dist import DistContext
from raymmrec.eval.cold import cold_evaluator, cold_notes, content_knn_scorer
from raymmrec.models.base import Recommender
from raymmrec.models.bpr import BPR
from raymmrec.models.vbpr import VBPR
from raymmrec.recommend import evaluate
from raymmrec.train.artifacts import best_extras, results_dict, results_table
from raymmrec.train.trained import load_trained
from raymmrec.train.build import check_same_run, load_data, local_evaluate, run_notes, sharded_evaluate
from raymmrec.train.loop import TrainState
from raymmrec.train.run import run

SPLIT3 = ("train", "valid", "test")


def pairs(inter: Interactions) -> set[tuple[int, int]]:
    return set(zip(inter.users.tolist(), inter.items.tolist()))


def test_hold_out_moves_every_interaction_of_the_drawn_items():
    data = tiny_data()
    before = {s: pairs(data.split(s)) for s in SPLIT3}
    cold = hold_out_cold_items(data, 0.25, seed=999)
    items = cold.cold_items()
    assert items.size == 6  # round(0.25 × 24 items with interactions)
    assert cold.n_items == data.n_items and cold.n_users == data.n_users
    assert all(cold.features[m] is data.features[m] for m in data.features)  # cold items keep their features
    for s in SPLIT3:
        assert not np.isin(cold.split(s).items, items).any()  # no cold item in train, valid or test
        assert pairs(cold.split(s)) == {p for p in before[s] if p[1] not in set(items.tolist())}
    moved = set().union(*before.values()) - set().union(*(pairs(cold.split(s)) for s in SPLIT3))
    assert pairs(cold.cold) == moved and len(cold.cold) == len(moved)  # disjoint, nothing lost
    again = hold_out_cold_items(tiny_data(), 0.25, seed=999)
    np.testing.assert_array_equal(again.cold_items(), items)  # deterministic given data and seed
    assert not np.array_equal(hold_out_cold_items(tiny_data(), 0.25, seed=1).cold_items(), items)
    assert hold_out_cold_items(data, 0.0, seed=999) is data and len(data.cold) == 0
    assert "cold-start: 6 items held out" in cold.summary()


def test_hold_out_and_config_refuse_bad_fractions_in_one_line():
    data = tiny_data()
    for bad, msg in ((1.0, "expected a fraction in [0, 1)"), (-0.1, "expected a fraction in [0, 1)"),
                     (0.01, "holds out no item"), (0.99, "leaves no train interaction")):
        with pytest.raises(DataError, match=msg.replace("[", r"\[").replace(")", r"\)")) as e:
            hold_out_cold_items(data, bad, seed=999)
        assert "\n" not in str(e.value)
    data.features = {}
    with pytest.raises(DataError, match="no item features"):
        hold_out_cold_items(data, 0.2, seed=999)
    with pytest.raises(ConfigError, match=r"data.cold_items: expected a number >= 0 and < 1, got 1"):
        load_spec(method="vbpr", overrides=["data.cold_items=1"])
    assert load_spec(method="vbpr", overrides=["data.cold_items=0.2"]).data.cold_items == 0.2


def hand_case() -> tuple[RecData, torch.Tensor]:
    """6 items, cold {2, 4, 5}; users 0, 1, 2 hold out items {4}, {2, 4} and {5}."""
    train = Interactions(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]))
    none = Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64))
    cold = Interactions(np.array([0, 1, 1, 2]), np.array([4, 2, 4, 5]))
    data = RecData("hand", 3, 6, train, none, none, {}, cold=cold)
    scores = torch.tensor([[9.0, 8.0, 1.0, 7.0, 3.0, 2.0],   # cold ranking 4, 5, 2 (items 0, 1, 3 excluded)
                           [0.0, 0.0, 5.0, 9.0, 4.0, 6.0],   # cold ranking 5, 2, 4 (item 3 at 9 excluded)
                           [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # cold ranking 5, 2, 4
    return data, scores


def test_cold_evaluation_ranks_the_cold_items_only():
    data, scores = hand_case()
    ev = cold_evaluator(data, ks=(1, 2))
    assert ev.users.tolist() == [0, 1, 2]
    got = ev.evaluate(lambda u: scores[u].clone())
    # user 0: truth {4} at rank 1; user 1: truth {2, 4} at ranks 2, 3; user 2: truth {5} at rank 1
    d2 = 1 / math.log2(3)
    assert got["recall@1"] == pytest.approx((1 + 0 + 1) / 3)
    assert got["recall@2"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert got["ndcg@1"] == pytest.approx((1 + 0 + 1) / 3)
    assert got["ndcg@2"] == pytest.approx((1 + d2 / (1 + d2) + 1) / 3)
    assert got["precision@2"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    # sharded evaluation: the same numbers, and fixed results (the kNN baseline) ride along
    evaluate = sharded_evaluate({"cold": ev}, DistContext(), torch.device("cpu"), {"cold_knn": {"x": 1.0}})
    model = type("M", (), {"scorer": lambda self: (lambda u: scores[u].clone())})()
    out = evaluate(model)
    assert out["cold"] == pytest.approx(got) and out["cold_knn"] == {"x": 1.0}
    assert local_evaluate({"cold": ev}, {"cold_knn": {"x": 1.0}})(model)["cold"] == pytest.approx(got)
    shards = [ev.metric_sums(lambda u: scores[u].clone(), ev.shard_users(r, 2)) for r in range(2)]
    assert ev.finalize(shards[0] + shards[1], 3) == pytest.approx(got)


def test_content_knn_baseline_matches_a_hand_computation():
    # items 0, 1, 4 warm, 2, 3 cold; user 0 trained on {0, 1}, user 1 on nothing (zero profile)
    text = np.array([[3, 4], [1, 0], [0, 2], [1, 1], [5, 5]], np.float32)
    image = np.array([[2], [-1], [5], [0], [1]], np.float32)
    train = Interactions(np.array([0, 0]), np.array([0, 1]))
    cold = Interactions(np.array([0, 1]), np.array([2, 3]))
    none = Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64))
    data = RecData("knn", 2, 5, train, none, none, {"text": text, "image": image}, cold=cold)
    # v_i = [text_i/|text_i| ; image_i/|image_i|]; profile_0 = mean(v_0, v_1) = [0.8, 0.4, 0]
    profile = [(0.6 + 1.0) / 2, (0.8 + 0.0) / 2, (1.0 - 1.0) / 2]
    v2, v3 = [0.0, 1.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]
    cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)
    scores = content_knn_scorer(data)(torch.tensor([0, 1]))
    assert scores[0, 2].item() == pytest.approx(cos(profile, v2), abs=1e-6)  # 0.3162
    assert scores[0, 3].item() == pytest.approx(cos(profile, v3), abs=1e-6)  # 0.9487
    assert scores[1].abs().max().item() == 0.0
    got = cold_evaluator(data, ks=(1, 2)).evaluate(content_knn_scorer(data))
    # user 0: truth {2}, ranked 3, 2 -> rank 2; user 1: truth {3}, ties -> 2, 3 -> rank 2
    assert got["recall@1"] == 0.0 and got["recall@2"] == 1.0
    assert got["ndcg@2"] == pytest.approx(1 / math.log2(3))


def test_flags_and_notes():
    assert Recommender.scores_cold_items is False and BPR.scores_cold_items is False and VBPR.scores_cold_items
    assert cold_notes("bpr", False, 0.0) == {} and cold_notes("vbpr", True, 0.3) == {}
    assert cold_notes("bpr", False, 0.2) == {"cold": "bpr has no feature path for items; cold-start metrics "
                                                      "not computed"}


def cold_spec(tmp_path, method):
    return load_spec(method=method, overrides=[f"output_dir={tmp_path}", "run_name=r", "eval.ks=[5,10]",
                                               "eval.valid_metric=recall@10", "train.batch_size=64", "train.lr=0.01",
                                               "train.epochs=3", "data.cold_items=0.2", "train.device=cpu"])


def test_vbpr_run_reports_cold_metrics_everywhere(tmp_path, capsys):
    write_columnar(tiny_data(), str(tmp_path / "tiny"))
    spec = cold_spec(tmp_path, "vbpr")
    spec.data.source = str(tmp_path / "tiny")  # load_data holds the cold items out
    state = run(spec, progress=True)
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    best = next(h for h in state.history if h["epoch"] == state.best_epoch)
    assert set(results["cold"]) == set(results["test"]) and set(results["cold_knn"]) == set(results["test"])
    assert results["cold"]["recall@10"] == best["cold/recall@10"]  # the best (validation) epoch's
    assert all("cold/ndcg@5" in h and "cold_knn/ndcg@5" in h for h in state.history)  # per epoch (TensorBoard)
    assert results["cold_knn"]["recall@5"] > 0.5  # features reveal the item group: the baseline finds it
    table = capsys.readouterr().out
    assert "\ncold      " in table and "\ncold_knn  " in table and "cold: " not in table
    # under Ray the driver reads the same loop state from the checkpoint: the same results.json
    from raymmrec.train.checkpoint import read_latest

    again = results_dict(TrainState.from_dict(read_latest(tmp_path / "r")["state"]), run_notes(spec))
    assert again["cold"] == results["cold"] and again["cold_knn"] == results["cold_knn"]
    # `raymmrec evaluate` on the best weights: the same cold metrics
    assert evaluate(load_trained(tmp_path / "r", device="cpu"))["cold"] == pytest.approx(results["cold"])


def test_bpr_run_records_the_note_instead_of_numbers(tmp_path, capsys):
    spec = cold_spec(tmp_path, "bpr")
    spec.train.epochs = 1
    state = run(spec, progress=True, data=tiny_data())
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    note = "bpr has no feature path for items; cold-start metrics not computed"
    assert results["cold"] == note and "recall@5" in results["cold_knn"]
    assert not any(k.startswith("cold/") for k in state.history[-1]) and set(best_extras(state)) == {"cold_knn"}
    assert capsys.readouterr().out.count(f"cold: {note}") == 2  # at start and under the table
    assert results_table(state, [5], run_notes(spec)).endswith(f"cold: {note}")


def test_cache_and_resume_keys_follow_cold_items(tmp_path):
    write_columnar(tiny_data(), str(tmp_path / "col"))
    spec = load_spec(method="vbpr", overrides=[f"data.source={tmp_path / 'col'}"])
    config = spec.to_dict()
    spec.data.cold_items = 0.2
    held_out = load_data(spec)  # what the Ray loading task and workers read: prepared inputs hash its pairs
    assert held_out.cold_items().size == 5 and not np.isin(held_out.train.items, held_out.cold_items()).any()
    old = json.loads(json.dumps(config))
    del old["data"]["cold_items"]  # a run started before the option existed resumes...
    check_same_run(old, config, "run")
    with pytest.raises(ValueError, match=r"data.cold_items 0.0 -> 0.2"):  # ...but not as a cold-start run
        check_same_run(old, spec.to_dict(), "run")
