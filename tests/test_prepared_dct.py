"""The ``dct_features`` prepared input: LIRDRec's orthonormal DCT-II per modality, concatenated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _tiny import tiny_data
from raymmrec import prepared as prep


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II by hand: C[k, j] = s_k cos(pi (2j+1) k / (2n)), s_0 = sqrt(1/n), else sqrt(2/n)."""
    c = np.empty((n, n))
    for k in range(n):
        s = math.sqrt((1 if k == 0 else 2) / n)
        for j in range(n):
            c[k, j] = s * math.cos(math.pi * (2 * j + 1) * k / (2 * n))
    return c


def build(data, **params):
    return prep.prepare(data, {"z": ("dct_features", params)})["z"]


def test_matches_a_hand_written_orthonormal_dct_ii_per_modality_in_order():
    data = tiny_data()
    f = {m: data.features[m].astype(np.float64) for m in data.features}
    di, dt = f["image"].shape[1], f["text"].shape[1]
    z = build(data)  # default: sorted modalities, image before text
    assert z.dtype == torch.float32 and z.shape == (data.n_items, di + dt)
    want = np.hstack([f["image"] @ dct_matrix(di).T, f["text"] @ dct_matrix(dt).T])
    np.testing.assert_allclose(z.numpy(), want, rtol=0, atol=1e-6)
    z_ti = build(data, modalities=["text", "image"])  # explicit order is kept
    np.testing.assert_allclose(z_ti.numpy(), np.hstack([want[:, di:], want[:, :di]]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(build(data, modalities=["text"]).numpy(), want[:, di:], rtol=0, atol=1e-6)


def test_orthonormal_norms_preserved_per_item_and_modality():
    data = tiny_data()
    z = build(data).double()
    start = 0
    for m in ("image", "text"):
        d = data.features[m].shape[1]
        np.testing.assert_allclose(z[:, start:start + d].norm(dim=1).numpy(),
                                   np.linalg.norm(data.features[m].astype(np.float64), axis=1), rtol=1e-6)
        start += d


def test_cached_by_content_and_loaded_identically(tmp_path, monkeypatch):
    data = tiny_data()
    calls = []
    b = prep._BUILDERS["dct_features"]
    monkeypatch.setitem(prep._BUILDERS, "dct_features",
                        prep.Builder(lambda d, **kw: calls.append(1) or b.fn(d, **kw), b.version, b.uses_features))
    req = {"z": ("dct_features", {"modalities": ["image", "text"]})}
    a = prep.prepare(data, req, tmp_path)["z"]
    c = prep.prepare(data, req, tmp_path)["z"]
    assert len(calls) == 1 and len(list((tmp_path / "prepared").glob("dct_features-*.pt"))) == 1
    assert torch.equal(a, c) and c.dtype == torch.float32
    key = prep.cache_key(data, "dct_features", {})
    assert key == prep.cache_key(tiny_data(), "dct_features", {})  # deterministic
    assert key != prep.cache_key(data, "dct_features", {"modalities": ["text"]})
    data.features["text"][0, 0] += 1.0  # one changed feature: another key, built again
    assert key != prep.cache_key(data, "dct_features", {})
    prep.prepare(data, req, tmp_path)
    assert len(calls) == 2


@pytest.mark.parametrize("mods", [["image", "video"], [], ["text", "text"]])
def test_bad_modalities_are_refused_naming_the_valid_ones(mods):
    with pytest.raises(ValueError, match=r"the dataset has: image, text$") as e:
        build(tiny_data(), modalities=mods)
    assert "\n" not in str(e.value)
    if "video" in mods:
        assert "'video'" in str(e.value)
