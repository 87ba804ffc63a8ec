"""Run configuration: values converted by field type, ranges and lists checked, one-line errors."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import pytest

from raymmrec.config import RunSpec, load_spec, spec_from_dict


def test_exponent_numbers_are_numbers_on_the_command_line_and_in_yaml(tmp_path):
    spec = load_spec("bm3", overrides=["train.lr=1e-3", "model.reg_weight=1e-4", "train.weight_decay=1E-6"])
    assert spec.train.lr == pytest.approx(1e-3) and isinstance(spec.train.lr, float)
    assert spec.train.weight_decay == pytest.approx(1e-6)
    assert spec.model == {"reg_weight": pytest.approx(1e-4)} and isinstance(spec.model["reg_weight"], float)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  lr: 1e-3\nmodel:\n  reg_weight: 1e-4\n  dropout: 0.3\n")
    spec = load_spec("bm3", cfg)
    assert spec.train.lr == pytest.approx(1e-3) and isinstance(spec.model["reg_weight"], float)
    assert spec.model == {"reg_weight": pytest.approx(1e-4), "dropout": 0.3}


def test_string_fields_keep_the_text_written(tmp_path):
    spec = load_spec("bm3", overrides=["run_name=2024-01-01", "output_dir=010", "data.source=2024-01-01"])
    assert (spec.run_name, spec.output_dir, spec.data.source) == ("2024-01-01", "010", "2024-01-01")
    assert spec.resolved_run_name == "2024-01-01"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("run_name: 2024-01-01\noutput_dir: 010\nmethod: bm3\ndata:\n  source: 1.10\n")
    spec = load_spec(yaml_path=cfg)
    assert (spec.run_name, spec.output_dir, spec.data.source) == ("2024-01-01", "010", "1.10")
    json.dumps(spec.to_dict())  # plain JSON, no dates
    assert load_spec(overrides=["run_name=null"]).run_name is None
    # a method option's value: YAML types it, but a date-like text is not turned into a date
    assert load_spec("bm3", overrides=["model.tag=2024-01-01"]).model == {"tag": "2024-01-01"}


def test_spec_from_dict_converts_what_yaml_1_1_produces():
    import datetime

    spec = spec_from_dict({"run_name": datetime.date(2024, 1, 1), "train": {"lr": "1e-3", "epochs": "7"}})
    assert spec.run_name == "2024-01-01" and spec.train.lr == pytest.approx(1e-3) and spec.train.epochs == 7


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
    ("train.epochs=-5", "train.epochs: expected an integer >= 1, got -5"),
    ("train.epochs=1.5", "train.epochs: expected an integer >= 1, got 1.5"),
    ("train.epochs=true", "train.epochs: expected an integer >= 1, got True"),
    ("train.lr=0", "train.lr: expected a number > 0, got 0"),
    ("train.lr=-1e-3", "train.lr: expected a number > 0, got -0.001"),
    ("train.lr=fast", "train.lr: expected a number > 0, got 'fast'"),
    ("train.lr=.nan", "train.lr: expected a number > 0, got nan"),
    ("train.lr=.inf", "train.lr: expected a number > 0, got inf"),
    ("train.weight_decay=-0.1", "train.weight_decay: expected a number >= 0, got -0.1"),
    ("train.patience=-1", "train.patience: expected an integer >= 0, got -1"),
    ("train.seed=-1", "train.seed: expected an integer >= 0, got -1"),
    ("train.eval_every=0", "train.eval_every: expected an integer >= 1, got 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every: expected an integer >= 0 or null, got -1"),
    ("train.num_negatives=0", "train.num_negatives: expected an integer >= 1, got 0"),
    ("train.device=gpu", "train.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("data.kcore=0", "data.kcore: expected an integer >= 1 or null, got 0"),
    ("data.modalities=text", "data.modalities: expected a list of strings or null, got 'text'"),
    ("data.rating_threshold=high", "data.rating_threshold: expected a number or null, got 'high'"),
    ("eval.ks=[10,x]", "eval.ks[1]: expected an integer >= 1, got 'x'"),
    ("eval.ks=[10,0]", "eval.ks[1]: expected an integer >= 1, got 0"),
    ("eval.ks=[]", "eval.ks: expected a non-empty list of integers >= 1, got []"),
    ("eval.ks=10", "eval.ks: expected a non-empty list of integers >= 1, got 10"),
    ("eval.max_batch_elems=0", "eval.max_batch_elems: expected an integer >= 1, got 0"),
    ("train=5", "train: expected a mapping, got 5"),
])
def test_values_out_of_range_or_of_the_wrong_type_are_one_line_errors(override, message):
    with pytest.raises(ValueError) as info:
        load_spec("bm3", overrides=[override])
    assert str(info.value) == message


def test_config_errors_are_config_errors_and_list_every_problem():
    from raymmrec.config import ConfigError
    from raymmrec.errors import UserError

    with pytest.raises(ConfigError) as info:
        load_spec(overrides=["train.batch_size=0", "eval.ks=[10,x]", "train.lrr=1"])
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)
    text = str(info.value)
    assert "\n" not in text
    assert "train.batch_size: expected" in text and "eval.ks[1]: expected" in text
    assert "unknown config key 'train.lrr'; valid keys here: [" in text


def test_new_fields_and_their_defaults():
    spec = load_spec("bm3")
    assert spec.objective is None and spec.train.checkpoint_every is None and spec.train.num_negatives == 1
    spec = load_spec("bm3", overrides=["objective=bpr", "train.checkpoint_every=5", "train.num_negatives=4"])
    assert (spec.objective, spec.train.checkpoint_every, spec.train.num_negatives) == ("bpr", 5, 4)


def test_valid_metric_any_case_checked_against_metrics_and_ks(tmp_path):
    assert load_spec(overrides=["eval.valid_metric=Recall@20"]).eval.valid_metric == "recall@20"
    assert load_spec(overrides=["eval.valid_metric=NDCG@50"]).eval.valid_metric == "ndcg@50"
    assert load_spec(overrides=["eval.valid_metric=F1@20"]).eval.valid_metric == "f1@20"  # NBPO's metric
    for bad in ("recall@5", "recal@20", "recall", "recall@x"):
        with pytest.raises(ValueError, match=rf"^eval\.valid_metric: expected <metric>@<k> .*got '{bad}'$"):
            load_spec(overrides=[f"eval.valid_metric={bad}"])
    # ks from the file and the metric from the command line are checked together
    cfg = tmp_path / "run.yaml"
    cfg.write_text("eval:\n  ks: [5, 10]\n")
    assert load_spec(yaml_path=cfg, overrides=["eval.valid_metric=Hit@5"]).eval.valid_metric == "hit@5"
    with pytest.raises(ValueError, match=r"eval\.valid_metric: .*eval\.ks \[5, 10\], got 'recall@20'"):
        load_spec(yaml_path=cfg)  # the default recall@20 needs 20 in ks


def test_method_must_be_registered():
    with pytest.raises(ValueError, match=r"^method: expected a registered method \(.*bm3.*\), got 'bm4'$"):
        load_spec(method="bm4")
    assert load_spec(method="BPR").method == "BPR"  # the registry is case-insensitive


def test_yaml_errors_name_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ValueError, match=r"run\.yaml: train\.batch_size: expected an integer >= 1, got 0$"):
        load_spec(yaml_path=cfg)
    # an override replaces the file's value, and the file is not blamed for the override
    with pytest.raises(ValueError, match=r"^train\.batch_size: expected an integer >= 1, got -1$"):
        load_spec(yaml_path=cfg, overrides=["train.batch_size=-1"])
    cfg.write_text("train: [1\n")
    with pytest.raises(ValueError, match=r"run\.yaml: not valid YAML") as info:
        load_spec(yaml_path=cfg)
    assert "\n" not in str(info.value)


def test_spec_is_mutable_and_round_trips_through_json_and_pickle():
    spec = load_spec("lightgcn", overrides=["model.n_layers=2", "eval.ks=[5,10]", "eval.valid_metric=recall@10"])
    spec.train.epochs = 3
    spec.model["dropout"] = 0.1
    back = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.train.epochs == 3 and back.model == {"n_layers": 2, "dropout": 0.1}
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert RunSpec().to_dict() == spec_from_dict({}).to_dict()


@dataclass(frozen=True)
class _Options:  # annotations are strings here (from __future__ import annotations), as in models/
    size: int = 64
    weight: float = 0.1
    flag: bool = False
    name: str = "mean"
    cap: int | None = None
    dims: tuple[int, ...] = (1, 2)


def test_validate_options_converts_by_annotation():
    from raymmrec.config import validate_options

    cfg = validate_options(_Options, {"size": "32", "weight": "1e-4", "flag": "true", "name": 7, "cap": "null",
                                      "dims": [3, "4"]}, "model")
    assert cfg == _Options(size=32, weight=1e-4, flag=True, name="7", cap=None, dims=(3, 4))
    assert type(cfg.size) is int and type(cfg.weight) is float
    assert validate_options(_Options, {"weight": 1}, "model").weight == 1.0
    assert validate_options(_Options, None, "model") == _Options()


@pytest.mark.parametrize("options, message", [
    ({"size": 1.5}, "model.size: expected an integer, got 1.5"),
    ({"size": True}, "model.size: expected an integer, got True"),
    ({"weight": "abc"}, "model.weight: expected a number, got 'abc'"),
    ({"flag": 1}, "model.flag: expected true or false, got 1"),
    ({"cap": "x"}, "model.cap: expected an integer or null, got 'x'"),
    ({"dims": [1, "x"]}, "model.dims[1]: expected an integer, got 'x'"),
    ({"sise": 3, "size": 3}, "model: unknown option(s) ['sise']; valid options: "
                             "['cap', 'dims', 'flag', 'name', 'size', 'weight']"),
])
def test_validate_options_errors(options, message):
    from raymmrec.config import ConfigError, validate_options

    with pytest.raises(ConfigError) as info:
        validate_options(_Options, options, "model")
    assert str(info.value) == message


def test_validate_options_on_a_method_config():
    from raymmrec.config import validate_options
    from raymmrec.models.bm3 import BM3Config

    cfg = validate_options(BM3Config, {"reg_weight": "1e-4", "n_layers": "2"}, "model")
    assert cfg.reg_weight == pytest.approx(1e-4) and cfg.n_layers == 2 and cfg.dropout == BM3Config().dropout


@pytest.fixture
def lirdrec_at_1e4(monkeypatch):
    """LIRDRec with the authors' lr 1e-4 as its own training default: the shipped class has none (1e-4
    measured worse than 1e-3 on lfm2k, docs/methods/lirdrec.md), but it is the case of a method default
    that changes results, which CM3's patience (free between sessions) is not."""
    from raymmrec.registry import get_model

    assert get_model("lirdrec").train_defaults == {}
    monkeypatch.setattr(get_model("lirdrec"), "train_defaults", {"lr": 1e-4})


