"""Using a trained run: load_trained, `raymmrec recommend` and `raymmrec evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from raymmrec.cli import main as cli_main
from raymmrec.config import load_spec
from raymmrec.data import load_dataset
from raymmrec.train.trained import load_trained
from raymmrec.train.run import run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    spec = load_spec("lightgcn", overrides=[f"output_dir={out}", "run_name=r", "data.source=synthetic:tiny",
                                            "train.epochs=6", "train.lr=0.01", "train.batch_size=64"])
    state = run(spec, progress=False)
    return out / "r", state


def parse(out: str) -> dict[int, list[tuple[int, float]]]:
    recs: dict[int, list[tuple[int, float]]] = {}
    for line in out.splitlines():
        if line and line[0].isdigit():
            u, _, i, s = line.split("\t")[:4]
            recs.setdefault(int(u), []).append((int(i), float(s)))
    return recs


def test_recommend_excludes_training_items_and_ranks_by_score(trained_run, capsys):
    folder, _ = trained_run
    assert cli_main(["recommend", "--run", str(folder), "--users", "0,7", "--k", "5"]) == 0
    recs = parse(capsys.readouterr().out)
    data = load_dataset("synthetic:tiny")
    assert set(recs) == {0, 7}
    for u, rows in recs.items():
        seen = set(data.train.items[data.train.users == u].tolist())
        items = [i for i, _ in rows]
        assert len(items) == 5 and not seen & set(items), (u, seen & set(items))
        scores = [s for _, s in rows]
        assert scores == sorted(scores, reverse=True)
    trained = load_trained(folder, device="cpu")
    top = trained.model.scorer()(torch.tensor([0]))[0]
    top[torch.as_tensor(data.train.items[data.train.users == 0])] = float("-inf")
    assert [i for i, _ in recs[0]] == top.topk(5).indices.tolist()


def test_evaluate_reproduces_the_reported_test_metrics(trained_run, capsys):
    folder, state = trained_run
    assert cli_main(["evaluate", "--run", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    test = dict(zip(header[1:], map(float, lines[3].split()[1:])))
    reported = json.loads((folder / "results.json").read_text())["test"]
    assert test["recall@20"] == pytest.approx(reported["recall@20"], abs=1e-4)
    assert test["ndcg@10"] == pytest.approx(state.best_test["ndcg@10"], abs=1e-4)


def test_bad_users_and_missing_runs_are_one_line_errors(trained_run, tmp_path, capsys):
    folder, _ = trained_run
    assert cli_main(["recommend", "--run", str(folder), "--users", "0,99999"]) == 2
    assert cli_main(["recommend", "--run", str(tmp_path / "nope"), "--users", "0"]) == 2
    err = capsys.readouterr().err
    assert "--users: expected ids in [0, 40)" in err and "is not a finished run folder" in err
    assert "Traceback" not in err


def test_recommend_prints_item_names_from_the_dataset(shared_data, tmp_path, capsys):
    spec = load_spec("bpr", overrides=[f"output_dir={tmp_path}", "run_name=r", f"data.source={shared_data / 'lfm2k'}",
                                        "train.epochs=1"])
    run(spec, progress=False)
    assert cli_main(["recommend", "--run", str(tmp_path / "r"), "--users", "3", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].endswith("\tname")
    assert all(len(line.split("\t")) == 5 and line.split("\t")[4] for line in out.splitlines()[2:])


def test_recommend_ranks_like_evaluation_with_ties_repeats_and_a_large_k(trained_run, monkeypatch, capsys):
    """Tied scores go to the lower item id (the evaluator's rule); a repeated user is masked in every
    copy; --k beyond a user's unseen items lists only those items, never a training item at -inf."""
    from raymmrec.recommend import top_k

    folder, _ = trained_run
    trained = load_trained(folder, device="cpu")
    data = trained.data
    monkeypatch.setattr(trained.model, "scorer", lambda: lambda u: torch.zeros(len(u), data.n_items))
    users = torch.tensor([0, 7, 0])
    items, scores = top_k(trained, users, k=1000)
    for row, srow, u in zip(items.tolist(), scores.tolist(), users.tolist()):
        unseen = sorted(set(range(data.n_items)) - set(data.train.items[data.train.users == u].tolist()))
        assert [i for i in row if i >= 0] == unseen  # all ties: by item id, training items left out
        assert all(s == 0.0 for i, s in zip(row, srow) if i >= 0)
    assert items[0].tolist() == items[2].tolist()  # the second copy of user 0 is masked too

    monkeypatch.setattr("raymmrec.train.trained.load_trained", lambda *a, **k: trained)
    assert cli_main(["recommend", "--run", str(folder), "--users", "0,0", "--k", "1000"]) == 0
    captured = capsys.readouterr()
    rows = parse(captured.out)
    unseen0 = data.n_items - len(set(data.train.items[data.train.users == 0].tolist()))
    assert list(rows) == [0] and len(rows[0]) == unseen0 and all(s > float("-inf") for _, s in rows[0])
    assert f"user 0 has only {unseen0} items it has not seen" in captured.err


def test_recommend_into_a_closed_pipe_exits_quietly(trained_run):
    folder, _ = trained_run
    proc = subprocess.Popen([sys.executable, "-m", "raymmrec", "recommend", "--run", str(folder), "--users", "0,7",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`): every write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err
