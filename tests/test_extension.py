"""Extension points: samplers, cached prepared inputs, objectives on other backbones, per-method
optimizers and schedules, the per-epoch hook."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from _tiny import tiny_data
from raymmrec import prepared as prep
from raymmrec.config import load_spec
from raymmrec.models.base import Batch, ModelOutput, Recommender, xavier_embedding
from raymmrec.objectives.base import build_objective
from raymmrec.registry import _REGISTRIES, get_model, register
from raymmrec.train.build import build
from raymmrec.train.checkpoint import read_latest
from raymmrec.train.run import run
from raymmrec.train.sampling import NegativeSampler, dropout_seed, epoch_generator


def test_sampler_many_negatives_without_replacement_and_exclusions():
    users = torch.tensor([0, 0, 1, 1, 2])
    items = torch.tensor([0, 1, 1, 2, 3])
    s = NegativeSampler.from_pairs(8, users, items, pool="all", num_negatives=4, replace=False,
                                   exclude_items=torch.tensor([7]))
    q = torch.tensor([0, 1, 2] * 300)
    neg = s.sample(q, epoch_generator(1, 0))
    assert neg.shape == (900, 4)
    assert all(len(set(row)) == 4 for row in neg.tolist())  # no repeats within a row
    train = {(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)}
    assert all((u, i) not in train for u, row in zip(q.tolist(), neg.tolist()) for i in row)
    assert 7 not in neg.unique().tolist() and {4, 5, 6} <= set(neg.unique().tolist())  # "all": unseen items too
    only_train = NegativeSampler.from_pairs(8, users, items).sample(q, epoch_generator(1, 0))
    assert set(only_train.unique().tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="fewer than the 9 needed"):
        NegativeSampler.from_pairs(8, users, items, pool="all", num_negatives=9, replace=False)


def test_prepared_inputs_are_built_once_and_cached_by_content(tmp_path, monkeypatch):
    data = tiny_data()
    calls = []
    builder = prep._BUILDERS["norm_adj"]
    monkeypatch.setitem(prep._BUILDERS, "norm_adj",
                        prep.Builder(lambda d: calls.append(1) or builder.fn(d), builder.version))
    a = prep.prepare(data, {"adj": ("norm_adj", {})}, tmp_path)
    b = prep.prepare(data, {"adj": ("norm_adj", {})}, tmp_path)
    assert len(calls) == 1 and len(list((tmp_path / "prepared").glob("norm_adj-*.pt"))) == 1
    torch.testing.assert_close(a["adj"].to_dense(), b["adj"].to_dense())
    other = tiny_data(seed=1)  # other training pairs: another key, built again
    prep.prepare(other, {"adj": ("norm_adj", {})}, tmp_path)
    assert len(calls) == 2
    k10 = prep.cache_key(data, "item_knn", {"k": 10})
    assert k10 != prep.cache_key(data, "item_knn", {"k": 5})
    data.features["text"] = data.features["text"] + 1  # features change the kNN key, not the adjacency's
    assert k10 != prep.cache_key(data, "item_knn", {"k": 10})
    assert prep.cache_key(data, "norm_adj", {}) == prep.cache_key(tiny_data(), "norm_adj", {})


def test_an_objective_trains_another_backbone_and_misfits_are_refused(tmp_path):
    spec = load_spec("bpr", overrides=[f"output_dir={tmp_path}", "run_name=r", "objective=bpr"])
    assert build(spec, data=tiny_data()).objective.name == "bpr"
    with pytest.raises(ValueError, match="objective 'bm3' needs model outputs \\['bm3'\\]"):
        build_objective(get_model("lightgcn"), get_model("lightgcn").config_cls(), "bm3")
    with pytest.raises(KeyError, match="unknown objective 'nope'"):
        build_objective(get_model("bpr"), get_model("bpr").config_cls(), "nope")


@dataclass(frozen=True)
class HookedConfig:
    embedding_size: int = 8
    reg_weight: float = 0.0


class Hooked(Recommender):
    """MF with SGD + per-epoch decay and an epoch hook that records the RNG it sees."""

    config_cls = HookedConfig
    seen: list[tuple[int, float]] = []

    def __init__(self, cfg: HookedConfig, graph) -> None:
        super().__init__(cfg, graph)
        self.user_emb = xavier_embedding(graph.n_users, cfg.embedding_size)
        self.item_emb = xavier_embedding(graph.n_items, cfg.embedding_size)

    @classmethod
    def configure_optimizer(cls, params, train):
        opt = torch.optim.SGD(params, lr=train.lr)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)

    def on_epoch_start(self, epoch: int, ctx) -> None:
        Hooked.seen.append((epoch, torch.rand(()).item(), ctx.world_size))

    def forward(self, batch: Batch) -> ModelOutput:
        u, p, n = self.user_emb(batch.users), self.item_emb(batch.pos_items), self.item_emb(batch.neg_items)
        return ModelOutput(u, p, n, ego=(u, p, n))

    def scoring_embeddings(self):
        return self.user_emb.weight, self.item_emb.weight


@pytest.fixture
def hooked():
    register("hooked_test")(Hooked)
    Hooked.seen = []
    yield Hooked
    _REGISTRIES["model"].pop("hooked_test")


def test_optimizer_schedule_and_epoch_hook(hooked, tmp_path):
    spec = load_spec("hooked_test", overrides=[f"output_dir={tmp_path}", "run_name=r", "train.epochs=3",
                                               "train.lr=0.4", "eval.ks=[5,10]", "eval.valid_metric=recall@10"])
    run(spec, progress=False, data=tiny_data())
    payload = read_latest(tmp_path / "r")  # the loop state, the optimizer's hyperparameters, the schedule
    assert payload["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.4 * 0.5**3)  # SGD, decayed per epoch
    assert payload["scheduler"]["last_epoch"] == 3
    first = list(hooked.seen)
    hooked.seen = []
    run(spec.model_copy(update={"run_name": "again"}), progress=False, data=tiny_data())
    # the hook runs once per epoch, after the epoch's seeding: it sees that epoch's random stream
    assert [e for e, _, _ in first] == [0, 1, 2] and first == hooked.seen
    for epoch, value, world in first:
        torch.manual_seed(dropout_seed(spec.train.seed, epoch))
        assert value == torch.rand(()).item() and world == 1
