"""The objective contract and the checks that pair an objective with a model."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from raymmrec.config import validate_options
from raymmrec.models.base import Batch, LossOutput, ModelOutput, Recommender
from raymmrec.dist import DistContext


class Objective:
    """A loss over model outputs. Subclasses set the class attributes and implement ``__call__``.

    Attributes:
        needs_negatives: whether batches must carry sampled negatives.
        requires: the output kinds a model must declare in ``provides`` (e.g. ``"pairwise"``).
        config_fields: the fields this objective reads from the method's config (weights).
        options_cls: a frozen dataclass of the objective's own options (``objective_options`` in a
            run's config), or None when it has none.

    An objective may own parameters (NBPO's label-flip model): :meth:`make_module` builds them and
    the run attaches the module to the model as ``model.objective_module`` before wrapping it for
    DDP and building the optimizer, so they are trained, averaged over ranks and checkpointed
    with the model's own. The module declares its tensors indexed by users or items in a class
    attribute ``indexed`` (as :attr:`Recommender.indexed`, e.g. NBPO's ``P`` and ``Q``), and
    unlearning resets their forgotten slices with the model's (:mod:`raymmrec.unlearning.reset`).
    """

    name: ClassVar[str] = ""
    needs_negatives: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({"pairwise"})
    config_fields: ClassVar[tuple[str, ...]] = ()
    options_cls: ClassVar[type | None] = None
    #: True when the loss is exact on column blocks (``train.shard=columns``, :mod:`raymmrec.shard`):
    #: it reads dot products through ``ModelOutput.scores`` and norms through ``ctx.global_norm``, or
    #: full rows the model joined.
    column_sharding: ClassVar[bool] = False

    def __init__(self, model_cfg: Any, options: Any = None) -> None:
        self.cfg = model_cfg
        self.opts = options
        self.module: nn.Module | None = None

    def make_module(self, n_users: int, n_items: int) -> nn.Module | None:
        """Parameters this objective trains besides the model's (None: it has none)."""
        return None

    def attach(self, model: Recommender, n_users: int, n_items: int) -> None:
        """Build :meth:`make_module` (if any) and register it on ``model`` as ``objective_module``."""
        module = self.make_module(n_users, n_items)
        if module is not None:
            model.add_module("objective_module", module)
            self.module = module

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


def build_objective(model_cls: type[Recommender], model_cfg: Any, name: str | None = None,
                    options: dict[str, Any] | None = None) -> Objective:
    """The objective ``name`` (default: the method's own) for ``model_cls``, checked for fit.

    ``options`` (a run's ``objective_options``) are checked against the objective's ``options_cls``.
    """
    from raymmrec.registry import get_objective

    cls = get_objective(name or model_cls.default_objective)
    cls.check_compatible(model_cls)
    if cls.options_cls is None:
        if options:
            raise ValueError(f"objective {cls.name!r} takes no options, got objective_options {sorted(options)}")
        return cls(model_cfg)
    return cls(model_cfg, validate_options(cls.options_cls, options, "objective_options"))
