"""Registries of models and training objectives by name.

The registry is the ground floor of the plug-in system: it imports neither base class (the bases and
every method import it), so it holds plain classes and loads the method packages by name.

A model module declares ``@register("bm3")`` on its class and an objective module
``@register_objective("bpr")``; the getters import every module under ``raymmrec.models`` and
``raymmrec.objectives`` once, so adding a method or an objective is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

T = TypeVar("T")
_REGISTRIES: dict[str, dict[str, type]] = {"model": {}, "objective": {}}
_PACKAGES = {"model": "raymmrec.models", "objective": "raymmrec.objectives"}
_LOADED: set[str] = set()


def _register(kind: str, name: str) -> Callable[[T], T]:
    def wrap(cls: T) -> T:
        table = _REGISTRIES[kind]
        key = name.lower()
        if key in table and table[key] is not cls:
            raise ValueError(f"{kind} name {key!r} is registered twice ({table[key].__name__}, {cls.__name__})")
        table[key] = cls  # type: ignore[assignment]
        cls.name = key  # type: ignore[attr-defined]
        return cls

    return wrap


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`Recommender` under ``name`` (lower case)."""
    return _register("model", name)


def register_objective(name: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`~raymmrec.objectives.base.Objective` under ``name``."""
    return _register("objective", name)


def _load_all(kind: str) -> None:
    if kind in _LOADED:
        return
    pkg = importlib.import_module(_PACKAGES[kind])
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _LOADED.add(kind)


def _get(kind: str, name: str) -> type:
    _load_all(kind)
    try:
        return _REGISTRIES[kind][name.lower()]
    except KeyError:
        known = ", ".join(sorted(_REGISTRIES[kind]))
        plural = {"model": "methods", "objective": "objectives"}[kind]
        raise KeyError(f"unknown {kind if kind == 'objective' else 'method'} {name!r}; "
                       f"registered {plural}: {known}") from None


def get_model(name: str) -> type:
    """The model class (a ``Recommender``) registered as ``name``; a clear error lists the known names."""
    return _get("model", name)


def get_objective(name: str) -> type:
    """The objective class (an ``Objective``) registered as ``name``; a clear error lists the known names."""
    return _get("objective", name)


def model_names() -> list[str]:
    """Sorted names of all registered models."""
    _load_all("model")
    return sorted(_REGISTRIES["model"])


def objective_names() -> list[str]:
    """Sorted names of all registered objectives."""
    _load_all("objective")
    return sorted(_REGISTRIES["objective"])
