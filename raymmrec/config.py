"""Typed run configuration: one :class:`RunSpec` tree, built and validated once (pydantic v2).

A spec comes from defaults, then the method's own training defaults (its paper's settings, the
model class's ``train_defaults``, e.g. CM3's ``patience`` 10 and LIRDRec's ``lr`` 1e-4), then an
optional YAML file, then ``section.key=value`` overrides from the command line (the last two always
win); everything is validated together, so ``eval.ks`` and
``eval.valid_metric`` may come from different places. Unknown sections or keys are errors, so a
typo never passes silently, and every error is one line naming the key and what was expected
(:class:`~raymmrec.errors.ConfigError`, a ``ValueError``)::

    train.batch_size: expected an integer >= 1, got 0

Values are converted by the field's type, not by what YAML guesses: ``1e-3`` is a number
(YAML 1.1 reads it as a string), while ``run_name: 2024-01-01`` and other string fields stay the
text that was written (YAML would make it a date). ``model`` holds the method's own options,
checked against the method's config dataclass with :func:`validate_options`.

Example::

    spec = load_spec(method="bm3", yaml_path=None, overrides=["train.lr=1e-3", "model.dropout=0.3"])
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator,
                      model_validator)
from pydantic_core import ErrorDetails

from raymmrec.errors import ConfigError

__all__ = ["ConfigError", "DataSpec", "EvalSpec", "RunSpec", "TrainSpec", "adopt_recorded", "load_spec",
           "method_train_defaults", "spec_from_dict", "validate_options"]

_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)
_NULLS = {"", "~", "null", "Null", "NULL"}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class _ValueLoader(yaml.SafeLoader):
    """YAML for values: no dates (``2024-01-01`` stays text) and ``1e-3`` is a float, as in YAML 1.2."""

    yaml_implicit_resolvers = {
        c: [r for r in rs if r[0] != "tag:yaml.org,2002:timestamp"]
        for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_value(text: str) -> Any:
    """A command-line or YAML scalar as a typed value (``"1e-4"`` -> 0.0001, ``"[10,20]"`` -> list)."""
    try:
        return yaml.load(text, Loader=_ValueLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text  # validation then says what was expected


# ---------------------------------------------------------------------------------------------
# type-directed preparation and one-line error messages (shared by specs and model options)


def _unwrap(hint: Any) -> tuple[Any, list[Any], bool]:
    """``hint`` without ``Annotated`` and ``| None``: (inner type, constraints, accepts None)."""
    meta: list[Any] = []
    optional = False
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint, *more = typing.get_args(hint)
            meta += more
        elif origin in (Union, types.UnionType) and type(None) in typing.get_args(hint):
            rest = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = True
            if len(rest) != 1:
                return Union[tuple(rest)], meta, optional  # type: ignore[return-value]
            hint = rest[0]
        else:
            return hint, meta, optional


def _is_sequence(hint: Any) -> bool:
    return typing.get_origin(hint) in (list, tuple, set, frozenset) or hint in (list, tuple)


def _prepare(value: Any, hint: Any) -> Any:
    """Make ``value`` fit ``hint`` the way a user means it, before strict validation.

    String fields keep their text (numbers and dates YAML produced become text again; ``null``
    means None where None is allowed); other fields parse a string as a YAML value, so
    ``"1e-3"``, ``"5"``, ``"true"`` and ``"[10, 20]"`` become a float, an int, a bool and a list.
    """
    inner, _, optional = _unwrap(hint)
    if inner is str:
        if isinstance(value, str):
            return None if optional and value.strip() in _NULLS else value
        if isinstance(value, (int, float, datetime.date)):
            return str(value)
        return value
    if isinstance(value, str):
        value = parse_value(value)
    if _is_sequence(inner) and isinstance(value, (list, tuple)):
        args = typing.get_args(inner)
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            value = [_prepare(v, args[0]) for v in value]
        elif len(args) == len(value):  # tuple[int, str]: one type per position
            value = [_prepare(v, a) for v, a in zip(value, args)]
        kind = typing.get_origin(inner) or inner
        return kind(value) if kind in (tuple, set, frozenset) else value
    return value


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "true/false values")}


def _describe(hint: Any, meta: typing.Sequence[Any] = (), plural: bool = False) -> str:
    """What ``hint`` with constraints ``meta`` accepts, in words: ``an integer >= 1``."""
    inner, more, optional = _unwrap(hint)
    meta = [*meta, *more]
    if _is_sequence(inner):
        args = typing.get_args(inner)
        size = "non-empty " if any(isinstance(m, MinLen) and m.min_length >= 1 for m in meta) else ""
        text = f"{size}lists" if plural else f"a {size}list"
        text += f" of {_describe(args[0], plural=True)}" if args else ""
    elif dict in (inner, typing.get_origin(inner)) or (isinstance(inner, type) and issubclass(inner, BaseModel)):
        text = "mappings" if plural else "a mapping"
    elif inner in _NAMES:
        text = _NAMES[inner][plural]
    elif typing.get_origin(inner) is Literal:
        text = "one of " + ", ".join(str(v) for v in typing.get_args(inner))
    else:
        name = getattr(inner, "__name__", str(inner))
        text = f"values of type {name}" if plural else f"a value of type {name}"
    bounds = [f"{op} {getattr(m, attr)}" for m in meta for cls, op, attr in
              ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"), (Lt, "<", "lt")) if isinstance(m, cls)]
    if bounds:
        text += " " + " and ".join(bounds)
    return text + (" or null" if optional else "")


def _locate(hint: Any, loc: tuple[int | str, ...]) -> tuple[Any, list[Any]] | None:
    """The type and constraints at ``loc`` (a pydantic error location) below ``hint``."""
    meta: list[Any] = []
    for part in loc:
        inner, _, _ = _unwrap(hint)
        if isinstance(part, int) and _is_sequence(inner) and typing.get_args(inner):
            hint, meta = typing.get_args(inner)[0], []
        elif isinstance(part, str) and isinstance(inner, type) and issubclass(inner, BaseModel) \
                and part in inner.model_fields:
            info = inner.model_fields[part]
            hint, meta = info.annotation, list(info.metadata)
        else:
            return None
    return hint, meta


def _key(prefix: str, loc: tuple[int | str, ...]) -> str:
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _error_line(err: ErrorDetails, root: Any, prefix: str) -> str:
    """One pydantic error as ``<key>: expected <what>, got <value>``."""
    loc = tuple(err["loc"])
    key = _key(prefix, loc)
    if err["type"] == "extra_forbidden":
        parent = _locate(root, loc[:-1])
        valid = sorted(_unwrap(parent[0])[0].model_fields) if parent else []
        if not loc[:-1] and not prefix:
            kind = "section" if isinstance(err["input"], dict) else "key"
            return f"unknown config {kind} {key!r}; expected one of {valid}"
        return f"unknown config key {key!r}; valid keys here: {valid}"
    if err["type"] == "value_error":
        return f"{key}: {err.get('ctx', {}).get('error', err['msg'])}"
    found = _locate(root, loc)
    expected = _describe(*found) if found else err["msg"].lower()
    return f"{key}: expected {expected}, got {_show(err['input'])}"


def _errors_line(exc: ValidationError, root: Any, prefix: str = "",
                 sources: dict[str, str] | None = None) -> str:
    lines = []
    for err in exc.errors():
        line = _error_line(err, root, prefix)
        # sources name top-level keys and section.key leaves; list indices don't count
        names = [p for p in err["loc"] if isinstance(p, str)]
        source = (sources or {}).get(".".join(names[:2]))
        lines.append(f"{source}: {line}" if source else line)
    return "; ".join(lines)


@lru_cache(maxsize=256)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint, config=_STRICT)


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` (see :func:`_prepare`), or a one-line :class:`ConfigError`."""
    try:
        adapter = _adapter(hint)
    except TypeError:  # unhashable hint: no caching
        adapter = TypeAdapter(hint, config=_STRICT)
    try:
        return adapter.validate_python(_prepare(value, hint))
    except ValidationError as e:
        raise ConfigError(_errors_line(e, hint, key)) from None


