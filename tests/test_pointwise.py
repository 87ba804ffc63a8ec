"""BPO and NBPO objectives: ascent directions against the authors', weighting, init, numerics, data
and sampler options of the noisy-label study, the authors' optimisation recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import tiny_data
from raymmrec.config import load_spec
from raymmrec.data import hide_positives
from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, ModelOutput, build_config
from raymmrec.objectives.base import build_objective
from raymmrec.registry import get_model, get_objective
from raymmrec.train.build import build
from raymmrec.train.sampling import NegativeSampler

R = torch.tensor([-2.0, 0.3, 1.7], dtype=torch.float64)  # preference scores of three pairs
G = torch.tensor([-6.25, -1.0, 0.8], dtype=torch.float64)  # flip logits of the same pairs


def directions(name: str, positive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """d(maximised term)/dR and d/dg of one objective's positive or unlabelled term, by autograd."""
    obj = get_objective(name).__new__(get_objective(name))
    r, g = R.clone().requires_grad_(), G.clone().requires_grad_()
    pos, neg = obj.terms(r, r.unsqueeze(1), g, g.unsqueeze(1))
    (pos if positive else neg).sum().backward()
    return r.grad, g.grad


def test_nbpo_follows_the_authors_explicit_ascent_directions():
    y, gam = torch.sigmoid(R), torch.sigmoid(G)
    d_r, d_g = directions("nbpo", positive=True)
    torch.testing.assert_close(d_r, (1 - gam) * (1 - y))
    torch.testing.assert_close(d_g, -y * gam)
    d_r, d_g = directions("nbpo", positive=False)
    torch.testing.assert_close(d_r, gam * (1 - y) - y)
    torch.testing.assert_close(d_g, y * (1 - gam))


def test_the_other_variants_are_the_gradients_of_their_likelihoods():
    y, gam = torch.sigmoid(R), torch.sigmoid(G)
    d_r, d_g = directions("bpo", positive=True)
    torch.testing.assert_close(d_r, 1 - y)
    assert d_g is None or torch.all(d_g == 0)
    torch.testing.assert_close(directions("bpo", positive=False)[0], -y)
    # original likelihood: log ŷ(1-γ) and log[(1-ŷ) + ŷγ]
    d_r, d_g = directions("nbpo_original", positive=True)
    torch.testing.assert_close(d_r, 1 - y)
    torch.testing.assert_close(d_g, -gam)
    d_r, d_g = directions("nbpo_original", positive=False)
    q = 1 - y + y * gam
    torch.testing.assert_close(d_r, y * (1 - y) * (gam - 1) / q)
    torch.testing.assert_close(d_g, y * gam * (1 - gam) / q)
    # surrogate likelihood: the same probabilities without the logs
    d_r, d_g = directions("nbpo_surrogate", positive=True)
    torch.testing.assert_close(d_r, y * (1 - y) * (1 - gam))
    torch.testing.assert_close(d_g, -y * gam * (1 - gam))
    d_r, d_g = directions("nbpo_surrogate", positive=False)
    torch.testing.assert_close(d_r, -y * (1 - y) * (1 - gam))
    torch.testing.assert_close(d_g, y * gam * (1 - gam))


def setup(method="nbpo", objective=None, options=None, model=None):
    data = tiny_data()
    cls = get_model(method)
    cfg = build_config(cls, model or {})
    torch.manual_seed(0)
    from raymmrec.train.build import build_graph

    graph = build_graph(data, torch.device("cpu"))
    m = cls(cfg, graph)
    obj = build_objective(cls, cfg, objective, options)
    obj.attach(m, graph.n_users, graph.n_items)
    return m, obj


def test_flip_probability_starts_where_the_authors_put_it():
    m, obj = setup()
    assert obj.module is m.objective_module
    g = obj.module.P @ obj.module.Q.T
    assert g.mean().item() == pytest.approx(-6.25, abs=0.5)  # 25 * K1 * (1/4) / K1 in expectation
    gam = torch.sigmoid(g)
    assert 0.001 < gam.mean().item() < 0.004
    assert (obj.module.P >= 0).all() and (obj.module.Q <= 0).all()


def one_batch(s=2):
    users = torch.tensor([0, 1, 2])
    pos = torch.tensor([0, 3, 5])
    neg = torch.tensor([[1, 2], [4, 6], [7, 8]])[:, :s]
    return Batch(users, pos, neg if s > 1 else neg[:, 0])


