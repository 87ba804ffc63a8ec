"""Spherical fusion of modality embeddings (the building block of CM3's spherical Bézier fusion).

Each item has one embedding per modality. They are projected onto the unit sphere and combined by
a spherical Bézier curve: De Casteljau's construction in which every linear interpolation is
replaced by a slerp (spherical linear interpolation). Level by level, consecutive points are
slerped with the same parameter ``t`` until one point remains. With two modalities this is a single
slerp, which is all the published CM3 code implements.

During training ``t`` is drawn per item from ``Beta(alpha, alpha)`` on every forward; at evaluation
the default is the mean, ``t = 0.5``, so scoring is deterministic. The published behaviour (random
draws at evaluation too) stays available through ``fuse(..., sample_at_eval=True)``.

Numerics (see :func:`slerp`): the published code clamps the cosine to ``[-1 + 1e-8, 1 - 1e-8]``,
which is a no-op in float32 (its spacing next to 1 is about 6e-8), so identical vectors give
``sin(theta) = 0`` and NaN. Here the angle comes from ``atan2(|perpendicular part|, cosine)``, which
is accurate over the whole range ``[0, pi]``, and the two degenerate ends, the angle within
``sqrt(machine epsilon)`` of 0 or of pi (about 3.5e-4 rad in float32, 1.5e-8 in float64), take a
separate branch whose values and gradients are finite. That threshold is where the error of the
general formula (machine epsilon divided by the distance to the degenerate end) meets the error
of the fallback, so neither side is worse than ``sqrt(eps)``.

Column-sharded (``cols``, :mod:`raymmrec.shard`): the rows are split into blocks of columns over the
ranks; every sum over a row (norms, the cosine, the perpendicular part) is summed over the blocks, so each
rank gets its block of the one-process result, with the same draws.

Torch only; no Ray. Example::

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)  # the same on every DDP rank
    mix = fuse([text_emb, image_emb], alpha=0.5, training=model.training, generator=g)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from raymmrec.shard import Columns, unit_rows

__all__ = ["draw_mixing", "fuse", "slerp", "spherical_bezier"]


def _threshold(dtype: torch.dtype) -> float:
    """Sine of the angle below which an end of ``[0, pi]`` counts as degenerate: ``sqrt(eps)``."""
    return math.sqrt(torch.finfo(dtype).eps)


def _as_column(t: Tensor | float, a: Tensor) -> Tensor:
    """``t`` as a tensor that broadcasts against ``a`` (``[..., d]``) with one value per row."""
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() == a.dim() - 1:  # one value per row: [n] for [n, d]
        t = t.unsqueeze(-1)
    elif t.dim() != 0 and not (t.dim() == a.dim() and t.shape[-1] == 1):
        raise ValueError(
            f"slerp: t must be a scalar, shape {tuple(a.shape[:-1])} or {tuple(a.shape[:-1]) + (1,)}, "
            f"got shape {tuple(t.shape)}"
        )
    return t


def _row_sum(t: Tensor, cols: Columns | None) -> Tensor:
    """Sum over the last dimension (over every rank's block of it when column-sharded), kept as ``[..., 1]``;
    every rank's block then uses it, so its gradient is summed over the ranks too."""
    s = t.sum(dim=-1, keepdim=True)
    return s if cols is None else cols.share(cols.reduce(s))


def _perpendicular_axis(a: Tensor, cols: Columns | None = None) -> Tensor:
    """A unit vector orthogonal to each (unit) row of ``a``, chosen deterministically.

    The coordinate axis on which the row is smallest in absolute value, with its component
    along the row removed. That axis has ``|a_k| <= 1/sqrt(d)``, so what is left has norm at
    least ``sqrt(1 - 1/d) >= sqrt(1/2)``: the result is always finite and well conditioned.
    Column-sharded, the ranks' smallest entries are joined (one per row and rank) and the first
    rank holding the row's smallest wins, as ``argmin`` picks the first of equal entries.
    """
    k = a.abs().argmin(dim=-1, keepdim=True)
    a_k = a.gather(-1, k)
    here = torch.ones_like(a_k)
    if cols is not None and cols.world_size > 1:
        every = cols.gather(a_k, cols.world_size)
        winner = every.detach().abs().argmin(dim=-1, keepdim=True)
        a_k = cols.share(every.gather(-1, winner))  # used by every rank's block: its gradient summed
        here = (winner == cols.rank).to(a.dtype)
    axis = torch.zeros_like(a).scatter_(-1, k, here)
    c = axis - a_k * a
    return unit_rows(c, cols)


def slerp(a: Tensor, b: Tensor, t: Tensor | float, cols: Columns | None = None) -> Tensor:
    """Spherical linear interpolation between the rows of ``a`` and ``b``; returns unit vectors.

    Args:
        a, b: ``[..., d]`` with ``d >= 2``; any norms, each row is normalised first (an all-zero
            row gives a finite but meaningless result).
        t: a scalar, one value per row (shape ``[...]``, e.g. ``[n]``) or ``[..., 1]``. ``t = 0``
            gives ``a``, ``t = 1`` gives ``b``; values outside ``[0, 1]`` extrapolate along the arc.

    Returns:
        ``[..., d]`` unit rows on the shorter great-circle arc from ``a`` to ``b``, at angle
        ``t * theta`` from ``a`` where ``theta`` is the angle between them. This equals the
        textbook ``sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b``, but is computed as
        ``cos(t theta) a + sin(t theta) c`` with ``c`` the unit direction of ``b``'s component
        perpendicular to ``a``, and ``theta = atan2(|perpendicular part|, a.b)``.

    Degenerate rows, where ``sin(theta) < sqrt(eps)`` of the dtype (``theta`` within about
    3.5e-4 rad of 0 or pi in float32, 1.5e-8 in float64):

    * nearly parallel (``a.b >= 0``): normalised linear interpolation
      ``normalize((1-t) a + t b)``. It differs from the slerp by ``O(theta^3)`` and has the
      same first derivatives at ``theta = 0``, so values and gradients are exact to the dtype's
      resolution and finite for identical rows.
    * nearly antipodal (``a.b < 0``): every great circle through ``a`` reaches ``-a``, so the arc
      is not defined by the inputs. The row is rotated from ``a`` by ``t * pi`` towards a fixed
      unit vector orthogonal to ``a`` (the least-aligned coordinate axis, made orthogonal):
      deterministic, finite, exactly unit; ``t = 0`` gives ``a`` and ``t = 1`` gives ``-a``,
      which is within the threshold angle of ``b``. No gradient reaches ``b`` in this band.

    Gradients are finite everywhere. Just outside the antipodal band they grow like
    ``1 / sin(theta)`` (at most about 3e3 in float32), because there the output really is that
    sensitive to ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] < 2:
        raise ValueError(f"slerp: vectors need at least 2 dimensions, got {a.shape[-1]}")
    a = unit_rows(a, cols)
    b = unit_rows(b, cols)
    t = _as_column(t, a)
    thr = _threshold(a.dtype)

    cos = _row_sum(a * b, cols)
    perp = b - cos * a
    sin_sq = _row_sum(perp * perp, cols)
    degenerate = sin_sq < thr * thr
    parallel = degenerate & (cos >= 0)
    antipodal = degenerate & (cos < 0)

    # General branch. Degenerate rows get harmless stand-ins *before* the square root and the
    # division (the "double where"): otherwise their 0/0 would put NaN into the gradients even
    # though the final where discards their values.
    sin = torch.sqrt(torch.where(degenerate, torch.ones_like(sin_sq), sin_sq))
    theta = torch.atan2(sin, cos)
    general = torch.cos(t * theta) * a + torch.sin(t * theta) * (perp / sin)

    # Nearly parallel: normalised lerp. Elsewhere it may pass through 0, which unit_rows
    # maps to 0 (the where below passes it no gradient), so it needs no stand-in.
    near = unit_rows((1 - t) * a + t * b, cols)

    # Nearly antipodal: half-turn from a towards a fixed perpendicular.
    half_turn = torch.cos(t * math.pi) * a + torch.sin(t * math.pi) * _perpendicular_axis(a, cols)

    out = torch.where(parallel, near, torch.where(antipodal, half_turn, general))
    # Renormalise: every branch is unit up to rounding; this keeps recursions from drifting.
    return unit_rows(out, cols)


def _stack_points(points: Sequence[Tensor] | Tensor) -> Tensor:
    """The modality embeddings as one ``[m, n, d]`` tensor (``m >= 1``)."""
    if isinstance(points, Tensor):
        if points.dim() != 3:
            raise ValueError(f"points: expected a [m, n, d] tensor, got shape {tuple(points.shape)}")
        stacked = points
    else:
        points = list(points)
        if not points:
            raise ValueError("points: expected at least one modality embedding, got none")
        shapes = {tuple(p.shape) for p in points}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"points: expected [n, d] tensors of one shape, got shapes {sorted(shapes)}")
        stacked = torch.stack(points)
    if stacked.shape[0] < 1:
        raise ValueError("points: expected at least one modality embedding, got none")
    return stacked


def spherical_bezier(points: Sequence[Tensor] | Tensor, t: Tensor | float, cols: Columns | None = None) -> Tensor:
    """The point at ``t`` of the spherical Bézier curve with the given control points, per item.

    Args:
        points: ``m >= 1`` control points per item: a list of ``m`` tensors ``[n, d]`` (one per
            modality, rows are items) or a stacked ``[m, n, d]`` tensor. Any norms; each is
            normalised first.
        t: a scalar or one value per item (``[n]`` or ``[n, 1]``).

    Returns:
        ``[n, d]`` unit rows. De Casteljau's construction on the sphere: the ``m`` points are
        replaced by the ``m - 1`` slerps of consecutive pairs at ``t``, and so on until one point
        is left. ``m = 1`` returns the normalised point, ``m = 2`` is one :func:`slerp`, ``m = 3``
        is ``slerp(slerp(p0, p1, t), slerp(p1, p2, t), t)``. ``t = 0`` gives the first point and
        ``t = 1`` the last; the order of the points matters for ``m >= 3``.
    """
    stacked = _stack_points(points)
    if stacked.shape[0] == 1:
        return unit_rows(stacked[0], cols)
    t = torch.as_tensor(t, dtype=stacked.dtype, device=stacked.device)
    if t.dim() > 0:
        n = stacked.shape[1]
        if t.numel() != n or t.dim() > 2 or (t.dim() == 2 and t.shape[1] != 1):
            raise ValueError(f"spherical_bezier: t must be a scalar, [{n}] or [{n}, 1], got shape {tuple(t.shape)}")
        t = t.reshape(1, n, 1)  # broadcasts over the m - 1 pairs of every level
    level = stacked
    while level.shape[0] > 1:
        level = slerp(level[:-1], level[1:], t, cols)
    return level[0]


def _log_gamma(n: int, alpha: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` samples of ``log X`` with ``X ~ Gamma(alpha, 1)``, float64, from ``generator`` only.

    Marsaglia and Tsang's squeeze-free rejection method for shape ``>= 1``; for ``alpha < 1`` a
    ``Gamma(alpha + 1)`` draw is multiplied by ``U ** (1 / alpha)``. Working in logs keeps small
    shapes from underflowing to 0. The draws depend only on ``n``, ``alpha`` and the generator's
    state, so one seed gives one sequence on every process.
    """
    shape = alpha + 1.0 if alpha < 1.0 else alpha
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    opts = {"dtype": torch.float64, "device": device, "generator": generator}
    out = torch.empty(n, dtype=torch.float64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        x = torch.randn(todo.numel(), **opts)
        u = torch.rand(todo.numel(), **opts)
        v = (1.0 + c * x) ** 3
        log_v = torch.log(v.clamp_min(torch.finfo(torch.float64).tiny))
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * log_v)
        out[todo[accept]] = math.log(d) + log_v[accept]
        todo = todo[~accept]
    if alpha < 1.0:
        u = 1.0 - torch.rand(n, **opts)  # in (0, 1]: log is finite
        out = out + torch.log(u) / alpha
    return out


def _check_alpha(alpha: float) -> float:
    """``alpha`` as a float, or a ``ValueError`` unless it is a finite number > 0."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return value


def draw_mixing(
    n: int,
    alpha: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` independent draws from ``Beta(alpha, alpha)``, one mixing parameter per item.

    Args:
        n: number of draws.
        alpha: the Beta shape, ``> 0``. Small values push the draws towards 0 and 1 (mostly one
            modality), large values concentrate them at 0.5; the variance is ``1 / (4 (2 alpha + 1))``.
        generator: the random source. With a ``torch.Generator`` seeded the same way (e.g. from the
            run seed and the epoch), every process draws the same values; ``None`` uses torch's
            global generator. Draws happen on the generator's device (CPU for ``None``) and are
            moved to ``device``, so a CPU generator gives the same values whatever the target.
        device: where the result goes (default: CPU).
        dtype: the result's floating dtype.

    Returns:
        ``[n]`` values strictly inside ``(0, 1)``: ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha)``,
        computed in float64 as ``sigmoid(log X - log Y)``. A draw that would round to exactly 0 or
        1 in ``dtype`` (common in float32 for ``alpha = 0.1``, whose Beta piles up at the ends) is
        moved to the nearest representable value inside the interval.
    """
    alpha = _check_alpha(alpha)
    if n < 0:
        raise ValueError(f"draw_mixing: n must be >= 0, got {n}")
    source = generator.device if generator is not None else torch.device("cpu")
    log_x = _log_gamma(n, alpha, generator, source)
    log_y = _log_gamma(n, alpha, generator, source)
    lam = torch.sigmoid(log_x - log_y).to(dtype)
    one = torch.ones((), dtype=dtype)
    lam = lam.clamp(torch.finfo(dtype).tiny, torch.nextafter(one, torch.zeros((), dtype=dtype)).item())
    return lam.to(device if device is not None else "cpu")


def fuse(
    points: Sequence[Tensor] | Tensor,
    alpha: float,
    training: bool,
    generator: torch.Generator | None = None,
    *,
    sample_at_eval: bool = False,
    cols: Columns | None = None,
) -> Tensor:
    """Fuse ``m`` modality embeddings of the same ``n`` items into ``n`` unit vectors.

    Args:
        points: as in :func:`spherical_bezier` (a list of ``[n, d]`` or one ``[m, n, d]``).
        alpha: the ``Beta(alpha, alpha)`` shape for the training draws (CM3's grid: 0.1, 0.5, 0.9).
        training: draw ``t`` per item from ``Beta(alpha, alpha)`` (fresh draws on every call);
            otherwise use its mean, ``t = 0.5``, so the output is deterministic.
        generator: the random source for the draws (see :func:`draw_mixing`).
        sample_at_eval: draw at evaluation too, as the published CM3 code does (its forward
            always draws). Off by default.
        cols: the rank of a column-sharded run whose blocks of columns ``points`` hold (the result is
            its block of the one-process result); None in one process.

    Returns:
        ``[n, d]`` unit rows, ``spherical_bezier(points, t)``. Convention: ``t = 0`` is the first
        point. CM3 passes its modalities sorted by name (``[image, text]``), so with two modalities
        this is the published ``sin(t theta)/sin(theta) text + sin((1-t) theta)/sin(theta) image``
        with the same ``t``: identical, draw for draw.
    """
    alpha = _check_alpha(alpha)
    stacked = _stack_points(points)
    if stacked.shape[0] < 2:
        return spherical_bezier(stacked, 0.5, cols)
    if training or sample_at_eval:
        t = draw_mixing(stacked.shape[1], alpha, generator, device=stacked.device, dtype=stacked.dtype)
    else:
        t = 0.5
    return spherical_bezier(stacked, t, cols)
