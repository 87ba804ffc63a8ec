"""PNG plots of sweeps (matplotlib, headless): a metric against each hyperparameter, learning curves.

Each function returns the PNG's bytes (``None`` when there is nothing to draw), so the caller writes
them where the sweep lives, local or s3.
"""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["plot_curves", "plot_metric_vs_params"]


def figure_row(n: int, width: float = 4.0, height: float = 3.2) -> tuple[Any, list[Any]]:
    """A headless figure of ``n`` panels side by side; (figure, its axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def plot_metric_vs_params(rows: list[dict[str, Any]], space: dict[str, Any], metric: str, title: str) -> bytes | None:
    """One panel per hyperparameter: validation and test ``metric`` of every trial against its value.

    Numeric values spanning more than a factor of 20 get a log axis; others are plotted as categories.
    """
    from raymmrec.search import short_name

    params = [short_name(k) for k in space]
    if not params or not rows:
        return None
    fig, axes = figure_row(len(params))
    for ax, p in zip(axes, params):
        values = [r.get(p) for r in rows]
        numeric = all(_finite(v) for v in values)
        if numeric:
            xs = [float(v) for v in values]
            positive = all(x > 0 for x in xs)
            if positive and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
        else:
            cats = sorted({str(v) for v in values})
            xs = [cats.index(str(v)) for v in values]
            ax.set_xticks(range(len(cats)), cats)
        for split, marker in (("valid", "o"), ("test", "x")):
            ys = [r.get(f"{split} {metric}") for r in rows]
            pts = [(x, y) for x, y in zip(xs, ys) if _finite(y)]
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=marker, label=split, alpha=0.75)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{title}: {metric} at each trial's best validation epoch", fontsize=10)
    return png_bytes(fig)


def plot_curves(curves: dict[str, list[list[float]]], top: list[dict[str, Any]], metric: str,
                title: str) -> bytes | None:
    """Validation ``metric`` per epoch of the ``top`` trials (rows with ``dir``, the key of ``curves``,
    and ``trial``, the label)."""
    drawn = [(r["trial"], curves[r["dir"]]) for r in top if curves.get(r["dir"])]
    if not drawn:
        return None
    fig, (ax,) = figure_row(1, width=7.0, height=4.0)
    for label, pts in drawn:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: learning curves of the best {len(drawn)} trials", fontsize=10)
    return png_bytes(fig)


def plot_table_bars(table: dict[str, dict[str, float]], metric: str, title: str) -> bytes | None:
    """Grouped bars: ``table[dataset][method]`` values of ``metric`` (the reproduce comparison)."""
    datasets = list(table)
    methods = sorted({m for d in table.values() for m in d})
    if not datasets or not methods:
        return None
    fig, (ax,) = figure_row(1, width=max(5.0, 1.6 * len(datasets) * len(methods) / 2), height=3.6)
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + j * width for i in range(len(datasets))]
        ys = [table[d].get(m, float("nan")) for d in datasets]
        ax.bar(xs, ys, width=width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(datasets))], datasets)
    ax.set_ylabel(f"test {metric}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)