@pytest.mark.parametrize("per_negative,reduction", [(True, "mean"), (False, "mean"), (True, "sum")])
def test_positive_weighting_and_reduction(per_negative, reduction):
    m, obj = setup("bpo", options={"positive_per_negative": per_negative, "reduction": reduction},
                   model={"reg_weight": 0.0})
    batch = one_batch()
    out = m(batch)
    loss = obj(out, batch, DistContext())
    r_pos, r_neg = out.scores()
    pos, neg = torch.nn.functional.logsigmoid(r_pos), torch.nn.functional.logsigmoid(-r_neg)
    c = 2 if per_negative else 1
    per_row = (c * pos + neg.sum(1)) / 2
    want = -per_row.mean() if reduction == "mean" else -(c * pos + neg.sum(1)).sum()
    assert loss.total.item() == pytest.approx(want.item(), rel=1e-6)


def test_stable_at_extreme_scores_and_clipping_is_an_option():
    for name in ("bpo", "nbpo", "nbpo_original", "nbpo_surrogate"):
        obj = get_objective(name).__new__(get_objective(name))
        r = torch.tensor([-200.0, 0.0, 200.0], requires_grad=True)
        g = torch.tensor([-200.0, 0.0, 200.0], requires_grad=True)
        pos, neg = obj.terms(r, r.unsqueeze(1), g, g.unsqueeze(1))
        (pos.sum() + neg.sum()).backward()
        assert torch.isfinite(pos).all() and torch.isfinite(neg).all(), name
        assert torch.isfinite(r.grad).all() and (g.grad is None or torch.isfinite(g.grad).all()), name
    _, obj = setup("bpo", options={"clip": True}, model={"reg_weight": 0.0})
    users = torch.tensor([[5.0, 5.0], [0.3, 0.1]], requires_grad=True)  # scores 50 (clipped) and small
    items = torch.tensor([[5.0, 5.0], [0.2, 0.4]])
    out = ModelOutput(users, items, -items)
    obj(out, Batch(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3])), DistContext()).total.backward()
    assert torch.all(users.grad[0] == 0) and torch.all(users.grad[1] != 0)  # no gradient beyond +-10


def test_hidden_positives_per_user():
    data = tiny_data()
    hidden = hide_positives(data, 0.4, seed=3)
    assert hidden.hidden_positives == 0.4 and hidden.valid is data.valid and hidden.test is data.test
    before = np.bincount(data.train.users, minlength=data.n_users)
    after = np.bincount(hidden.train.users, minlength=data.n_users)
    assert (after == before - np.minimum(np.floor(0.4 * before + 0.5), before - 1)).all()
    kept = set(zip(hidden.train.users.tolist(), hidden.train.items.tolist()))
    original = set(zip(data.train.users.tolist(), data.train.items.tolist()))
    assert kept < original
    # the hidden pairs are kept aside and never ranked at evaluation, like training pairs
    gone = set(zip(hidden.hidden.users.tolist(), hidden.hidden.items.tolist()))
    assert gone == original - kept and len(hidden.hidden) == len(data.train) - len(hidden.train)
    assert set(zip(hidden.seen().users.tolist(), hidden.seen().items.tolist())) == original
    again = hide_positives(data, 0.4, seed=3)
    assert np.array_equal(again.train.items, hidden.train.items)
    assert not np.array_equal(hide_positives(data, 0.4, seed=4).train.items, hidden.train.items)
    with pytest.raises(ValueError, match="hide_positives"):
        hide_positives(data, 1.0, seed=3)
    # a user with one training pair keeps it, whatever the fraction
    import dataclasses

    from raymmrec.data.schema import Interactions

    lone = dataclasses.replace(data, train=Interactions(np.array([0, 1, 1]), np.array([4, 5, 6])))
    assert hide_positives(lone, 0.6, seed=0).train.users.tolist().count(0) == 1


def test_popularity_negatives_and_the_all_items_pool():
    users = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4])
    items = torch.tensor([0, 1, 1, 2, 3, 1, 1, 2])
    s = NegativeSampler.from_pairs(6, users, items, popularity=True)
    draws = s.sample(torch.full((60_000,), 5), torch.Generator().manual_seed(0))  # user 5 has no items
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    counts = torch.bincount(items, minlength=6).double()
    torch.testing.assert_close(freq, counts / counts.sum(), atol=0.01, rtol=0)
    uniform_all = NegativeSampler.from_pairs(6, users, items, pool="all")
    assert uniform_all.candidates.tolist() == [0, 1, 2, 3, 4, 5]
    assert NegativeSampler.from_pairs(6, users, items).candidates.tolist() == [0, 1, 2, 3]