def test_methods_train_with_their_papers_settings_unless_overridden(tmp_path, lirdrec_at_1e4):
    # CM3 stops after the authors' 10 evaluations without improvement; LIRDRec (here) trains at lr 1e-4
    cm3, lird, bm3 = load_spec("cm3"), load_spec("lirdrec"), load_spec("bm3")
    assert (cm3.train.patience, cm3.train.lr) == (10, 1e-3)
    assert (lird.train.patience, lird.train.lr) == (20, 1e-4)
    assert (bm3.train.patience, bm3.train.lr) == (20, 1e-3)
    # explicit values win: on the command line, in YAML, and in a recorded (complete) config
    assert load_spec("cm3", overrides=["train.patience=20"]).train.patience == 20
    assert load_spec("lirdrec", overrides=["train.lr=1e-3"]).train.lr == 1e-3
    path = tmp_path / "run.yaml"
    path.write_text("train: {patience: 30, lr: 0.002}\n")
    assert load_spec("cm3", yaml_path=path).train.patience == 30
    assert load_spec("lirdrec", yaml_path=path).train.lr == 0.002
    # the resolved values are what a run records, and reading the record back keeps them
    assert spec_from_dict(cm3.to_dict()).train.patience == 10
    old = lird.to_dict()
    old["train"]["lr"] = 1e-3  # recorded before LIRDRec had its own default
    assert spec_from_dict(old).train.lr == 1e-3
    # a partial dict (a study or tune base) gets the method's defaults as well
    assert spec_from_dict({"method": "lirdrec", "train": {"epochs": 3}}).train.lr == 1e-4


def test_resuming_keeps_the_recorded_value_of_a_method_default(lirdrec_at_1e4):
    from raymmrec.config import adopt_recorded

    old = load_spec("lirdrec").to_dict()
    old["train"]["lr"], old["train"]["patience"] = 1e-3, 20
    assert adopt_recorded(load_spec("lirdrec"), old).train.lr == 1e-3  # filled from the method: the record wins
    assert adopt_recorded(load_spec("lirdrec", overrides=["train.lr=5e-4"]), old).train.lr == 5e-4  # explicit wins
    old_cm3 = load_spec("cm3").to_dict()
    old_cm3["train"]["patience"] = 20
    spec = load_spec("cm3")
    assert adopt_recorded(spec, old_cm3).train.patience == 20 and spec.train.patience == 10  # a copy