def validate_options(cfg_cls: type, options: dict[str, Any] | None, where: str = "model") -> Any:
    """An instance of the (frozen, stdlib) config dataclass ``cfg_cls`` with ``options`` applied.

    Unknown keys are an error listing the valid ones; values are converted by the field's type
    annotation (``"1e-4"`` -> 0.0001, ``"2"`` -> 2; ints stay ints, bools are strict, a string for
    a number must be numeric). Errors are one-line :class:`ConfigError` naming ``<where>.<key>``.
    """
    options = dict(options or {})
    names = [f.name for f in dataclasses.fields(cfg_cls) if f.init]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options: {sorted(names)}")
    hints = typing.get_type_hints(cfg_cls, include_extras=True)
    values = {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in options.items()}
    try:
        return cfg_cls(**values)
    except ValueError as e:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# the run spec


class _Spec(BaseModel):
    """Strict, closed, mutable; string values from YAML/CLI are converted by field type first."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _prepare_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: _prepare(v, fields[k].annotation) if k in fields else v for k, v in data.items()}


class DataSpec(_Spec):
    source: str = "ml100k"  # built-in name (ml100k, synthetic[:preset]) or a path / fsspec URL
    modalities: list[str] | None = None  # subset of the dataset's modalities (None: all)
    rating_threshold: float | None = None  # keep rows with rating >= this (e.g. 1 for dbbook)
    kcore: int | None = Field(None, ge=1)  # iterative k-core filter on users and items
    # fraction of items held out as cold-start items with all their interactions (0: off); drawn
    # with the data seed (999), so every training seed sees the same ones; evaluated as split "cold"
    cold_items: float = Field(0.0, ge=0, lt=1)
    # fraction of each user's training positives hidden (dropped from training, kept out of the
    # ranking at evaluation): they become unlabelled, i.e. false negatives a sampler may draw (the
    # noisy-label study); data seed
    hide_positives: float = Field(0.0, ge=0, lt=1)
    # a forget request (Parquet or CSV of userID / itemID / both; path or URL): train on the data without
    # those interactions (retraining from scratch on the retain set, "Gold"; see raymmrec.data.forget)
    forget: str | None = None


class TrainSpec(_Spec):
    epochs: int = Field(1000, ge=1)  # hard cap
    batch_size: int = Field(2048, ge=1)  # global batch size (split across workers when distributed)
    lr: float = Field(1e-3, gt=0)  # Adam learning rate (LIRDRec's own default: 1e-4)
    weight_decay: float = Field(0.0, ge=0)  # Adam weight decay (the BM3 reference trainer passes none)
    # evaluations without a strictly better valid metric; stop when exceeded (CM3's own default: 10)
    patience: int = Field(20, ge=0)
    seed: int = Field(999, ge=0)  # seeds model init, shuffling, negatives and dropout
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    eval_every: int = Field(1, ge=1)  # evaluate every N epochs
    # how a multi-worker Ray Train run splits the work: "columns" (each worker holds a block of every
    # table's columns, raymmrec.shard), "none" (data-parallel DDP: every worker holds everything), or
    # "auto" (columns where the method and objective support it, else none); one process ignores it
    shard: Literal["auto", "none", "columns"] = "auto"
    # write the resumable checkpoint every N epochs (0: never; None: the runner's default: in one
    # process after the first epoch ending 60 s after the last save, under Ray every 5 epochs;
    # both also after the last epoch)
    checkpoint_every: int | None = Field(None, ge=0)
    num_negatives: int = Field(1, ge=1)  # sampled negatives per positive (objectives that use them)
    negative_pool: Literal["train", "all"] = "train"  # negatives from items seen in training, or all items
    negative_sampler: Literal["uniform", "popularity"] = "uniform"  # popularity: in proportion to training counts
    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: plain SGD (NBPO's authors' recipe), weight_decay as L2
    lr_decay: float = Field(1.0, gt=0, le=1)  # lr x lr_decay^(epoch+1): applied before the first epoch too

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not _DEVICE.fullmatch(v):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class EvalSpec(_Spec):
    ks: list[Annotated[int, Ge(1)]] = Field(default_factory=lambda: [10, 20, 50], min_length=1)  # cut-offs
    # early stopping and model selection (validation split); any case; checked against ks even as the default
    valid_metric: str = Field("recall@20", validate_default=True)
    max_batch_elems: int = Field(2**25, ge=1)  # bound on users × items scored at once
    # validation (early stopping) ranks a fixed random sample of this many of its users, drawn with the
    # data seed (0: all; more than there are: all); sampled users, not items, so one epoch's metric is an
    # unbiased estimate of the full one (the best over epochs is biased upward: selection picks the
    # noise too). Test metrics rank every user unless test_users says otherwise
    valid_users: int = Field(0, ge=0)
    # test ranks a fixed random sample of this many of its users (0: all, the papers' protocol): for runs so
    # large that ranking every user costs more than training (millions of users); results.json says so
    test_users: int = Field(0, ge=0)

    @field_validator("valid_metric")
    @classmethod
    def _check_valid_metric(cls, v: str, info: Any) -> str:
        from raymmrec.eval.metrics import METRICS

        ks = info.data.get("ks")
        name, _, k = v.strip().lower().partition("@")
        if name not in METRICS or not k.isdigit() or (ks is not None and int(k) not in ks):
            raise ValueError(f"expected <metric>@<k> with <metric> one of {', '.join(METRICS)} and <k> in "
                             f"eval.ks {ks}, got {v!r}")
        return f"{name}@{int(k)}"


class RunSpec(_Spec):
    method: str = "bm3"
    model: dict[str, Any] = Field(default_factory=dict)  # the method's options (see validate_options)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output_dir: str = "runs"  # local folder (or URL in the Ray layer) for run folders
    run_name: str | None = None  # default: <method>-<dataset>-<seed>; reusing a name resumes
    objective: str | None = None  # a registered training objective (None: the method's default)
    objective_options: dict[str, Any] = Field(default_factory=dict)  # the objective's options (e.g. NBPO's)
    # ``train`` keys filled from the method's own training defaults (not set by the user); see adopt_recorded
    _method_defaults: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able nested dict; :func:`spec_from_dict` reads it back."""
        return self.model_dump(mode="json")

    @property
    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        src = Path(self.data.source.rstrip("/")).name.replace(":", "-") or "data"
        return f"{self.method}-{src}-seed{self.train.seed}"


