"""Sized synthetic datasets: ``synthetic:users=U,items=I,interactions=N[,dims=m:d,...]``."""

from __future__ import annotations

import numpy as np
import pytest

from raymmrec.data import DataError, load_dataset
from raymmrec.data.synthetic import PRESETS, SyntheticSpec, generate_synthetic, parse_synthetic


def _pairs(data):
    splits = (data.train, data.valid, data.test)
    return np.concatenate([s.users for s in splits]), np.concatenate([s.items for s in splits])


def test_sized_spec_parses_sizes_and_dims() -> None:
    spec = parse_synthetic("synthetic:users=1_000,items=100,interactions=5000,dims=text:384,image:512")
    assert (spec.n_users, spec.n_items, spec.n_interactions) == (1000, 100, 5000)
    assert spec.dims == {"text": 384, "image": 512}
    assert parse_synthetic("synthetic:users=10,items=10,interactions=50").dims == {"text": 64, "image": 128}
    assert parse_synthetic("synthetic:tiny") is PRESETS["tiny"] and parse_synthetic("synthetic") is PRESETS["small"]


@pytest.mark.parametrize(
    "body, words",
    [
        ("users=10,items=10,interactions=50,colour=3", ["unknown key 'colour'", "users, items, interactions, dims"]),
        ("users=ten,items=10,interactions=50", ["users='ten'", "integer >= 1"]),
        ("users=10,items=10,interactions=5.5", ["interactions='5.5'", "integer"]),
        ("users=0,items=10,interactions=50", ["users=0", "integer >= 1"]),
        ("users=10,items=2,interactions=50", ["items=2", "integer >= 3"]),
        ("users=10,items=10", ["missing interactions="]),
        ("users=10,items=10,interactions=29", ["interactions=29", "[30, 50]"]),
        ("users=10,items=10,interactions=51", ["interactions=51", "[30, 50]"]),
        ("users=10,items=10,interactions=50,dims=text", ["dims entry 'text'", "modality:width"]),
        ("users=10,items=10,interactions=50,dims=text:0", ["dims entry 'text:0'", "integer >= 1"]),
        ("users=10,items=10,interactions=50,dims=text:4,text:5", ["modality 'text' twice"]),
        ("users=10,dims=text:4,items=10,interactions=50", ["dims= must come last"]),
        ("users=10,users=11,items=10,interactions=50", ["users= is given twice"]),
        ("users=10,items=10,interactions=50,7", ["'7' is not key=value"]),
        ("huge", ["unknown synthetic preset 'huge'", "users=U,items=I,interactions=N"]),
    ],
)
def test_bad_sizes_are_one_line_errors(body: str, words: list[str]) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(f"synthetic:{body}")
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_exact_sizes_and_guarantees() -> None:
    data = load_dataset("synthetic:users=200,items=90,interactions=2500,dims=text:6,audio:3", seed=4)
    users, items = _pairs(data)
    assert (data.n_users, data.n_items, users.size) == (200, 90, 2500)
    assert {m: a.shape for m, a in data.features.items()} == {"text": (90, 6), "audio": (90, 3)}
    assert np.bincount(users, minlength=200).min() >= 3  # every user at least 3 (one per split)
    assert np.bincount(items, minlength=90).min() >= 1  # every item at least once
    assert np.unique(users * 90 + items).size == users.size  # no repeated pair
    # the extremes of the allowed range are exact too
    for n in (600, 200 * 45):
        users, _ = _pairs(load_dataset(f"synthetic:users=200,items=90,interactions={n}", seed=1))
        assert users.size == n


def test_deterministic_by_seed_and_same_as_spec() -> None:
    text = "synthetic:users=150,items=60,interactions=1200,dims=text:4"
    a, b, c = (load_dataset(text, seed=s) for s in (3, 3, 4))
    for x, y in zip(_pairs(a), _pairs(b)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.features["text"], b.features["text"])
    assert not np.array_equal(_pairs(a)[1], _pairs(c)[1])
    direct = generate_synthetic(SyntheticSpec(150, 60, 1200, {"text": 4}), 3)[0]
    np.testing.assert_array_equal(_pairs(direct)[1], _pairs(a)[1])


def test_planted_structure_survives_at_size() -> None:
    """Users mostly pick items of their favourite clusters, so quality stays measurable."""
    data, truth = generate_synthetic(SyntheticSpec(3000, 400, 30000, {"text": 4}), seed=2)
    users, items = _pairs(data)
    liked = truth.user_weights > 0
    own = (truth.user_clusters[users] == truth.item_cluster[items][:, None]) & liked[users]
    n_clusters = int(truth.item_cluster.max()) + 1
    assert own.any(axis=1).mean() > 0.7  # far above what random picks give (<= 3 clusters of ~20)
    assert n_clusters == 20
