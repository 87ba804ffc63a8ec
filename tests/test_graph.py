"""Graph builders vs dense, obviously-correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymmrec.graph import knn_graph, mixed_knn_graph, normalized_adjacency, propagate_mean, propagate_sum


def dense_adjacency(n_users: int, n_items: int, users, items) -> np.ndarray:
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in zip(users, items):
        a[u, n_users + i] = 1.0
        a[n_users + i, u] = 1.0
    deg = a.sum(axis=1) + 1e-7
    d = deg ** -0.5
    return d[:, None] * a * d[None, :]


def dense_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Cosine top-k with self always included; ties -> lower id; all weights 1/k."""
    n = x.shape[0]
    norm = np.linalg.norm(x, axis=1)
    out = np.zeros((n, n))
    for r in range(n):
        sims = []
        for c in range(n):
            if c == r:
                s = np.inf
            elif norm[r] == 0 or norm[c] == 0:
                s = 0.0
            else:
                s = float(x[r] @ x[c]) / (norm[r] * norm[c])
            sims.append((-s, c))
        for _, c in sorted(sims)[:k]:
            out[r, c] = 1.0
    deg = out.sum(axis=1)
    d = deg ** -0.5
    return d[:, None] * out * d[None, :]


def _features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(11, 5, generator=g, dtype=torch.float64)
    x[7] = x[2]  # duplicate row
    x[4] = 0.0  # zero row
    return x


def test_adjacency_matches_dense():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 7, size=30)
    items = rng.integers(0, 9, size=30)
    users = np.concatenate([users, users[:5]])  # duplicates count once
    items = np.concatenate([items, items[:5]])
    adj = normalized_adjacency(7, 9, users, items)
    assert adj.layout == torch.sparse_csr and adj.dtype == torch.float32 and adj.shape == (16, 16)
    dense = adj.to_dense().numpy()
    np.testing.assert_allclose(dense, dense_adjacency(7, 9, users, items), rtol=1e-6)
    np.testing.assert_array_equal(dense, dense.T)
    assert np.all(np.diag(dense) == 0)
    # SpMM works and agrees with dense
    x = torch.randn(16, 3)
    torch.testing.assert_close(adj @ x, torch.from_numpy(dense) @ x, rtol=1e-5, atol=1e-6)


def test_adjacency_tensor_input_and_empty_nodes():
    users = torch.tensor([0, 0, 2])
    items = torch.tensor([1, 3, 1])
    adj = normalized_adjacency(4, 5, users, items)  # user 1, 3 and items 0, 2, 4 isolated
    assert adj.device == users.device
    np.testing.assert_allclose(adj.to_dense().numpy(), dense_adjacency(4, 5, [0, 0, 2], [1, 3, 1]), rtol=1e-6)
    assert adj.col_indices().numel() == 6
    with pytest.raises(ValueError):
        normalized_adjacency(2, 2, np.array([0]), np.array([5]))


def test_adjacency_large():  # timing: python -m benchmarks.bench_features graphs
    rng = np.random.default_rng(1)
    n_users, n_items, e = 20_000, 7_000, 300_000
    users, items = rng.integers(0, n_users, e), rng.integers(0, n_items, e)
    adj = normalized_adjacency(n_users, n_items, users, items)
    n_unique = np.unique(users * n_items + items).size
    assert adj.values().numel() == 2 * n_unique


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_knn_matches_dense(k):
    x = _features()
    g = knn_graph(x, k=k)
    assert g.layout == torch.sparse_csr and g.dtype == torch.float32
    dense = g.to_dense().numpy()
    assert not np.isnan(dense).any()
    np.testing.assert_allclose(dense, dense_knn(x.numpy(), k), rtol=1e-6)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.diag(dense) > 0)  # the item itself counts
    assert np.all((dense == 0) | np.isclose(dense, 1.0 / k))
    # duplicate rows are each other's nearest non-self neighbour
    if k >= 2:
        assert dense[2, 7] > 0 and dense[7, 2] > 0