def test_authors_recipe_sgd_decay_and_flip_parameters_in_their_own_group(tmp_path):
    spec = load_spec("nbpo", overrides=[f"output_dir={tmp_path}", "data.source=synthetic:tiny", "train.optimizer=sgd",
                                        "train.lr=0.1", "train.lr_decay=0.99", "train.weight_decay=1",
                                        "objective_options.reduction=sum"])
    p = build(spec)
    assert isinstance(p.optimizer, torch.optim.SGD)
    assert p.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.99)  # decayed before the first epoch
    p.scheduler.step()
    assert p.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.99**2)
    flip = {id(q) for q in p.model.objective_module.parameters()}
    groups = p.optimizer.param_groups
    assert {id(q) for q in groups[1]["params"]} == flip and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 1.0 and not flip & {id(q) for q in groups[0]["params"]}
    assert p.config["objective_options"]["flip_dim"] == 50  # defaults recorded in config.json
    with pytest.raises(ValueError, match="objective_options: unknown option"):
        build(load_spec("nbpo", overrides=["data.source=synthetic:tiny", "objective_options.nope=1"]))
    with pytest.raises(ValueError, match=r"objective_options: unknown option\(s\) \['clip'\]; valid options: \['reduction'\]"):
        build(load_spec("bpr", overrides=["data.source=synthetic:tiny", "objective_options.clip=true"]))
    from raymmrec.train.build import check_spec

    with pytest.raises(ValueError, match="takes no options"):
        check_spec(load_spec("bm3", overrides=["objective_options.clip=true"]))


def test_cold_items_are_never_negatives_even_from_all_items(tmp_path):
    spec = load_spec("bpr", overrides=[f"output_dir={tmp_path}", "data.source=synthetic:tiny", "data.cold_items=0.2",
                                       "train.negative_pool=all"])
    p = build(spec)
    cold = set(p.data.cold_items().tolist())
    assert cold and not cold & set(p.sampler.candidates.tolist())
    assert len(p.sampler.candidates) == p.data.n_items - len(cold)


def test_flip_model_step_matches_autograd():
    """The flip model's hand-fused CPU step: logits, squared norms and both gradients as autograd's."""
    from raymmrec.models.base import gather
    from raymmrec.objectives.pointwise import FlipModel

    torch.manual_seed(0)
    m = FlipModel(30, 20, 5)
    users, items = torch.randint(0, 30, (40,)), torch.randint(0, 20, (40, 4))  # repeats on purpose
    w_g, w_sq = torch.randn(40, 4), 0.7
    g, sq = m(users, items)
    ((g * w_g).sum() + w_sq * sq).backward()
    fused = g.detach(), sq.detach(), m.P.grad.clone(), m.Q.grad.clone()
    m.zero_grad()
    p, q = gather(m.P, users), gather(m.Q, items)
    g2 = (q * p.unsqueeze(1)).sum(-1)
    sq2 = (p.pow(2).sum(-1) + q[:, 0].pow(2).sum(-1) + q[:, 1:].pow(2).sum(-1).mean(1)).sum()
    ((g2 * w_g).sum() + w_sq * sq2).backward()
    for got, want in zip(fused, (g2, sq2, m.P.grad, m.Q.grad)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c", [3.0, 1.0])
def test_nbpo_training_sum_equals_its_definition(c):
    """NBPO trains on a regrouped sum (``data_sum``); value and gradients equal those of ``terms``."""
    from raymmrec.objectives.pointwise import NBPOLoss, PointwiseLoss

    obj = NBPOLoss.__new__(NBPOLoss)
    torch.manual_seed(1)
    r = (3 * torch.randn(50, 4, dtype=torch.float64)).requires_grad_()
    g = (3 * torch.randn(50, 4, dtype=torch.float64)).requires_grad_()
    fast = obj.data_sum(r, g, c)
    slow = PointwiseLoss.data_sum(obj, r, g, c)  # Σ (c · pos + Σ_j neg_j) from the definition
    torch.testing.assert_close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, (r, g)), torch.autograd.grad(slow, (r, g))):
        torch.testing.assert_close(a, b)


