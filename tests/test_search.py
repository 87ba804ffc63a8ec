"""Search spaces next to each method (no Ray): the authors' grids, enumeration, validation, tables."""

from __future__ import annotations

import pytest

from raymmrec.config import ConfigError, load_spec
from raymmrec.registry import model_names
from raymmrec.search import (Choice, Grid, LogUniform, apply_point, check_space, grid_points, grid_size,
                             search_space)

# MMRec's configs/model grids (enoche/MMRec src/configs/model/<Model>.yaml)
PAPER_GRIDS = {
    "bm3": {"model.n_layers": (1, 2), "model.dropout": (0.3, 0.5), "model.reg_weight": (0.1, 0.01)},
    "bpr": {"model.reg_weight": (2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)},
    "vbpr": {"model.reg_weight": (2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)},
    "lightgcn": {"model.n_layers": (1, 2, 3, 4), "model.reg_weight": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)},
    # enoche/LIRDRec src/configs/model/LIRDRec.yaml, weight_decay left out (the published trainer ignores it): 54 distinct runs
    "lirdrec": {"model.n_ui_layers": (2, 3, 4), "model.mm_image_weight": (0.1, 0.2),
                "model.reg_weight": (1e-2, 1e-3, 1e-4), "train.lr": (1e-4,), "model.decay_weight": (0.9, 0.95, 0.99)},
}


@pytest.mark.parametrize("method", sorted(PAPER_GRIDS))
def test_paper_grid_is_the_authors(method):
    space = search_space(method, "paper")
    assert {k: d.values for k, d in space.items()} == PAPER_GRIDS[method]
    points = grid_points(space)
    assert len(points) == grid_size(space) == len({tuple(sorted(p.items())) for p in points})


@pytest.mark.parametrize("method", model_names())
@pytest.mark.parametrize("kind", ["paper", "wide"])
def test_every_registered_space_is_valid_for_its_method(method, kind):
    check_space(load_spec(method=method), search_space(method, kind))


def test_lirdrec_paper_grid_has_54_points():
    assert grid_size(search_space("lirdrec", "paper")) == 54


def test_wide_spaces_sample_rather_than_enumerate():
    space = search_space("bm3", "wide")
    assert not all(isinstance(d, Grid) for d in space.values())
    with pytest.raises(ConfigError, match="only a space of Grid"):
        grid_points(space)


def test_apply_point_sets_model_and_train_options():
    spec = load_spec(method="bm3")
    s = apply_point(spec, {"model.dropout": 0.3, "train.lr": "1e-4"})
    assert s.model["dropout"] == 0.3 and s.train.lr == pytest.approx(1e-4)
    assert spec.model.get("dropout") is None  # the base spec is untouched


def test_check_space_refuses_unknown_options_and_bad_values():
    spec = load_spec(method="bm3")
    with pytest.raises(ConfigError, match="unknown option"):
        check_space(spec, {"model.n_layer": Grid((1, 2))})
    with pytest.raises(ConfigError, match="train.lr"):
        check_space(spec, {"train.lr": LogUniform(-1.0, 1e-2)})
    with pytest.raises(ConfigError, match="section"):
        check_space(spec, {"lr": Choice((1e-3,))})


def test_unknown_kind_is_one_line():
    with pytest.raises(ConfigError, match="expected one of paper, wide"):
        search_space("bm3", "huge")


def test_comparison_table_marks_the_best_per_column():
    from raymmrec.ray.reproduce import comparison

    res = {"a": {"bpr": {"recall@10": 0.1, "recall@20": 0.3, "ndcg@10": 0.05, "ndcg@20": 0.2},
                 "bm3": {"recall@10": 0.2, "recall@20": 0.25, "ndcg@10": 0.06, "ndcg@20": 0.1}}}
    md = comparison(res, "md")
    assert "| bpr | 0.1000 | **0.3000** | 0.0500 | **0.2000** |" in md
    assert "| bm3 | **0.2000** | 0.2500 | **0.0600** | 0.1000 |" in md
    tex = comparison(res, "tex")
    assert "\\textbf{0.3000}" in tex and "\\textbf{0.2000}" in tex and tex.count("\\textbf") == 4
    csv = comparison(res, "csv").splitlines()
    assert csv[1].startswith("a,bpr,0.100000,0.300000") and csv[1].endswith(",recall@20 ndcg@20,validation")


def test_plots_are_png():
    from raymmrec.plots import plot_curves, plot_metric_vs_params

    space = {"model.reg_weight": Grid((1e-1, 1e-4)), "model.n_layers": Grid((1, 2))}
    rows = [{"trial": f"t{i}", "dir": f"d{i}", "reg_weight": r, "n_layers": n, "valid recall@20": 0.1 * i, "test recall@20": 0.1}
            for i, (r, n) in enumerate([(1e-1, 1), (1e-4, 2)])]
    png = plot_metric_vs_params(rows, space, "recall@20", "x")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    curves = {"d0": [[0, 0.1], [1, 0.2]], "d1": [[0, 0.1]]}
    assert plot_curves(curves, rows, "recall@20", "x")[:4] == b"\x89PNG"
    assert plot_curves({}, rows, "recall@20", "x") is None


def test_comparison_table_skips_missing_and_nan_values():
    from raymmrec.ray.reproduce import comparison

    nan = float("nan")
    res = {"a": {"bpr": {"recall@10": nan, "recall@20": 0.3}, "bm3": {"recall@10": 0.2, "recall@20": 0.0}}}
    md = comparison(res, "md")
    assert "| bpr | - | **0.3000** | - | - |" in md
    assert "| bm3 | **0.2000** | 0.0000 | - | - |" in md


def test_an_errored_trial_never_wins_and_selection_is_recorded(tmp_path):
    import csv

    from raymmrec.ray.tune import SweepArgs, _write_outputs

    spec = load_spec(method="bpr")
    space = {"model.reg_weight": Grid((0.1, 0.01, 0.001))}

    def row(i: int, reg: float, valid: float | None, status: str) -> dict:
        return {"trial": f"reg_weight={reg}", "dir": f"t{i}", "reg_weight": reg, "status": status,
                "valid recall@20": valid, "valid ndcg@20": valid, "test recall@20": valid, "test ndcg@20": valid}

    rows = [row(0, 0.1, 0.9, "error"), row(1, 0.01, 0.3, "finished"), row(2, 0.001, 0.3, "stopped (ASHA)")]
    res = _write_outputs(str(tmp_path), spec, space, rows, {}, SweepArgs(), "best_valid/recall@20", "recall@20",
                         12.0, "fifo")
    assert res.best["dir"] == "t1"  # the errored trial is ranked first but cannot win; the tie goes to t1
    with open(tmp_path / "trials.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["dir"] for r in table] == ["t0", "t1", "t2"] and {r["selected_by"] for r in table} == {"valid recall@20"}
    assert load_spec(yaml_path=tmp_path / "best_config.yaml").model["reg_weight"] == 0.01