@pytest.mark.parametrize("block_size", [1, 3, 4, 11, 100])
def test_knn_block_size_invariant(block_size):
    x = _features(1).float()
    ref = knn_graph(x, k=3, block_size=1024)
    g = knn_graph(x, k=3, block_size=block_size)
    assert torch.equal(g.crow_indices(), ref.crow_indices())
    assert torch.equal(g.col_indices(), ref.col_indices())
    assert torch.equal(g.values(), ref.values())


def test_knn_zero_row_and_symmetry_of_cosine():
    x = torch.zeros(6, 4)
    x[1] = torch.tensor([1.0, 0, 0, 0])
    g = knn_graph(x, k=3).to_dense()
    assert not torch.isnan(g).any()
    # zero row 3: itself + the two lowest other ids
    assert g[3].nonzero().squeeze(1).tolist() == [0, 1, 3]
    # knn on numpy input and ties handled identically
    g2 = knn_graph(x.numpy(), k=3).to_dense()
    assert torch.equal(g, g2)


def test_knn_large_in_blocks():  # timing: python -m benchmarks.bench_features graphs
    torch.manual_seed(0)
    x = torch.randn(5000, 256)
    g = knn_graph(x, k=10, block_size=512)
    assert g.values().numel() == 5000 * 10
    assert torch.equal(g.crow_indices(), torch.arange(0, 50001, 10))
    cols = g.col_indices().view(5000, 10)
    assert torch.all(cols[:, 1:] > cols[:, :-1])  # sorted and distinct per row
    assert torch.all((cols == torch.arange(5000)[:, None]).any(dim=1))


def test_mixed_knn():
    x = _features(2)
    t = torch.randn(11, 7, generator=torch.Generator().manual_seed(3))
    g = mixed_knn_graph({"image": x, "text": t}, {"image": 0.1, "text": 0.9}, k=3)
    assert g.layout == torch.sparse_csr
    ref = 0.1 * dense_knn(x.numpy(), 3) + 0.9 * dense_knn(t.numpy(), 3)
    dense = g.to_dense().numpy()
    np.testing.assert_allclose(dense, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, rtol=1e-6)
    eq = mixed_knn_graph({"image": x, "text": t}, None, k=3).to_dense().numpy()
    np.testing.assert_allclose(eq, 0.5 * dense_knn(x.numpy(), 3) + 0.5 * dense_knn(t.numpy(), 3), rtol=1e-6)


def test_mixed_knn_errors():
    x = _features()
    with pytest.raises(ValueError, match="image=0.5.*text=0.6"):
        mixed_knn_graph({"image": x, "text": x}, {"image": 0.5, "text": 0.6})
    with pytest.raises(ValueError, match="audio"):
        mixed_knn_graph({"image": x, "text": x}, {"image": 0.5, "audio": 0.5})
    with pytest.raises(ValueError, match="item counts"):
        mixed_knn_graph({"image": x, "text": x[:5]})


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_propagate_sum_and_its_gradient_match_dense_powers(n_layers):
    """The fused propagation (one autograd node) against ``Σ_l Â^l x`` with a dense ``Â``."""
    torch.manual_seed(0)
    a = torch.rand(7, 7) * (torch.rand(7, 7) < 0.4)
    a = (a + a.T) / 4  # symmetric, as the normalised user-item adjacency
    x = torch.randn(7, 3, requires_grad=True)
    w = torch.randn(7, 3)
    want = sum(torch.linalg.matrix_power(a, k) @ x for k in range(n_layers + 1))
    got = propagate_sum(a.to_sparse_csr(), x, n_layers)
    torch.testing.assert_close(got, want)
    g_want, = torch.autograd.grad((want * w).sum(), x)
    g_got, = torch.autograd.grad((got * w).sum(), x)
    torch.testing.assert_close(g_got, g_want)
    torch.testing.assert_close(propagate_mean(a.to_sparse_csr(), x, n_layers), want / (n_layers + 1))
