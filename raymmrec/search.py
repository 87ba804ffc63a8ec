"""Hyperparameter search spaces, declared next to each method's config, without Ray.

A method sets ``search_spaces = SearchSpaces(paper={...}, wide={...})`` on its class. Keys are
config paths as on the command line (``model.n_layers``, ``train.lr``); values are domains:

* :class:`Grid` values are crossed with each other (the authors' grids are all-grid spaces);
* :class:`Choice`, :class:`Uniform`, :class:`LogUniform` and :class:`IntRange` are sampled.

``paper`` is the grid the authors (or MMRec's ``configs/model``) tuned over; ``wide`` is a random
space for searching beyond it, where early stopping of bad trials (ASHA) pays. The Ray layer
turns a space into Tune's ``param_space``; :func:`grid_points` enumerates a grid here, e.g. to run
the same configurations one after another in one process.

Example::

    space = search_space("bm3", "paper")     # {"model.n_layers": Grid((1, 2)), ...}
    points = grid_points(space)              # 8 dicts
    spec = apply_point(base_spec, points[0]) # a RunSpec with the point's values
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Union

from raymmrec.config import ConfigError, RunSpec, spec_from_dict, validate_options

__all__ = ["Choice", "Grid", "IntRange", "LogUniform", "SearchSpaces", "Uniform", "apply_point",
           "check_space", "grid_points", "grid_size", "search_space", "short_name"]


@dataclass(frozen=True)
class Grid:
    """Every value, crossed with the other grid keys."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Choice:
    """One value drawn uniformly per trial."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]`` (both included)."""

    low: int
    high: int


Domain = Union[Grid, Choice, Uniform, LogUniform, IntRange]
Space = dict[str, Domain]
KINDS = ("paper", "wide")


@dataclass(frozen=True)
class SearchSpaces:
    """A method's spaces: ``paper`` (the authors' grid) and ``wide`` (random, for ASHA)."""

    paper: Space = field(default_factory=dict)
    wide: Space = field(default_factory=dict)

    def get(self, kind: str) -> Space:
        if kind not in KINDS:
            raise ConfigError(f"grid: expected one of {', '.join(KINDS)}, got {kind!r}")
        return dict(getattr(self, kind))


def search_space(method: str, kind: str = "paper") -> Space:
    """The registered method's ``kind`` space (a one-line error if it declares none)."""
    from raymmrec.registry import get_model

    cls = get_model(method)
    spaces: SearchSpaces | None = getattr(cls, "search_spaces", None)
    space = spaces.get(kind) if spaces is not None else {}
    if not space:
        raise ConfigError(f"method {method!r} declares no {kind!r} search space")
    return space


def is_grid(space: Space) -> bool:
    return all(isinstance(d, Grid) for d in space.values())


def grid_size(space: Space) -> int:
    n = 1
    for d in space.values():
        if isinstance(d, Grid):
            n *= len(d.values)
    return n


def grid_points(space: Space) -> list[dict[str, Any]]:
    """Every point of an all-grid space, in a fixed order (the last key varies fastest)."""
    if not is_grid(space):
        raise ConfigError("only a space of Grid values can be enumerated; sample the others with Tune")
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k].values for k in keys))]  # type: ignore[union-attr]


def apply_point(spec: RunSpec, point: dict[str, Any]) -> RunSpec:
    """``spec`` with ``point``'s values (``{"model.dropout": 0.3, "train.lr": 1e-3}``), validated."""
    raw = spec.to_dict()
    for key, value in point.items():
        section, _, name = key.partition(".")
        if not name or section not in ("model", "train", "eval", "data", "objective_options"):
            raise ConfigError(f"search key {key!r}: expected <section>.<option>, e.g. model.reg_weight")
        raw.setdefault(section, {})[name] = value
    return spec_from_dict(raw)


def check_space(spec: RunSpec, space: Space) -> None:
    """Refuse keys or values the method does not accept, before any trial starts (one line)."""
    from raymmrec.registry import get_model

    cls = get_model(spec.method)
    for key, dom in space.items():
        samples = list(dom.values) if isinstance(dom, (Grid, Choice)) else [dom.low, dom.high]
        for value in samples:
            try:
                s = apply_point(spec, {key: value})
                if key.startswith("model."):
                    validate_options(cls.config_cls, s.model, "model")
            except ConfigError as e:
                raise ConfigError(f"search space of {spec.method!r}: {e}") from None


def short_name(key: str) -> str:
    """``model.reg_weight`` -> ``reg_weight`` (``train.lr`` -> ``lr``), for trial names and tables."""
    return key.split(".", 1)[-1]