def method_train_defaults(method: Any) -> dict[str, Any]:
    """The ``train`` values a method declares as its own (its paper's), e.g. CM3's ``{"patience": 10}``.

    Read from the registered model class's ``train_defaults`` mapping (see
    :class:`~raymmrec.models.base.Recommender`); empty for an unknown method (reported elsewhere)
    or a method without one. A key that is not a ``train`` option is an error naming the class.
    """
    if not isinstance(method, str):
        return {}
    from raymmrec.registry import get_model

    try:
        cls = get_model(method)
    except KeyError:
        return {}
    defaults = dict(getattr(cls, "train_defaults", None) or {})
    unknown = sorted(set(defaults) - set(TrainSpec.model_fields))
    if unknown:
        raise ConfigError(f"{cls.__name__}.train_defaults: unknown train option(s) {unknown}; "
                          f"valid options: {sorted(TrainSpec.model_fields)}")
    return defaults


def _with_method_defaults(raw: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """``raw`` with the method's training defaults put under every ``train`` key it leaves unset.

    Explicit values (YAML, ``train.key=value``, a recorded ``config.json``, which holds every key)
    always win; only keys absent from ``raw["train"]`` are filled. Returns the keys filled.
    """
    train = raw.get("train", {})
    if not isinstance(train, dict) or set(TrainSpec.model_fields) <= set(train):
        return raw, frozenset()  # a malformed section (validation says so) or a complete one
    filled = {k: v for k, v in method_train_defaults(raw.get("method", "bm3")).items() if k not in train}
    if not filled:
        return raw, frozenset()
    return {**raw, "train": {**filled, **train}}, frozenset(filled)


def _build(raw: Any, sources: dict[str, str] | None = None) -> RunSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {_show(raw)}")
    raw, filled = _with_method_defaults(raw)
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_errors_line(e, RunSpec, sources=sources)) from None
    spec._method_defaults = filled
    return spec


