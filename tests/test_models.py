"""Every registered model: builds, finite loss, gradients everywhere, scores, learns; BM3 vs a dense reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from _tiny import tiny_data
from raymmrec.dist import DistContext
from raymmrec.models.base import Batch, build_config
from raymmrec.objectives.base import build_objective
from raymmrec.prepared import prepare
from raymmrec.registry import get_model, model_names
from raymmrec.train.build import build_graph
from raymmrec.train.sampling import NegativeSampler, epoch_generator

METHODS = model_names()


@pytest.fixture(scope="module")
def graph():
    data = tiny_data()
    requests = {}  # every input any registered method asks for with its defaults
    for method in METHODS:
        cls = get_model(method)
        requests.update(cls.prepared_inputs(build_config(cls, {})))
    return build_graph(data, torch.device("cpu"), prepare(data, requests))


class Trainable:
    """A model with its default objective: ``loss(batch)`` is what the loop minimises."""

    def __init__(self, method: str, graph, **overrides) -> None:
        cls = get_model(method)
        torch.manual_seed(0)
        cfg = build_config(cls, overrides)
        self.model = cls(cfg, graph)
        self.objective = build_objective(cls, cfg)
        self.objective.attach(self.model, graph.n_users, graph.n_items)

    def loss(self, batch: Batch):
        return self.objective(self.model(batch), batch, DistContext())


def make(method: str, graph, **overrides):
    return Trainable(method, graph, **overrides)


def a_batch(graph, n: int = 64, seed: int = 0) -> Batch:
    g = epoch_generator(seed, 0)
    idx = torch.randint(graph.train_users.numel(), (n,), generator=g)
    users, items = graph.train_users[idx], graph.train_items[idx]
    neg = NegativeSampler.from_pairs(graph.n_items, graph.train_users, graph.train_items).sample(users, g)
    return Batch(users, items, neg)


def test_model_options_are_type_checked():
    cls = get_model("bm3")
    assert build_config(cls, {"n_layers": "2", "dropout": 0.3}).n_layers == 2
    with pytest.raises(ValueError, match="model.n_layers: expected an integer"):
        build_config(cls, {"n_layers": 1.5})


def test_registry_has_the_baselines_and_bm3():
    assert {"bpr", "lightgcn", "vbpr", "bm3"} <= set(METHODS)
    with pytest.raises(KeyError, match="registered methods: .*bm3"):
        get_model("no-such-model")


@pytest.mark.parametrize("method", METHODS)
def test_config_is_typed_and_documented(method):
    cls = get_model(method)
    assert dataclasses.is_dataclass(cls.config_cls)
    assert cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__
    with pytest.raises(ValueError, match="unknown option"):
        build_config(cls, {"not_an_option": 1})


@pytest.mark.parametrize("method", METHODS)
def test_loss_gradients_and_scores(method, graph):
    t = make(method, graph)
    model = t.model
    out = t.loss(a_batch(graph))
    assert torch.isfinite(out.total) and out.total.ndim == 0
    assert set(out.parts) and all(torch.isfinite(v) for v in out.parts.values())
    out.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{method}: no gradient for {name}"
    score = model.scorer()
    s = score(torch.tensor([0, 3, 5]))
    assert s.shape == (3, graph.n_items) and torch.isfinite(s).all()


@pytest.mark.parametrize("method", METHODS)
def test_model_learns_a_fixed_batch(method, graph):
    t = make(method, graph)
    batch = a_batch(graph, n=128)
    opt = torch.optim.Adam(t.model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = t.loss(batch).total
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.6 * first, f"{method}: loss {first:.4f} -> {loss.item():.4f}"


def test_state_dict_moves_and_graph_is_not_saved(graph):
    model = make("bm3", graph).model
    assert not any("adj" in k for k in model.state_dict())
    model.to(torch.float64)
    assert model.adj.dtype == torch.float64


def dense_bm3_loss(model, batch: Batch, terms: str = "both") -> torch.Tensor:
    """MMRec's BM3 loss written on full tables with a dense adjacency (dropout must be 0).

    ``terms``: the multimodal terms kept, ``both``, ``align`` (L_align alone) or ``mask`` (L_mask alone)."""
    cfg = model.cfg
    adj = model.adj.to_dense()
    ego = torch.cat([model.user_emb.weight, model.item_emb.weight])
    layers = [ego]
    for _ in range(cfg.n_layers):
        layers.append(adj @ layers[-1])
    h = torch.stack(layers).mean(0)
    hu, hi = h[: model.n_users], h[model.n_users :] + model.item_emb.weight
    u_t, i_t = hu.detach()[batch.users], hi.detach()[batch.pos_items]
    u_on, i_on = model.predictor(hu)[batch.users], model.predictor(hi)[batch.pos_items]
    c = lambda a, b: 1 - F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
    loss = c(u_on, i_t) + c(i_on, u_t)
    cl = 0.0
    for m in model.modalities:
        f = model.proj[m](model.feat[m])
        f_on = model.predictor(f)[batch.pos_items]
        if terms in ("both", "align"):
            cl = cl + c(f_on, i_t)
        if terms in ("both", "mask"):
            cl = cl + c(f_on, f.detach()[batch.pos_items])
    reg = (hu.norm() + hi.norm()) / model.n_items
    return loss + cfg.cl_weight * cl + cfg.reg_weight * reg


@pytest.mark.parametrize("n_layers", [1, 2])
def test_bm3_matches_dense_full_table_reference(graph, n_layers):
    t = make("bm3", graph, dropout=0.0, n_layers=n_layers)
    model = t.model
    batch = a_batch(graph, n=50)
    ours = t.loss(batch).total
    grads = torch.autograd.grad(ours, list(model.parameters()))
    ref = dense_bm3_loss(model, batch)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(ours, ref)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, msg=f"gradient of {name}")


@pytest.mark.parametrize("terms", ["align", "mask"])
def test_bm3_ablation_keeps_one_multimodal_term(graph, terms):
    # model.cl_terms: the loss is L_rec + cl_weight * (that term alone) + reg_weight * L_reg
    batch = a_batch(graph, n=50)
    full = make("bm3", graph, dropout=0.0)
    t = make("bm3", graph, dropout=0.0, cl_terms=terms)
    out, full_out = t.loss(batch), full.loss(batch)
    other = {"align": "mask", "mask": "align"}[terms]
    assert terms in out.parts and other not in out.parts
    cfg = t.model.cfg
    torch.testing.assert_close(out.total, out.parts["rec"] + cfg.cl_weight * out.parts[terms]
                               + cfg.reg_weight * out.parts["reg"])
    torch.testing.assert_close(out.parts[terms], full_out.parts[terms])  # the same term as in the full loss
    torch.testing.assert_close(out.total, full_out.total - cfg.cl_weight * full_out.parts[other])
    assert abs(float(out.total - full_out.total)) > 1e-3
    torch.testing.assert_close(out.total, dense_bm3_loss(t.model, batch, terms))
    with pytest.raises(ValueError, match=r"^model\.cl_terms: expected one of both, align, mask, got 'neither'$"):
        build_config(get_model("bm3"), {"cl_terms": "neither"})


def test_bm3_dropout_only_touches_targets(graph):
    t = make("bm3", graph, dropout=0.5)
    model = t.model
    batch = a_batch(graph)
    torch.manual_seed(1)
    a = t.loss(batch).total
    torch.manual_seed(2)
    b = t.loss(batch).total
    assert not torch.isclose(a, b)  # dropout is active in training mode
    s1 = model.scorer()(torch.arange(5))
    s2 = model.scorer()(torch.arange(5))
    torch.testing.assert_close(s1, s2)  # scoring is deterministic (no dropout)
    hu, hi = model.propagate()
    torch.testing.assert_close(s1, model.predictor(hu[:5]) @ model.predictor(hi).T)


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_bm3_dropout_masks_drop_p_scale_the_rest_and_follow_the_seed(graph, p):
    model = make("bm3", graph, dropout=p).model
    users, items = torch.arange(graph.n_users), torch.arange(graph.n_items)
    torch.manual_seed(3)
    masks = model._masks(users, items, 3)
    torch.manual_seed(3)
    again = model._masks(users, items, 3)
    for m, a in zip(masks, again):
        assert torch.equal(m, a)  # fixed by the torch seed
        assert set(m.unique().tolist()) <= {0.0, torch.tensor(1.0 / (1.0 - p)).item()}
    drawn = torch.cat([m.flatten() for m in masks])
    dropped = float((drawn == 0).float().mean())
    sigma = (p * (1 - p) / drawn.numel()) ** 0.5
    assert abs(dropped - p) < 5 * sigma, (dropped, p)
    assert not torch.equal(masks[1], masks[2])  # each item table has its own draw
    rows = torch.tensor([4, 1, 4])
    torch.manual_seed(3)
    picked = model._masks(users[:2], rows, 1)
    assert torch.equal(picked[1], masks[1][rows])  # rows of the table-wide draw, repeats share a mask


@pytest.mark.parametrize("n", [0, 2, 256])  # an empty DDP share, a batch touching few items, one touching most
def test_vbpr_batch_rows_equal_the_full_item_table(graph, n):
    model = make("vbpr", graph).model
    batch = a_batch(graph, n=n)
    out = model(batch)
    table = torch.cat([model.item_emb.weight, model.item_linear(model.content)], dim=1)
    torch.testing.assert_close(out.pos, table[batch.pos_items])
    torch.testing.assert_close(out.neg, table[batch.neg_items])
    torch.testing.assert_close(out.users, model.user_emb.weight[batch.users])


def test_gather_equals_indexing_with_gradients():
    from raymmrec.models.base import gather

    torch.manual_seed(0)
    table = torch.randn(9, 4, requires_grad=True)
    idx = torch.tensor([[3, 3, 0], [8, 1, 3]])  # repeats accumulate
    g = torch.randn(2, 3, 4)
    (gather(table, idx) * g).sum().backward()
    mine = table.grad.clone()
    table.grad = None
    (table[idx] * g).sum().backward()
    torch.testing.assert_close(gather(table, idx), table[idx])
    torch.testing.assert_close(mine, table.grad)


def test_fixed_sparse_product_backward_uses_the_given_transpose(graph):
    from raymmrec.graph import fixed_spmm

    torch.manual_seed(0)
    dense = torch.rand(7, 5) * (torch.rand(7, 5) < 0.4)
    a = dense.to_sparse_csr()
    x = torch.randn(5, 3, requires_grad=True)
    g = torch.randn(7, 3)
    (torch.sparse.mm(a, x) * g).sum().backward()
    ref = x.grad.clone()
    x.grad = None
    out = fixed_spmm(a, x, dense.t().to_sparse_csr())
    (out * g).sum().backward()
    torch.testing.assert_close(out, dense @ x)
    torch.testing.assert_close(x.grad, ref)
    # the feature-graph models hand the item-item graph's transpose over once
    model = make("cm3", graph).model
    torch.testing.assert_close(model.mm_adj_t.to_dense(), model.mm_adj.to_dense().t())
    adj = model.adj.to_dense()
    torch.testing.assert_close(adj, adj.t())  # the user-item adjacency is its own transpose
