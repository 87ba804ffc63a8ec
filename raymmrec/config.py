"""Typed run configuration: one :class:`RunSpec` tree, built and validated once.

A spec comes from defaults, then an optional YAML file, then ``section.key=value`` overrides
from the command line. Unknown sections or keys are errors, so a typo never passes silently.
``model`` holds the method's own options, checked against the method's config dataclass.

Example::

    spec = load_spec(method="bm3", yaml_path=None, overrides=["train.epochs=5", "model.dropout=0.3"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataSpec:
    source: str = "ml100k"  # built-in name (ml100k, synthetic[:preset]) or a path / fsspec URL
    modalities: list[str] | None = None  # subset of the dataset's modalities (None: all)
    rating_threshold: float | None = None  # keep rows with rating >= this (e.g. 1 for dbbook)
    kcore: int | None = None  # iterative k-core filter on users and items


@dataclass
class TrainSpec:
    epochs: int = 1000  # hard cap
    batch_size: int = 2048  # global batch size (split across workers when distributed)
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay (the BM3 reference trainer passes none)
    patience: int = 20  # stop after this many epochs without a strictly better valid metric
    seed: int = 999  # seeds model init, shuffling, negatives and dropout
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # evaluate every N epochs
    checkpoint_every: int = 1  # write the resumable checkpoint every N epochs (0: never)


@dataclass
class EvalSpec:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])  # cut-offs for every metric
    valid_metric: str = "recall@20"  # early stopping and model selection (validation split)
    max_batch_elems: int = 2**25  # bound on users × items scored at once


@dataclass
class RunSpec:
    method: str = "bm3"
    model: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    output_dir: str = "runs"  # local folder (or URL in the Ray layer) for run folders
    run_name: str | None = None  # default: <method>-<dataset>-<seed>; reusing a name resumes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        src = Path(self.data.source.rstrip("/")).name.replace(":", "-") or "data"
        return f"{self.method}-{src}-seed{self.train.seed}"


_SECTIONS = {"data": DataSpec, "train": TrainSpec, "eval": EvalSpec}


def coerce_value(value: Any, default: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the type of the field's default."""
    if isinstance(value, str) and not isinstance(default, str):
        value = yaml.safe_load(value)
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if isinstance(default, int) and float(value) != int(value):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, list) and not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return value


def spec_from_dict(raw: dict[str, Any]) -> RunSpec:
    """Build a :class:`RunSpec` from a nested dict (YAML or ``to_dict`` output); strict keys."""
    spec = RunSpec()
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(RunSpec)})
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; expected {[f.name for f in dataclasses.fields(RunSpec)]}")
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"config section {key!r} must be a mapping, got {value!r}")
            for sub, sub_value in value.items():
                _set(spec, f"{key}.{sub}", sub_value)
        elif key == "model":
            if not isinstance(value, dict):
                raise ValueError(f"config section 'model' must be a mapping, got {value!r}")
            spec.model.update(value)
        else:
            _set(spec, key, value)
    return spec


def _set(spec: RunSpec, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if parts[0] == "model" and len(parts) == 2:
        spec.model[parts[1]] = yaml.safe_load(value) if isinstance(value, str) else value
        return
    target: Any = spec
    for p in parts[:-1]:
        if p not in _SECTIONS or target is not spec:
            raise ValueError(f"unknown config key {dotted!r}")
        target = getattr(spec, p)
    names = {f.name for f in dataclasses.fields(target)}
    if parts[-1] not in names:
        raise ValueError(f"unknown config key {dotted!r}; valid keys here: {sorted(names)}")
    setattr(target, parts[-1], coerce_value(value, getattr(target, parts[-1]), dotted))


def load_spec(
    method: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunSpec:
    """Defaults, then the YAML file, then ``key=value`` overrides (e.g. ``train.lr=0.01``)."""
    spec = RunSpec()
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        try:
            spec = spec_from_dict(raw)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if method:
        spec.method = method
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.01")
        key, value = item.split("=", 1)
        _set(spec, key.strip(), value.strip())
    return spec