def test_bpr_sum_reduction_counts_every_triple():
    """``objective_options.reduction=sum`` (the NBPO authors' recipe for their BPR baseline)."""
    m, obj = setup("bpr", options={"reduction": "sum"}, model={"reg_weight": 0.0})
    batch = one_batch()
    out = m(batch)
    pos, neg = out.scores()
    want = torch.nn.functional.softplus(neg - pos.unsqueeze(1)).sum()  # 3 rows x 2 negatives
    assert obj(out, batch, DistContext()).total.item() == pytest.approx(want.item(), rel=1e-6)
    _, mean = setup("bpr", model={"reg_weight": 0.0})
    assert mean(out, batch, DistContext()).total.item() == pytest.approx(want.item() / 6, rel=1e-6)


def test_runs_recorded_before_bpr_had_options_still_resume():
    from raymmrec.train.build import check_same_run, resolved_config

    spec = load_spec(method="bpr", overrides=["data.source=synthetic:tiny"])
    config = resolved_config(spec)
    assert config["objective_options"] == {"reduction": "mean"}
    old = json.loads(json.dumps(config))
    old["objective_options"] = {}  # config.json of a BPR run from before the option existed
    check_same_run(old, config, "run")
    spec.objective_options = {"reduction": "sum"}
    with pytest.raises(ValueError, match="objective_options.reduction 'mean' -> 'sum'"):
        check_same_run(old, resolved_config(spec), "run")


def test_study_authors_recipe_per_objective_settings(tmp_path):
    import argparse

    from raymmrec.models.pointwise_mf import authors_overrides
    from raymmrec.study import _overrides

    a = argparse.Namespace(data="synthetic:tiny", out=str(tmp_path), recipe="authors",
                           overrides=["train.lr=0.01", "bpr:train.weight_decay=0.1", "nbpo:objective_options.flip_reg=1"])
    row = {"objective": "nbpo", "backbone": "mf", "value": 0.2, "seed": 1}
    spec = load_spec("bpr", overrides=_overrides("noisy-labels", row, a))
    assert spec.train.optimizer == "sgd" and spec.train.batch_size == 5000 and spec.train.weight_decay == 1.0
    assert spec.objective_options["reduction"] == "sum" and float(spec.objective_options["flip_reg"]) == 1.0
    assert spec.train.lr == 0.01  # the user's overrides come last
    assert spec.run_name.endswith("-authors")  # never reuses a default-recipe run folder
    bpr = load_spec("bpr", overrides=_overrides("noisy-labels", {**row, "objective": "bpr"}, a))
    assert bpr.objective_options == {"reduction": "sum"} and float(bpr.model["reg_weight"]) == 0.0
    assert float(bpr.train.weight_decay) == 0.1 and float(spec.train.weight_decay) == 1.0  # per-objective overrides
    a.recipe = "default"
    assert "sgd" not in " ".join(_overrides("noisy-labels", row, a))
    from raymmrec.study import _for_objective

    # a colon after the "=" belongs to the value (an S3 path), not to an objective prefix
    assert _for_objective(["data.source=s3://b/x", "bpr:train.lr=2", "nbpo:train.lr=3"], "nbpo") == [
        "data.source=s3://b/x", "train.lr=3"]
    with pytest.raises(ValueError, match="no settings for objective 'vbpr'"):
        authors_overrides("vbpr")
    from raymmrec.study import run_study

    a.methods, a.backbones, a.rates, a.seeds, a.overrides = "bpr,nbpo", "mf", "0", "0", ["nbpp:train.lr=2"]
    with pytest.raises(ValueError, match="'nbpp', which is not among --methods"):
        run_study("noisy-labels", a)


@pytest.mark.parametrize("name", ["nbpo", "nbpo_original", "bpo"])
def test_an_empty_ddp_share_gives_zero_loss_and_gradients(name):
    """A rank whose share of the last global batch is empty (rows dealt round-robin) still steps."""
    m, obj = setup("bpr", objective=name, model={"reg_weight": 0.0})
    batch = Batch(torch.arange(0), torch.arange(0), torch.zeros(0, 2, dtype=torch.long), global_rows=6)
    out = obj(m(batch), batch, DistContext(0, 2))
    out.total.backward()
    assert out.total.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in m.parameters())