def adopt_recorded(spec: RunSpec, recorded: dict[str, Any]) -> RunSpec:
    """``spec`` with the ``train`` values it took from its method's defaults replaced by a run's recorded ones.

    A run folder's ``config.json`` (``recorded``) holds the values the run was started with. When a
    method's training defaults change (CM3's patience, LIRDRec's learning rate), resuming a run
    recorded before must go on with what it started with, not refuse as a different experiment:
    values the user set explicitly still win, only those filled from the method's defaults are
    taken from the record. Returns a copy; ``spec`` is unchanged.
    """
    old = recorded.get("train") if isinstance(recorded, dict) else None
    if not spec._method_defaults or not isinstance(old, dict) or recorded.get("method") != spec.method:
        return spec
    raw = spec.to_dict()
    changed = {k: old[k] for k in spec._method_defaults if k in old and old[k] != raw["train"][k]}
    if not changed:
        return spec
    raw["train"].update(changed)
    out = spec_from_dict(raw)
    out._method_defaults = spec._method_defaults - set(changed)
    return out


def spec_from_dict(raw: dict[str, Any]) -> RunSpec:
    """Build a :class:`RunSpec` from a nested dict (YAML or ``to_dict`` output); strict keys."""
    return _build(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's tree with every scalar as written (text); ``model`` values typed (YAML values)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        raw = yaml.load(text, Loader=yaml.BaseLoader) or {}  # noqa: S506 - builds only str/list/dict
        typed = yaml.load(text, Loader=_ValueLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {_show(typed)}")
    if "model" in raw:
        raw["model"] = typed["model"]
    return raw


def _set(raw: dict[str, Any], dotted: str, value: str) -> None:
    """Put the override ``dotted=value`` into the raw tree (validated later, all together)."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override key {dotted!r} must look like section.key, e.g. train.lr")
    if parts[0] == "model":
        if len(parts) > 2:
            raise ConfigError(f"unknown config key {dotted!r}; model options are set as model.<option>=value")
        typed = parse_value(value)
        if len(parts) == 1:
            raw["model"] = typed
            return
        node = raw.setdefault("model", {})
        if not isinstance(node, dict):
            raise ConfigError(f"model: expected a mapping, got {_show(node)}")
        node[parts[1]] = typed
        return
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: expected a mapping, got {_show(node)}")
    node[parts[-1]] = value


def check_method(name: str) -> None:
    """Raise a one-line :class:`ConfigError` unless ``name`` is a registered method."""
    from raymmrec.registry import model_names

    names = model_names()
    if name.lower() not in names:
        raise ConfigError(f"method: expected a registered method ({', '.join(names)}), got {name!r}")


def load_spec(
    method: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunSpec:
    """Defaults, then the YAML file, then ``key=value`` overrides (e.g. ``train.lr=1e-3``).

    All values are validated together at the end; errors from the YAML file name the file.
    The method must be registered (checked before any data or model is loaded).
    """
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        raw = _read_yaml(path)
        for key, value in raw.items():
            sources[key] = str(path)
            if isinstance(value, dict):
                sources.update({f"{key}.{sub}": str(path) for sub in value})
    if method:
        raw["method"] = method
        sources.pop("method", None)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.01")
        key, value = item.split("=", 1)
        key = key.strip()
        _set(raw, key, value.strip())
        for k in [k for k in sources if k == key or k.startswith(key + ".")]:
            del sources[k]
    spec = _build(raw, sources)
    check_method(spec.method)
    return spec
