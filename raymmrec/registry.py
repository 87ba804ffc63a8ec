"""Registry of recommender models by name.

A model module declares ``@register("bm3")`` on its class; :func:`get_model` imports every
module under ``raymmrec.models`` once, so adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from raymmrec.models.base import Recommender

_MODELS: dict[str, type["Recommender"]] = {}
_LOADED = False
T = TypeVar("T")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`Recommender` under ``name`` (lower case)."""

    def wrap(cls: T) -> T:
        key = name.lower()
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"model name {key!r} is registered twice ({_MODELS[key].__name__}, {cls.__name__})")
        _MODELS[key] = cls  # type: ignore[assignment]
        cls.name = key  # type: ignore[attr-defined]
        return cls

    return wrap


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import raymmrec.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _LOADED = True


def get_model(name: str) -> type["Recommender"]:
    """The model class registered as ``name``; a clear error lists the known names."""
    _load_all()
    try:
        return _MODELS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(model_names())}") from None


def model_names() -> list[str]:
    """Sorted names of all registered models."""
    _load_all()
    return sorted(_MODELS)
