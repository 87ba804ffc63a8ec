"""Spherical Bézier fusion (raymmrec.fusion): slerp, De Casteljau recursion, Beta draws, fuse.

Tiny tensors only; the references are written out by hand here, independently of the module.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raymmrec.fusion import draw_mixing, fuse, slerp, spherical_bezier

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def closed_form(a, b, t):
    """Textbook slerp of unit rows: sin((1-t)θ)/sinθ·a + sin(tθ)/sinθ·b (no safety at all)."""
    t = torch.as_tensor(t, dtype=a.dtype)
    if t.dim() == 1:
        t = t[:, None]
    theta = torch.acos((a * b).sum(-1, keepdim=True).clamp(-1, 1))
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


def unit(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def rotated(a, angle, seed=1):
    """Unit rows at exactly ``angle`` from the unit rows of ``a`` (built in float64)."""
    a64 = a.double()
    r = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = F.normalize(r - (r * a64).sum(-1, keepdim=True) * a64, dim=-1)
    return (math.cos(angle) * a64 + math.sin(angle) * c).to(a.dtype)


def on_circle(degrees, dtype=torch.float64):
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1).to(dtype)


# ----------------------------------------------------------------------------------- slerp


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp_matches_closed_form_and_stays_on_sphere(dtype):
    a, b = unit(16, 5, dtype=dtype, seed=0), unit(16, 5, dtype=dtype, seed=1)
    t = torch.rand(16, generator=torch.Generator().manual_seed(2), dtype=dtype)
    # inputs need not be unit: slerp normalises first
    out = slerp(3.0 * a, 0.25 * b, t)
    assert out.dtype == dtype
    torch.testing.assert_close(out, closed_form(a, b, t), atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(16, dtype=dtype), atol=TOL[dtype], rtol=0)
    # t as [n, 1] and as a scalar
    torch.testing.assert_close(slerp(a, b, t[:, None]), out, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(slerp(a, b, 0.3), closed_form(a, b, torch.full((16,), 0.3, dtype=dtype)),
                               atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp_endpoints(dtype):
    a, b = unit(8, 4, dtype=dtype, seed=3), unit(8, 4, dtype=dtype, seed=4)
    torch.testing.assert_close(slerp(a, b, 0.0), a, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=TOL[dtype], rtol=0)


def test_slerp_gradients_match_finite_differences():
    a, b = unit(4, 3, seed=5), unit(4, 3, seed=6)
    t = torch.tensor([0.1, 0.4, 0.5, 0.9], dtype=torch.float64)
    args = (a.clone().requires_grad_(), b.clone().requires_grad_(), t.clone().requires_grad_())
    assert torch.autograd.gradcheck(slerp, args)
    # identical rows: the small-angle branch has the slerp's true first derivatives
    args = (a.clone().requires_grad_(), a.clone().requires_grad_(), t.clone().requires_grad_())
    assert torch.autograd.gradcheck(slerp, args)


def _value_and_grads(a, b, t):
    a, b, t = (x.clone().requires_grad_() for x in (a, b, t))
    out = slerp(a, b, t)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), a.grad, b.grad, t.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("angle", [0.0, 1e-6, math.pi - 1e-2, math.pi - 1e-6, math.pi])
def test_slerp_finite_at_degenerate_angles(dtype, angle):
    a = unit(6, 4, dtype=dtype, seed=7)
    b = -a if angle == math.pi else rotated(a, angle)
    t = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.99, 1.0], dtype=dtype)
    out, ga, gb, gt = _value_and_grads(a, b, t)
    for x in (out, ga, gb, gt):
        assert torch.isfinite(x).all()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(6, dtype=dtype), atol=TOL[dtype], rtol=0)
    # no gradient blow-up: near pi they grow like 1/sin(theta) but stay below 1/sqrt(eps) or so
    assert max(g.abs().max().item() for g in (ga, gb, gt)) < 10 / math.sqrt(torch.finfo(dtype).eps)
    torch.testing.assert_close(out[0], a[0], atol=TOL[dtype], rtol=0)  # t = 0 is a, always


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp_identical_and_tiny_angle_values_and_gradients(dtype):
    a = unit(3, 4, dtype=dtype, seed=8)
    t = torch.tensor([0.25, 0.5, 0.8], dtype=dtype)
    torch.testing.assert_close(slerp(a, a, t), a, atol=TOL[dtype], rtol=0)
    # the published clamp (1e-8) does nothing in float32: where a.a rounds to 1 the unguarded
    # formula divides 0 by 0
    if dtype == torch.float32:
        cos = (a * a).sum(-1).clamp(-1 + 1e-8, 1 - 1e-8)
        assert (cos == 1).any() and torch.isnan(closed_form(a, a, t)).any()
    # angle 1e-6: values and gradients agree with a float64 computation of the same inputs
    b = rotated(a, 1e-6)
    out, ga, gb, gt = _value_and_grads(a, b, t)
    ref, ra, rb, rt = _value_and_grads(a.double(), b.double(), t.double())
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    for g, r in ((ga, ra), (gb, rb), (gt, rt)):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp_antipodal_is_a_deterministic_half_turn(dtype):
    # random rows and coordinate axes (where a careless choice of perpendicular degenerates)
    a = torch.cat([unit(2, 5, dtype=dtype, seed=9), torch.eye(5, dtype=dtype)[[0, 4]]])
    mid = slerp(a, -a, 0.5)
    torch.testing.assert_close(slerp(a, -a, 0.5), mid, atol=0, rtol=0)
    torch.testing.assert_close((mid * a).sum(-1), torch.zeros(4, dtype=dtype), atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(slerp(a, -a, 1.0), -a, atol=TOL[dtype], rtol=0)
    # a quarter of the way: 45 degrees from a
    quarter = slerp(a, -a, 0.25)
    torch.testing.assert_close((quarter * a).sum(-1), torch.full((4,), math.sqrt(0.5), dtype=dtype),
                               atol=TOL[dtype], rtol=0)


def test_slerp_rejects_bad_shapes():
    a = unit(3, 4)
    with pytest.raises(ValueError, match="same shape"):
        slerp(a, unit(3, 5), 0.5)
    with pytest.raises(ValueError, match="t must be"):
        slerp(a, a, torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        slerp(torch.ones(3, 1), torch.ones(3, 1), 0.5)


# --------------------------------------------------------------------- spherical Bézier


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_points_match_nested_closed_form(dtype):
    p0, p1, p2 = (unit(10, 6, dtype=dtype, seed=s) for s in (10, 11, 12))
    t = torch.rand(10, generator=torch.Generator().manual_seed(13), dtype=dtype)
    ref = closed_form(closed_form(p0, p1, t), closed_form(p1, p2, t), t)
    out = spherical_bezier([2 * p0, p1, 0.5 * p2], t)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(10, dtype=dtype), atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(spherical_bezier(torch.stack([p0, p1, p2]), t), out, atol=0, rtol=0)
    torch.testing.assert_close(spherical_bezier([p0, p1, p2], 0.0), p0, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(spherical_bezier([p0, p1, p2], 1.0), p2, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_circle_examples_written_out(dtype):
    # On the unit circle every slerp moves the angle linearly, so De Casteljau on angles
    # 0, 100, 40 degrees lands at the quadratic Bezier of the angles: 2t(1-t)*100 + t^2*40.
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.8, 1.0], dtype=dtype)
    pts = [on_circle([deg] * 6, dtype) for deg in (0.0, 100.0, 40.0)]
    expected = [2 * s * (1 - s) * 100 + s * s * 40 for s in t.tolist()]
    torch.testing.assert_close(spherical_bezier(pts, t), on_circle(expected, dtype), atol=TOL[dtype], rtol=0)
    # equal spacing (0, 45, 90 degrees): constant speed, angle 90 t; t = 0.5 is 45 degrees
    pts = [on_circle([deg] * 6, dtype) for deg in (0.0, 45.0, 90.0)]
    torch.testing.assert_close(spherical_bezier(pts, t), on_circle((90 * t).tolist(), dtype),
                               atol=TOL[dtype], rtol=0)
    mid = spherical_bezier(pts, 0.5)[0]
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5)] * 2, dtype=dtype), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_points(dtype):
    p0, p1 = unit(5, 3, dtype=dtype, seed=14), unit(5, 3, dtype=dtype, seed=15)
    t = torch.rand(5, generator=torch.Generator().manual_seed(16), dtype=dtype)
    torch.testing.assert_close(spherical_bezier([p0, p1], t), slerp(p0, p1, t), atol=0, rtol=0)
    torch.testing.assert_close(spherical_bezier([p0, p1], t[:, None]), slerp(p0, p1, t), atol=0, rtol=0)
    torch.testing.assert_close(spherical_bezier([4 * p0], t), p0, atol=TOL[dtype], rtol=0)
    with pytest.raises(ValueError):
        spherical_bezier([], 0.5)
    with pytest.raises(ValueError):
        spherical_bezier([p0, p1[:4]], 0.5)
    with pytest.raises(ValueError, match="t must be"):
        spherical_bezier([p0, p1], torch.zeros(4, dtype=dtype))


def test_bezier_gradients_finite_with_identical_points():
    p = unit(4, 3, dtype=torch.float32, seed=17)
    pts = [p.clone().requires_grad_() for _ in range(3)]
    out = spherical_bezier(pts, torch.full((4,), 0.3))
    out.sum().backward()
    torch.testing.assert_close(out.detach(), p, atol=1e-6, rtol=0)
    assert all(torch.isfinite(x.grad).all() for x in pts)


# ----------------------------------------------------------------------------- Beta draws


def test_draw_mixing_reproducible_from_a_seed():
    def draw(seed):
        return draw_mixing(500, 0.5, torch.Generator().manual_seed(seed))

    torch.testing.assert_close(draw(7), draw(7), atol=0, rtol=0)
    assert not torch.equal(draw(7), draw(8))
    g = torch.Generator().manual_seed(7)
    first, second = draw_mixing(500, 0.5, g), draw_mixing(500, 0.5, g)
    assert not torch.equal(first, second)  # the generator advances
    assert draw_mixing(0, 0.5).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9, 5.0])
def test_draw_mixing_moments_and_open_interval(dtype, alpha):
    lam = draw_mixing(40_000, alpha, torch.Generator().manual_seed(11), dtype=dtype)
    assert lam.dtype == dtype and lam.shape == (40_000,)
    assert (lam > 0).all() and (lam < 1).all()  # strictly inside, also for alpha = 0.1 in float32
    x = lam.double()
    assert abs(x.mean().item() - 0.5) < 0.01
    expected_var = 1 / (4 * (2 * alpha + 1))
    assert abs(x.var().item() - expected_var) < 0.04 * expected_var


def test_draw_mixing_matches_torch_beta_distribution():
    ours = draw_mixing(20_000, 0.3, torch.Generator().manual_seed(3), dtype=torch.float64).sort().values
    with torch.random.fork_rng():
        torch.manual_seed(4)
        theirs = torch.distributions.Beta(torch.tensor(0.3, dtype=torch.float64),
                                          torch.tensor(0.3, dtype=torch.float64)).sample((20_000,)).sort().values
    grid = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    ks = (torch.searchsorted(ours, grid) - torch.searchsorted(theirs, grid)).abs().max().item() / 20_000
    assert ks < 0.02


def test_alpha_changes_the_spread_in_the_expected_direction():
    spread = [draw_mixing(5000, a, torch.Generator().manual_seed(0)).std().item() for a in (0.1, 0.5, 0.9, 5.0)]
    assert spread == sorted(spread, reverse=True)
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="alpha"):
            draw_mixing(3, bad)


# ----------------------------------------------------------------------------------- fuse


@pytest.mark.parametrize("dtype", DTYPES)
def test_fuse_eval_is_deterministic_at_the_mean(dtype):
    pts = [unit(7, 4, dtype=dtype, seed=s) for s in (20, 21, 22)]
    out = fuse(pts, alpha=0.5, training=False)
    torch.testing.assert_close(fuse(pts, alpha=0.5, training=False), out, atol=0, rtol=0)
    torch.testing.assert_close(out, spherical_bezier(pts, 0.5), atol=0, rtol=0)
    two = fuse(pts[:2], alpha=0.1, training=False)
    torch.testing.assert_close(two, closed_form(pts[0], pts[1], torch.full((7,), 0.5, dtype=dtype)),
                               atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(fuse(pts[:1], alpha=0.5, training=True), pts[0], atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fuse_training_draws_per_item_per_call(dtype):
    pts = [unit(7, 4, dtype=dtype, seed=s) for s in (23, 24)]
    g = torch.Generator().manual_seed(5)
    first, second = fuse(pts, 0.5, training=True, generator=g), fuse(pts, 0.5, training=True, generator=g)
    assert first.dtype == dtype and not torch.allclose(first, second)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(7, dtype=dtype), atol=TOL[dtype], rtol=0)
    # the same seed gives the same fused vectors (what every DDP rank relies on)
    lam = draw_mixing(7, 0.5, torch.Generator().manual_seed(5), dtype=dtype)
    torch.testing.assert_close(first, slerp(pts[0], pts[1], lam), atol=0, rtol=0)
    # the published behaviour: draws at evaluation too, when asked
    again = fuse(pts, 0.5, training=False, generator=torch.Generator().manual_seed(5), sample_at_eval=True)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
