"""``eval.valid_users``: validation ranks a fixed random sample of users; test ranks everyone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import tiny_data
from raymmrec.config import ConfigError, load_spec
from raymmrec.data import DEFAULT_SEED
from raymmrec.data.schema import Interactions
from raymmrec.eval import Evaluator
from raymmrec.train.build import build, local_evaluate, sharded_evaluate
from raymmrec.train.loop import Callback, unwrap
from raymmrec.train.run import run

N_USERS, N_ITEMS = 200, 60


def skewed_split(seed: int = 0) -> tuple[Interactions, Interactions, torch.Tensor]:
    """Train and truth pairs where users differ a lot (1 to 12 truth items), and a fixed score matrix.

    Users with more truth items score higher on most metrics, so a sample that favours them (e.g.
    users drawn per interaction) is visibly biased.
    """
    rng = np.random.default_rng(seed)
    tr_u, tr_i, gt_u, gt_i = [], [], [], []
    for u in range(N_USERS):
        if u % 7 == 3:
            continue  # some users have no truth: never evaluated, never sampled
        items = rng.permutation(N_ITEMS)
        n_gt = 1 + (u * 5) % 12
        gt_u += [u] * n_gt
        gt_i += items[:n_gt].tolist()
        tr_u += [u] * 5
        tr_i += items[n_gt:n_gt + 5].tolist()
    train = Interactions(np.array(tr_u), np.array(tr_i))
    truth = Interactions(np.array(gt_u), np.array(gt_i))
    scores = torch.from_numpy(rng.normal(size=(N_USERS, N_ITEMS))).float()
    scores[torch.from_numpy(truth.users), torch.from_numpy(truth.items)] += 0.8  # a model better than chance
    return train, truth, scores


def evaluator(n: int = 0, seed: int = DEFAULT_SEED) -> Evaluator:
    train, truth, _ = skewed_split()
    return Evaluator(N_ITEMS, train, truth, ks=(5, 10)).sample_users(n, seed)


def test_sample_is_fixed_by_seed_sized_n_and_a_subset_of_the_users():
    full = evaluator().users
    a, b = evaluator(40).users, evaluator(40).users
    assert torch.equal(a, b)  # fixed by the seed: every rank and every rerun draws the same users
    other = evaluator(40, seed=DEFAULT_SEED + 1).users
    assert not torch.equal(a, other)
    for s in (a, other):
        assert s.numel() == 40 and torch.unique(s).numel() == 40
        assert torch.equal(s, torch.sort(s).values)
        assert set(s.tolist()) <= set(full.tolist())
    assert torch.equal(evaluator(10 ** 6).users, full)  # more than there are: all of them, no error
    assert torch.equal(evaluator(0).users, full)
    with pytest.raises(ValueError, match="n must be >= 0"):
        evaluator(-1)
    with pytest.raises(ConfigError, match=r"^eval.valid_users: expected an integer >= 0, got -1$"):
        load_spec("lightgcn", None, ["eval.valid_users=-1"])
    assert load_spec("lightgcn", None, ["eval.valid_users=7"]).eval.valid_users == 7
    assert load_spec("lightgcn").eval.valid_users == 0


def test_sampled_metric_is_an_unbiased_estimate_of_the_full_one():
    """Mean over R seeds of the metric on n sampled users ~ the metric over all U users.

    Sampling n of U without replacement: the sample mean has variance (sigma^2 / n) (U - n) / (U - 1)
    (sigma^2: the population variance of the per-user metric); the mean of R independent draws has
    that over R. Every metric must be within 4 standard errors (a false alarm ~1e-4 per metric; the
    seeds are fixed, so the test is deterministic).
    """
    train, truth, scores = skewed_split()
    full = Evaluator(N_ITEMS, train, truth, ks=(5, 10))
    score_fn = lambda u: scores[u].clone()  # noqa: E731
    per_user = full.per_user(score_fn)
    mu, var = per_user.mean(0), per_user.var(0, unbiased=False)
    big, n, draws = full.users.numel(), 20, 400
    row = {int(u): r for r, u in enumerate(full.users)}
    got = []
    for seed in range(draws):  # each draw's metric: the mean of its users' rows (evaluate() is that, see below)
        full.users = full.users.new_tensor(list(row))
        got.append(per_user[[row[int(u)] for u in full.sample_users(n, seed).users]].mean(0))
    got = torch.stack(got)
    assert list(full.evaluate(score_fn).values()) == pytest.approx(got[-1].tolist(), abs=1e-12)
    se = torch.sqrt(var / n * (big - n) / (big - 1) / draws)
    z = (got.mean(0) - mu) / se
    assert float(z.abs().max()) < 4, dict(zip(full.names, z.tolist()))
    # and a single draw does vary (the draws are not all the same users)
    assert float(got[:, full.names.index("recall@10")].std()) > 0


def spec_for(tmp_path, valid_users: int, **train):
    spec = load_spec("lightgcn", None, [f"output_dir={tmp_path}", "run_name=r", "eval.ks=[5,10]",
                                        "eval.valid_metric=recall@5", "train.batch_size=64", "train.lr=0.01",
                                        f"eval.valid_users={valid_users}"])
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


def test_validation_samples_on_every_rank_and_test_ranks_everyone(tmp_path):
    data = tiny_data()
    full = build(spec_for(tmp_path, 0), data=data).evaluators
    ranks = [build(spec_for(tmp_path, 12), data=data) for _ in range(2)]  # two ranks build independently
    sample = ranks[0].evaluators["valid"].users
    assert torch.equal(sample, ranks[1].evaluators["valid"].users) and sample.numel() == 12
    assert set(sample.tolist()) < set(full["valid"].users.tolist())
    shards = [p.evaluators["valid"].shard_users(r, 2) for r, p in enumerate(ranks)]
    assert sorted(torch.cat(shards).tolist()) == sample.tolist()  # shards split the one sample
    for p in ranks:
        assert torch.equal(p.evaluators["test"].users, full["test"].users)
    # one evaluation: validation is the mean over the sample, test over everyone
    p = ranks[0]
    got = local_evaluate(p.evaluators)(p.model)
    score_fn = p.model.scorer()
    per_user = full["valid"].per_user(score_fn)
    keep = torch.isin(full["valid"].users, sample)
    want = dict(zip(full["valid"].names, per_user[keep].mean(0).tolist()))
    assert got["valid"] == pytest.approx(want, abs=1e-12)
    assert got["test"] == pytest.approx(full["test"].evaluate(score_fn), abs=1e-12)
    # the Ray path (sharded_evaluate): two ranks, each its shard; rank 1 first, then rank 0 adds its all-reduces
    one = TwoRanks(1)
    sharded_evaluate(ranks[1].evaluators, one, torch.device("cpu"))(ranks[1].model)
    both = sharded_evaluate(p.evaluators, TwoRanks(0, one.sent), torch.device("cpu"))(p.model)
    assert both["valid"] == pytest.approx(got["valid"], abs=1e-12)
    assert both["test"] == pytest.approx(got["test"], abs=1e-12)


class TwoRanks:
    """Rank ``rank`` of 2 in one process: rank 1 records what it all-reduces, rank 0 adds that to its own."""

    def __init__(self, rank: int, other: list[torch.Tensor] | None = None) -> None:
        self.rank, self.world_size, self.distributed = rank, 2, True
        self.sent: list[torch.Tensor] = []
        self.other = list(other or [])

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        self.sent.append(t.detach().clone())
        return t + self.other.pop(0) if self.rank == 0 else t


class Both(Callback):
    """Per evaluation: the logged metrics and the full/sampled/test metrics of the same weights."""

    def __init__(self, data, sample: torch.Tensor) -> None:
        self.full = Evaluator(data.n_items, data.seen(), data.valid, ks=(5, 10))
        self.test = Evaluator(data.n_items, data.seen(), data.test, ks=(5, 10))
        self.sample = sample
        self.rows: list[tuple[dict, dict, dict, dict]] = []

    def on_epoch_end(self, trainer, state, logs) -> None:
        score_fn = unwrap(trainer.model).scorer()
        per_user = self.full.per_user(score_fn)
        keep = torch.isin(self.full.users, self.sample)
        sampled = dict(zip(self.full.names, per_user[keep].mean(0).tolist()))
        full = dict(zip(self.full.names, per_user.mean(0).tolist()))
        logged = {k[6:]: v for k, v in logs.items() if k.startswith("valid/")}
        logged_test = {k[5:]: v for k, v in logs.items() if k.startswith("test/")}
        self.rows.append((logged, sampled, full, {"logged": logged_test, "full": self.test.evaluate(score_fn)}))


def test_run_records_valid_users_and_stops_on_the_sampled_metric(tmp_path):
    data = tiny_data()
    spec = spec_for(tmp_path, 8, epochs=12, patience=3)
    sample = build(spec, data=data).evaluators["valid"].users
    seen = Both(data, sample)
    state = run(spec, progress=False, data=data, extra_callbacks=[seen])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["eval"]["valid_users"] == 8
    assert len(seen.rows) == state.epoch >= 2
    best_so_far = -1.0
    for logged, sampled, _, test in seen.rows:
        assert logged == pytest.approx(sampled, abs=1e-12)  # validation logged = the sample's mean
        if sampled["recall@5"] > best_so_far:  # a new best: test ranks every user
            best_so_far = sampled["recall@5"]
            assert test["logged"] == pytest.approx(test["full"], abs=1e-12)
        else:  # test is ranked only at a new best validation metric
            assert test["logged"] == {}
    assert sum(bool(t["logged"]) for *_, t in seen.rows) < len(seen.rows)  # some evaluations skipped test
    # the sample's metric differs from the full one somewhere (else this test could not tell them apart)
    assert any(abs(s["recall@5"] - f["recall@5"]) > 1e-6 for _, s, f, _ in seen.rows)
    # early stopping: the first best of the *sampled* curve, and the test metrics of that epoch
    curve = [s["recall@5"] for _, s, _, _ in seen.rows]
    best = int(np.argmax(curve))
    assert state.best_epoch == best and state.best_valid["recall@5"] == pytest.approx(curve[best], abs=1e-12)
    assert state.best_test == pytest.approx(seen.rows[best][3]["full"], abs=1e-12)
    bad_after = len(curve) - 1 - best
    assert state.stopped_early == (bad_after > 3) and (not state.stopped_early or bad_after == 4)


def test_test_users_ranks_a_sample_of_test_and_results_say_so(tmp_path):
    """``eval.test_users``: for runs with millions of users; the metrics are the sample's mean, and the
    results and the printed table name the sample."""
    from raymmrec.train.artifacts import results_dict
    from raymmrec.train.build import run_notes

    data = tiny_data()
    spec = spec_for(tmp_path, 0, epochs=2)
    spec.eval.test_users = 9
    p = build(spec, data=data)
    full = build(spec_for(tmp_path, 0), data=data).evaluators["test"]
    sample = p.evaluators["test"].users
    assert sample.numel() == 9 and set(sample.tolist()) < set(full.users.tolist())
    assert torch.equal(p.evaluators["valid"].users, build(spec_for(tmp_path, 0), data=data).evaluators["valid"].users)
    got = local_evaluate(p.evaluators)(p.model)
    per_user = full.per_user(p.model.scorer())
    want = dict(zip(full.names, per_user[torch.isin(full.users, sample)].mean(0).tolist()))
    assert got["test"] == pytest.approx(want, abs=1e-12)
    state = run(spec, progress=False, data=data)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["sampled"] == "test ranks 9 of its users (eval.test_users): the metrics estimate those over every user"
    assert saved["test"] == pytest.approx(state.best_test, abs=0)
    assert "sampled" not in results_dict(state, run_notes(spec_for(tmp_path, 5)))  # valid_users alone: no note
