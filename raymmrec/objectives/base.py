"""The objective contract and the checks that pair an objective with a model."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from raymmrec.models.base import Batch, LossOutput, ModelOutput, Recommender
from raymmrec.dist import DistContext


class Objective:
    """A loss over model outputs. Subclasses set the class attributes and implement ``__call__``.

    Attributes:
        needs_negatives: whether batches must carry sampled negatives.
        requires: the output kinds a model must declare in ``provides`` (e.g. ``"pairwise"``).
        config_fields: the fields this objective reads from the method's config (weights).
    """

    name: ClassVar[str] = ""
    needs_negatives: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({"pairwise"})
    config_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_cfg: Any) -> None:
        self.cfg = model_cfg

    def __call__(self, out: ModelOutput, batch: Batch, ctx: DistContext) -> LossOutput:
        raise NotImplementedError

    @classmethod
    def check_compatible(cls, model_cls: type[Recommender]) -> None:
        """Raise a one-line ValueError when ``model_cls`` cannot be trained with this objective."""
        provides = getattr(model_cls, "provides", frozenset({"pairwise"}))
        missing = cls.requires - provides
        if missing:
            raise ValueError(f"objective {cls.name!r} needs model outputs {sorted(missing)}, which method "
                             f"{model_cls.name!r} does not provide (it provides {sorted(provides)})")
        fields = {f.name for f in dataclasses.fields(model_cls.config_cls)}
        absent = [f for f in cls.config_fields if f not in fields]
        if absent:
            raise ValueError(f"objective {cls.name!r} reads model options {absent}, which method "
                             f"{model_cls.name!r} does not have")


def build_objective(model_cls: type[Recommender], model_cfg: Any, name: str | None = None) -> Objective:
    """The objective ``name`` (default: the method's own) for ``model_cls``, checked for fit."""
    from raymmrec.registry import get_objective

    cls = get_objective(name or model_cls.default_objective)
    cls.check_compatible(model_cls)
    return cls(model_cfg)
