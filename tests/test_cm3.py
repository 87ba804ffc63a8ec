"""CM3: the uniformity math against hand computation, the model's parts, and DDP-exact values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from _ddp import BATCH, loss_parts
from _tiny import tiny_data
from raymmrec.dist import DistContext
from raymmrec.graph import modality_weights
from raymmrec.models.base import Batch, build_config
from raymmrec.objectives.base import build_objective
from raymmrec.objectives.cm3 import distinct_rows, uniformity
from raymmrec.prepared import prepare
from raymmrec.registry import get_model
from raymmrec.train.build import build_graph


def unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def loop_uniformity(z, t, s=None):
    """log of the mean over pairs a < b, one pair at a time."""
    terms = []
    for a, b in itertools.combinations(range(len(z)), 2):
        d2 = float(((z[a] - z[b]) ** 2).sum().detach())
        if s is not None:
            d2 += -2 + 2 * s[a][b]
        terms.append(math.exp(-t * d2))
    return math.log(sum(terms) / len(terms))


def test_uniformity_equals_the_pairwise_definition():
    z = unit([[1, 0], [0, 1], [1, 1], [1, 0]])  # a duplicate row counts as a pair at distance 0
    assert uniformity(z, 2.0).item() == pytest.approx(loop_uniformity(z, 2.0), rel=1e-12)
    # three hand-picked points: d^2 = 2 (orthogonal), 2 - sqrt2, 2 - sqrt2
    z3 = unit([[1, 0], [0, 1], [1, 1]])
    by_hand = math.log((math.exp(-2 * 2) + 2 * math.exp(-2 * (2 - math.sqrt(2)))) / 3)
    assert uniformity(z3, 2.0).item() == pytest.approx(by_hand, rel=1e-12)
    assert uniformity(z3[:1], 2.0).item() == 0.0  # one row: no pairs
    # distinct rows with multiplicities give the value of the expanded batch
    ids = torch.tensor([7, 3, 7, 9, 3, 7])
    rows = unit([[1, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]])
    counts, distinct = distinct_rows(ids, rows)
    assert counts.tolist() == [2, 3, 1] and torch.equal(distinct, rows[[1, 0, 3]])
    s_ids = torch.tensor([[0.8, 0.2, 0.5], [0.2, 0.8, 0.1], [0.5, 0.1, 0.8]], dtype=torch.float64)
    which = torch.tensor([1, 0, 1, 2, 0, 1])  # the distinct row of each batch row
    s6 = s_ids[which][:, which]  # one similarity per pair of ids
    got = uniformity(distinct, 2.0, s_ids, counts=counts).item()
    assert got == pytest.approx(loop_uniformity(rows, 2.0, s6.tolist()), rel=1e-10)


def test_calibrated_uniformity_weighs_pairs_by_content_similarity():
    z = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    s = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)
    got = uniformity(z, 2.0, s).item()
    assert got == pytest.approx(loop_uniformity(z, 2.0, s.tolist()), rel=1e-12)
    # all three pairs at d^2 = 2, so the term is exp(-2t) * mean(exp(2t (1 - s))) in the log
    by_hand = math.log(sum(math.exp(-2 * 2 * s_) for s_ in (0.9, 0.0, 0.3)) / 3)
    assert got == pytest.approx(by_hand, rel=1e-12)
    # identical content (s = 1) leaves plain uniformity
    assert uniformity(z, 2.0, torch.ones(3, 3, dtype=torch.float64)).item() == pytest.approx(uniformity(z, 2.0).item())


def make(overrides=None, data=None):
    data = data or tiny_data()
    cls = get_model("cm3")
    cfg = build_config(cls, overrides or {})
    graph = build_graph(data, torch.device("cpu"), prepare(data, cls.prepared_inputs(cfg)))
    torch.manual_seed(0)
    return cls(cfg, graph), build_objective(cls, cfg), graph


def a_batch(graph, n=40):
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(graph.train_users.numel(), (n,), generator=g)
    return Batch(graph.train_users[idx], graph.train_items[idx], torch.randint(graph.n_items, (n,), generator=g))


def test_cm3_loss_equals_its_definition_on_the_model_outputs():
    model, objective, graph = make({"gamma": 0.9, "max_sim": 0.8})
    batch = a_batch(graph)
    torch.manual_seed(1)
    out = model(batch)
    loss = objective(out, batch, DistContext())
    u, p, n = (F.normalize(x, dim=1).double() for x in (out.users, out.pos, out.neg))
    mix = out.extra["neg_mix"].double()
    s = (mix @ mix.T).clamp(0.0, 0.8)
    align = ((u - p) ** 2).sum(1).mean().item()
    l_u, l_i = loop_uniformity(u, 2.0), loop_uniformity(n, 2.0, s.tolist())
    assert loss.parts["align"].item() == pytest.approx(align, rel=1e-5)
    assert loss.parts["unif_user"].item() == pytest.approx(l_u, rel=1e-5)
    assert loss.parts["unif_item"].item() == pytest.approx(l_i, rel=1e-5)
    assert loss.total.item() == pytest.approx(align + 0.45 * (l_u + l_i), rel=1e-5)


def test_fusion_ablations_mean_and_concatenation_replace_the_bezier_curve():
    def points(model):
        return [F.normalize(model.fusion_proj[m](model.feature(m)), dim=1) for m in model.modalities]

    bezier, _, _ = make()
    bezier.train()
    assert not torch.allclose(bezier.mix(), bezier.mix())  # the method: a fresh Beta draw per item and call
    mean, _, _ = make({"fusion": "mean"})
    mean.train()
    p = points(mean)
    torch.testing.assert_close(mean.mix(), (p[0] + p[1]) / 2)  # the plain mean, no draw, not renormalised
    concat, objective, graph = make({"fusion": "concat"})
    concat.train()
    assert concat.concat_proj.weight.shape == (64, 2 * 64)
    torch.testing.assert_close(concat.mix(), torch.cat(points(concat), dim=1) @ concat.concat_proj.weight.T)
    batch = a_batch(graph)
    objective(concat(batch), batch, DistContext()).total.backward()
    assert concat.concat_proj.weight.grad.abs().sum() > 0  # the map is trained through MIX and the calibration
    with pytest.raises(ValueError, match=r"^model\.fusion: expected one of bezier, mean, concat, got 'sum'$"):
        build_config(get_model("cm3"), {"fusion": "sum"})


def test_without_calibration_item_uniformity_is_plain():
    model, objective, graph = make({"calibration": False, "max_sim": 0.8})
    calibrated = build_objective(get_model("cm3"), build_config(get_model("cm3"), {"max_sim": 0.8}))
    batch = a_batch(graph)
    torch.manual_seed(1)
    out = model(batch)
    loss, with_cal = objective(out, batch, DistContext()), calibrated(out, batch, DistContext())
    n = F.normalize(out.neg, dim=1).double()
    assert loss.parts["unif_item"].item() == pytest.approx(loop_uniformity(n, 2.0), rel=1e-5)
    assert abs(loss.parts["unif_item"].item() - with_cal.parts["unif_item"].item()) > 1e-2
    assert loss.parts["unif_user"] == with_cal.parts["unif_user"] and loss.parts["align"] == with_cal.parts["align"]
    del out.extra["neg_mix"]  # the fused vectors are not needed without calibration
    assert objective(out, batch, DistContext()).parts["unif_item"] == loss.parts["unif_item"]


def test_model_parts_any_number_of_modalities_and_no_item_table():
    data = tiny_data()
    data.features["audio"] = torch.randn(data.n_items, 5).numpy()
    model, objective, graph = make(data=data)
    assert model.branches == ["audio", "image", "text", "mix"]
    assert not any(p.shape[0] == graph.n_items for p in model.parameters())  # items come from features only
    model.train()
    mix = model.mix()
    assert torch.allclose(mix.norm(dim=1), torch.ones(graph.n_items), atol=1e-5)
    users, items = model.tables()
    assert users.shape == (graph.n_users, 4 * 64) and items.shape == (graph.n_items, 4 * 64)
    # each branch's user weights are a softmax over the branch logits
    w = model.user_weights(None)
    assert torch.allclose(w.sum(1), torch.ones(graph.n_users))
    assert get_model("cm3").scores_cold_items


def test_item_item_graph_mixes_modalities_with_the_authors_weights():
    assert modality_weights(["image", "text"], 0.1) == pytest.approx({"image": 0.1, "text": 0.9})
    assert modality_weights(["audio_whisper", "text"], 0.2) == pytest.approx({"audio_whisper": 0.2, "text": 0.8})
    assert modality_weights(["a", "b", "text"], 0.2) == pytest.approx({"a": 0.1, "b": 0.1, "text": 0.8})
    assert modality_weights(["a", "b"], 0.2) == pytest.approx({"a": 0.5, "b": 0.5})
    model, _, graph = make()
    dense = model.mm_adj.to_dense()
    assert torch.allclose(dense.sum(1), torch.ones(graph.n_items), atol=1e-6)
    # an edge found in both modalities' graphs weighs 1/k; in the text graph alone 0.9/k, image alone 0.1/k
    k = min(10, graph.n_items)
    weights = torch.unique(dense[dense > 0]).double().mul(k)
    assert all(min(abs(w - c) for c in (0.1, 0.9, 1.0)) < 1e-5 for w in weights.tolist()), weights
    explicit, _, _ = make({"mm_weights": {"image": 0.5, "text": 0.5}})
    assert not torch.equal(explicit.mm_adj.to_dense(), dense)


def test_scoring_is_deterministic_by_default_and_published_behaviour_is_an_option():
    model, objective, graph = make()
    users = torch.arange(5)
    torch.manual_seed(0)
    a = model.scorer()(users)
    torch.manual_seed(1)
    assert torch.equal(a, model.scorer()(users))  # mixing parameter at its mean: no draws at eval
    sampled, _, _ = make({"sample_at_eval": True})
    torch.manual_seed(0)
    b = sampled.scorer()(users)
    torch.manual_seed(1)
    assert not torch.equal(b, sampled.scorer()(users))
    cached, objective, graph = make({"eval_from_last_batch": True})
    cached.train()
    batch = a_batch(graph)
    out = cached(batch)
    u_tab, i_tab = cached.last_users.clone(), cached.last_items.clone()
    assert torch.equal(u_tab[batch.users], out.users.detach())
    torch.testing.assert_close(cached.scorer()(users), u_tab[users] @ i_tab.T)  # the last batch's tables, stale
    assert "last_users" in cached.state_dict()


@pytest.mark.slow
def test_uniformity_values_under_ddp_equal_one_process_on_the_global_batch(gloo_runs):
    ddp = torch.load(gloo_runs("cm3-parts.pt") / "cm3-parts.pt", weights_only=True)  # 2 ranks (tests/_ddp.py)
    single = loss_parts("cm3", 0, 1, BATCH)
    assert set(ddp) == {"align", "unif_user", "unif_item"}
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{k}: {m}")  # noqa: B023 - called before the loop moves on
