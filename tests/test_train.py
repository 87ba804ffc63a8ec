"""Sampling, the loop, early stopping, checkpoints and exact resume, config and CLI."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from _tiny import tiny_data
from raymmrec.cli import main as cli_main
from raymmrec.config import RunSpec, load_spec
from raymmrec.files import load_tensors, save_tensors
from raymmrec.train.checkpoint import BEST, read_checkpoint, read_tensors
from raymmrec.train.loop import Callback
from raymmrec.train.run import run
from raymmrec.train.sampling import NegativeSampler, epoch_batches, epoch_generator

NegativeSampler = NegativeSampler.from_pairs  # noqa: F811 - the tests below build samplers from pairs


def test_negatives_avoid_training_items_and_unseen_items():
    users = torch.tensor([0, 0, 0, 1, 1, 2])
    items = torch.tensor([0, 1, 2, 2, 3, 1])
    s = NegativeSampler(n_items=6, train_users=users, train_items=items)  # items 4, 5 never trained
    q = torch.tensor([0, 1, 2] * 400)
    neg = s.sample(q, epoch_generator(0, 0))
    train = {(0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (2, 1)}
    assert all((int(u), int(i)) not in train for u, i in zip(q, neg))
    assert set(neg.tolist()) <= {0, 1, 2, 3}
    assert set(neg[q == 0].tolist()) == {3}  # the only trained item user 0 has not seen
    torch.testing.assert_close(neg, s.sample(q, epoch_generator(0, 0)))


def test_sharded_batches_union_is_the_global_batch():
    users, items = torch.arange(100), torch.arange(100) % 7
    sampler = NegativeSampler(7, users, items)
    full = list(epoch_batches(users, items, 16, epoch_generator(3, 1), sampler))
    parts = [list(epoch_batches(users, items, 16, epoch_generator(3, 1), sampler, r, 2)) for r in range(2)]
    assert len(full) == len(parts[0]) == len(parts[1]) == 7
    for b, p0, p1 in zip(full, *parts):
        assert sorted(b.users.tolist()) == sorted(p0.users.tolist() + p1.users.tolist())
        assert sorted(b.neg_items.tolist()) == sorted(p0.neg_items.tolist() + p1.neg_items.tolist())


def spec_for(tmp_path, method="lightgcn", **train) -> RunSpec:
    spec = load_spec(method=method, overrides=[f"output_dir={tmp_path}", "run_name=r", "eval.ks=[5,10]",
                                               "eval.valid_metric=recall@10", "train.batch_size=64",
                                               "train.lr=0.01"])
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


def test_training_beats_chance_and_writes_outputs(tmp_path):
    data = tiny_data()
    state = run(spec_for(tmp_path, epochs=15, patience=50), progress=False, data=data)
    # Users like half the items; random ranking puts ~5/12 of each user's 2 held-out items... in the top 10
    # of 18 candidates, so a trained model must get well above that and be perfect on most users.
    assert state.best_test["recall@10"] > 0.9
    folder = tmp_path / "r"
    results = json.loads((folder / "results.json").read_text())
    assert results["test"]["recall@10"] == pytest.approx(state.best_test["recall@10"])
    assert (folder / "best.pt").exists() and any((folder / "tb").iterdir())
    payload = read_checkpoint(folder)  # weights_only=True
    assert payload["state"]["epoch"] == 15 and "optimizer" in payload and payload["world_size"] == 1
    assert payload["config"]["method"] == "lightgcn" and payload["config"]["model"]["n_layers"] == 3


def test_early_stopping_follows_mmrec(tmp_path):
    """MMRec stops when evaluations without improvement *exceed* the patience (cur_step > max_step)."""
    spec = spec_for(tmp_path, epochs=100, patience=3)
    spec.train.lr = 0.0  # nothing improves after the first evaluation
    state = run(spec, progress=False, data=tiny_data())
    # evaluation 0 is the best; evaluations 1..4 do not improve; the 4th exceeds patience 3
    assert state.stopped_early and state.best_epoch == 0 and state.epoch == 5
    spec = spec_for(tmp_path / "e2", epochs=100, patience=2, eval_every=2)
    spec.train.lr = 0.0
    state = run(spec, progress=False, data=tiny_data())
    # patience counts evaluations, not epochs: evaluations at epochs 1, 3, 5, 7; stop after the 4th
    assert state.stopped_early and state.best_epoch == 1 and state.epoch == 8


class Kill(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer, state, logs) -> None:
        if state.epoch == self.at:
            raise KeyboardInterrupt("simulated kill")


class Recorder(Callback):
    """The epochs this process actually ran."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer, state, logs) -> None:
        self.epochs.append(int(logs["epoch"]))


@pytest.mark.parametrize("method", ["bm3", "lightgcn"])
def test_resume_after_kill_matches_uninterrupted(tmp_path, method, capsys):
    data = tiny_data()
    full = run(spec_for(tmp_path / "a", method, epochs=6, patience=50), progress=False, data=data)
    spec = spec_for(tmp_path / "b", method, epochs=6, patience=50, checkpoint_every=1)
    # The checkpoint callback runs before Kill, so epoch 3's checkpoint is on disk when it "dies".
    with pytest.raises(KeyboardInterrupt):
        run(spec, progress=False, data=data, extra_callbacks=[Kill(3)])
    assert read_checkpoint(tmp_path / "b" / "r")["state"]["epoch"] == 3
    capsys.readouterr()
    seen = Recorder()
    resumed = run(spec, progress=True, data=data, extra_callbacks=[seen])
    # Only a resume runs epochs 3..5 alone and says so; a restart from scratch would run 0..5.
    assert seen.epochs == [3, 4, 5]
    assert "resuming from" in capsys.readouterr().out
    assert resumed.best_test == full.best_test and resumed.best_epoch == full.best_epoch
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    a = read_checkpoint(tmp_path / "a" / "r")["model"]
    b = read_checkpoint(tmp_path / "b" / "r")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_reports_reach_the_caller_also_from_a_run_that_was_already_finished(tmp_path):
    """A Tune trial resumed from a final checkpoint (killed before results.json) trains no epoch: it
    still reports its recorded final state once, else Tune keeps the last result it saw."""
    from raymmrec.train.callbacks import ReportCallback

    spec = spec_for(tmp_path, "bpr", epochs=4, patience=50, checkpoint_every=2)
    first: list[dict] = []
    run(spec, progress=False, data=tiny_data(), extra_callbacks=[ReportCallback(first.append, every=2)])
    assert [m["epochs_run"] for m in first] == [2, 4]
    (tmp_path / "r" / "results.json").unlink()
    again: list[dict] = []
    state = run(spec, progress=False, data=tiny_data(), extra_callbacks=[ReportCallback(again.append, every=2)])
    assert state.resumes == [4] and len(again) == 1
    assert again[0]["epochs_run"] == 4 and again[0]["best_valid/recall@10"] == first[-1]["best_valid/recall@10"]


def test_default_checkpoint_cadence_is_time_based_and_ends_with_the_last_epoch(tmp_path):
    class Look(Callback):  # runs after the checkpoint callback: what is on disk after each epoch
        def __init__(self) -> None:
            self.seen: list[int | None] = []

        def on_epoch_end(self, trainer, state, logs) -> None:
            path = tmp_path / "r" / "ckpt" / "latest.pt"
            self.seen.append(load_tensors(path)["state"]["epoch"] if path.exists() else None)

    look = Look()
    run(spec_for(tmp_path, "bpr", epochs=4, patience=50), progress=False, data=tiny_data(), extra_callbacks=[look])
    assert look.seen == [None, None, None, 4]  # a tiny run is shorter than the 60 s cadence


def test_resume_ignores_device_resident_rng_state(tmp_path):
    """A checkpoint read onto a GPU used to put its RNG state there, and set_rng_state refused it.

    Here the saved RNG state sits on a non-CPU device (meta, as a CUDA one would on a CPU box);
    the resume must not touch it: the loop reseeds from (seed, epoch) every epoch.
    """
    data = tiny_data()
    spec = spec_for(tmp_path, "bpr", epochs=4, patience=50, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        run(spec, progress=False, data=data, extra_callbacks=[Kill(2)])
    path = tmp_path / "r" / "ckpt" / "latest.pt"
    payload = load_tensors(path)
    payload["rng"] = {"torch": torch.get_rng_state().to("meta")}
    save_tensors(path, payload)
    seen = Recorder()
    state = run(spec, progress=False, data=data, extra_callbacks=[seen])
    assert seen.epochs == [2, 3] and state.epoch == 4


def test_resume_refuses_other_settings_and_formats(tmp_path):
    data = tiny_data()
    run(spec_for(tmp_path, "bpr", epochs=1), progress=False, data=data)
    with pytest.raises(ValueError, match=r"train.lr 0.01 -> 0.02"):
        run(spec_for(tmp_path, "bpr", epochs=2, lr=0.02), progress=False, data=data)
    with pytest.raises(ValueError, match=r"model.reg_weight"):
        other = spec_for(tmp_path, "bpr", epochs=2)
        other.model = {"reg_weight": 0.5}
        run(other, progress=False, data=data)
    # a longer epoch cap or patience continues the same experiment
    seen = Recorder()
    run(spec_for(tmp_path, "bpr", epochs=2, patience=9), progress=False, data=data, extra_callbacks=[seen])
    assert seen.epochs == [1]
    path = tmp_path / "r" / "ckpt" / "latest.pt"
    payload = load_tensors(path)
    payload["format_version"] = 1
    save_tensors(path, payload)
    with pytest.raises(ValueError, match="checkpoint format 1"):
        run(spec_for(tmp_path, "bpr", epochs=3), progress=False, data=data)


def test_resume_refuses_a_different_experiment(tmp_path):
    run(spec_for(tmp_path, "bpr", epochs=1), progress=False, data=tiny_data())
    with pytest.raises(ValueError, match="method 'bpr' -> 'lightgcn'"):
        run(spec_for(tmp_path, "lightgcn", epochs=1), progress=False, data=tiny_data())


class Evil:
    """Any user class: loading it would mean unpickling arbitrary code."""


def test_checkpoint_is_atomic_and_pickle_free(tmp_path):
    path = tmp_path / "c.pt"
    save_tensors(path, {"w": torch.ones(2), "n": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_tensors(path)["n"] == 3
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt.*weights_only"):
        load_tensors(tmp_path / "evil.pt")


def test_checkpoint_metadata_that_would_run_code_is_refused(tmp_path):
    """The tensors' index (DCP's .metadata, a pickle) is read with only DCP's metadata classes allowed."""
    spec = spec_for(tmp_path, "bpr", epochs=1)
    run(spec, progress=False, data=tiny_data())
    (index,) = (tmp_path / "r" / "ckpt").glob("epoch-*/.metadata")
    index.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match=r"\.metadata could not be loaded safely: .*Evil is not allowed"):
        run(spec_for(tmp_path, "bpr", epochs=2), progress=False, data=tiny_data())


def test_config_rejects_typos_and_types(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'train.lrr'"):
        load_spec(overrides=["train.lrr=0.1"])
    with pytest.raises(ValueError, match="train.epochs: expected an integer"):
        load_spec(overrides=["train.epochs=1.5"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 7\nmodel:\n  dropout: 0.3\ndatta: {}\n")
    with pytest.raises(ValueError, match="c.yaml: unknown config section"):
        load_spec(yaml_path=cfg)
    cfg.write_text("train:\n  epochs: 7\nmodel:\n  dropout: 0.3\n")
    spec = load_spec("bm3", cfg, ["train.epochs=9", "data.modalities=[text]"])
    assert spec.train.epochs == 9 and spec.model == {"dropout": 0.3} and spec.data.modalities == ["text"]


def test_cli_trains_and_prints_table(tmp_path, capsys):
    code = cli_main(["train", "--method", "bpr", "--data", "synthetic:tiny", "--epochs", "2",
                     "--output-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    assert (tmp_path / "bpr-synthetic-tiny-seed999" / "results.json").exists()
    out = capsys.readouterr().out
    assert "best epoch" in out and "recall@20" in out and "test" in out
    assert cli_main(["train", "--method", "bpr", "train.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_early_stopping_counts_every_evaluation_below_the_best():
    """The counter knows only scores: no epoch is special (a resumed run used to treat the replay of a
    newer best.pt's epoch as the best again, after counting every replayed evaluation before it)."""
    from raymmrec.train.loop import TrainState, update_best

    state = TrainState(epoch=10, best_score=0.5, best_epoch=9, best_valid={"recall@20": 0.5})
    update_best(state, 10, {"valid": {"recall@20": 0.4}, "test": {}}, "recall@20", 1)
    assert (state.best_epoch, state.bad_evals, state.stopped_early) == (9, 1, False)
    update_best(state, 11, {"valid": {"recall@20": 0.6}, "test": {"recall@20": 0.59}}, "recall@20", 1)
    assert (state.best_epoch, state.bad_evals, state.best_test) == (11, 0, {"recall@20": 0.59})
    update_best(state, 12, {"valid": {"recall@20": 0.6}, "test": {}}, "recall@20", 1)  # a tie is no improvement
    update_best(state, 13, {"valid": {"recall@20": 0.1}, "test": {}}, "recall@20", 1)
    assert (state.best_epoch, state.bad_evals, state.stopped_early) == (11, 2, True)
    # a lower score is no improvement even at the best epoch's number (the old resume's special case)
    state = TrainState(epoch=11, best_score=0.7, best_epoch=11, best_valid={"recall@20": 0.7})
    update_best(state, 11, {"valid": {"recall@20": 0.69}, "test": {"recall@20": 0.59}}, "recall@20", 1)
    assert (state.best_score, state.bad_evals, state.best_valid) == (0.7, 1, {"recall@20": 0.7})


class Clock(Callback):
    """The epoch being run (for a fake evaluation): the resumed epoch at start, the next one after each."""

    def __init__(self) -> None:
        self.epoch = 0

    def on_fit_start(self, trainer, state) -> None:
        self.epoch = state.epoch

    def on_epoch_end(self, trainer, state, logs) -> None:
        self.epoch = state.epoch


def fake_metric(monkeypatch, clock: Clock) -> None:
    """Validation improves every epoch up to epoch 20, then falls: with patience 3 the run stops after
    epoch 24, best 20. The model still trains (best.pt holds real weights)."""
    def local_evaluate(evaluators, fixed=None):
        def evaluate(model):
            e = clock.epoch
            score = (e + 1) / 100 if e <= 20 else 0.21 - (e - 20) / 1000
            return {"valid": {"recall@10": score}, "test": {"recall@10": score / 2, "ndcg@10": score / 3}}
        return evaluate

    monkeypatch.setattr("raymmrec.train.run.local_evaluate", local_evaluate)


def fake_metric_spec(folder):
    return spec_for(folder, "bpr", epochs=40, patience=3, checkpoint_every=10)


@pytest.fixture(scope="module")
def uninterrupted_fake_metric_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    clock = Clock()
    with pytest.MonkeyPatch.context() as mp:
        fake_metric(mp, clock)
        state = run(fake_metric_spec(folder), progress=False, data=tiny_data(), extra_callbacks=[clock])
    return state, folder / "r"


@pytest.mark.parametrize("kill_at", [5, 13, 17, 23], ids=["before-first-checkpoint", "between-checkpoints",
                                                       "new-best-after-checkpoint", "plateau-after-new-best"])
def test_killed_run_resumes_to_the_uninterrupted_end(tmp_path, monkeypatch, kill_at, uninterrupted_fake_metric_run):
    """Killed anywhere, a rerun ends as the uninterrupted run: epochs run, best epoch, metrics, best.pt.

    Checkpoints every 10 epochs, patience 3. Killed after epoch 16 (kill_at=17), best.pt (epoch 16)
    is 6 evaluations past the checkpoint (epoch 10): a resume that took over its score counted the
    replayed epochs 10, 11, 12, 13 as no improvement and stopped at epoch 13 reporting best epoch 16.
    """
    full, full_dir = uninterrupted_fake_metric_run
    assert (full.epoch, full.best_epoch, full.stopped_early) == (25, 20, True)
    data = tiny_data()
    clock = Clock()
    fake_metric(monkeypatch, clock)

    def spec(folder):
        return fake_metric_spec(tmp_path / folder)

    with pytest.raises(KeyboardInterrupt):
        run(spec("b"), progress=False, data=data, extra_callbacks=[clock, Kill(kill_at)])
    best_pt = tmp_path / "b" / "r" / "best.pt"
    assert torch.load(best_pt, weights_only=True)["epoch"] == min(kill_at - 1, 20)
    seen = Recorder()
    resumed = run(spec("b"), progress=False, data=data, extra_callbacks=[clock, seen])
    start = kill_at // 10 * 10  # the last checkpoint (none before epoch 10: a fresh start)
    assert seen.epochs == list(range(start, 25)) and resumed.resumes == ([start] if start else [])
    assert (resumed.epoch, resumed.best_epoch, resumed.stopped_early) == (full.epoch, full.best_epoch, True)
    assert resumed.best_valid == full.best_valid and resumed.best_test == full.best_test
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    results = [json.loads((d / "results.json").read_text()) for d in (full_dir, tmp_path / "b" / "r")]
    for r in results:
        r.pop("resumed_at")
    assert results[0] == results[1]
    a, b = (torch.load(d / "best.pt", weights_only=True) for d in (full_dir, tmp_path / "b" / "r"))
    assert a["epoch"] == b["epoch"] == 20
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_an_older_raymmrecs_ray_checkpoints_are_refused_in_one_line(tmp_path):
    """Ray runs of format 2 kept their checkpoints in Ray's checkpoint_*/ folders: refused, not restarted."""
    old = tmp_path / "r" / "checkpoint_2026-01-01_00-00-00.000000"
    old.mkdir(parents=True)
    save_tensors(old / "latest.pt", {"format_version": 2})
    with pytest.raises(ValueError, match=r"holds checkpoints of an older raymmrec \(checkpoint_\*/, format 2\)"):
        run(spec_for(tmp_path, "bpr", epochs=1), progress=False, data=tiny_data())


def test_resume_puts_best_pt_back_to_the_checkpoints_best(tmp_path):
    """A best.pt newer than the checkpoint (here planted, one the replay never reaches, as a replay that
    is not bit-exact might) neither steers the resumed run nor outlives it: the checkpoint's best
    weights replace it, so best.pt and results.json describe one model; lr=0 keeps epoch 0 the best."""
    data = tiny_data()
    spec = spec_for(tmp_path, "bpr", epochs=7, patience=50, checkpoint_every=3)
    spec.train.lr = 0.0  # nothing improves after epoch 0
    with pytest.raises(KeyboardInterrupt):
        run(spec, progress=False, data=data, extra_callbacks=[Kill(4)])
    best = tmp_path / "r" / "best.pt"
    payload = torch.load(best, weights_only=True)
    real = {k: v.clone() for k, v in payload["model"].items()}
    payload.update(epoch=3, score=2.0, model={k: torch.zeros_like(v) for k, v in real.items()})
    torch.save(payload, best)  # as if epoch 3 had improved before the process died
    checkpoint = read_checkpoint(tmp_path / "r")
    assert checkpoint["state"]["best_epoch"] == 0 and checkpoint["best"]
    assert set(read_tensors(tmp_path / "r", BEST)) == set(real)  # the best weights, beside the current ones
    state = run(spec, progress=False, data=data)
    assert (state.best_epoch, state.epoch) == (0, 7)
    after = torch.load(best, weights_only=True)
    assert after["epoch"] == 0 and after["score"] == state.best_score
    for k, v in real.items():
        torch.testing.assert_close(after["model"][k], v, rtol=0, atol=0)


def test_the_run_prints_the_dataset_summary_with_its_features(tmp_path, capsys):
    from raymmrec.config import load_spec

    spec = load_spec("bpr", overrides=[f"output_dir={tmp_path}", "run_name=r", "data.source=synthetic:tiny",
                                       "train.epochs=1"])
    run(spec, progress=True)  # loads the data itself, so it releases the features after building
    first = capsys.readouterr().out.splitlines()[0]
    assert "features: text 8-d, image 8-d" in first, first


def test_one_process_stops_at_the_first_non_finite_step():
    from raymmrec.models.base import Batch, LossOutput
    from raymmrec.train.loop import Trainer, TrainingDiverged

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def forward(self, batch: Batch) -> torch.Tensor:
            return self.lin(batch.users.float().unsqueeze(1))

        def on_epoch_start(self, epoch, ctx) -> None: ...

        def epoch_logs(self) -> dict[str, float]:
            return {}

    steps = []

    def objective(output, batch, ctx):
        steps.append(len(steps))
        return LossOutput(output.sum() * (float("inf") if len(steps) == 3 else 1.0), {})

    net = Net()
    trainer = Trainer(net, objective, torch.optim.SGD(net.parameters(), lr=0.1),
                      lambda epoch: [Batch(torch.arange(3), torch.arange(3)) for _ in range(5)], lambda m: {},
                      epochs=1, patience=1, seed=0)
    with pytest.raises(TrainingDiverged, match="loss became NaN or infinite at epoch 0, batch 2; "):
        trainer.run_epoch(0)
    assert len(steps) == 3  # stopped at the step, before the optimizer applied it


def test_a_run_recorded_before_a_model_option_existed_still_resumes():
    """A model option added after a run was recorded counts at its default (LIRDRec's ablation switches
    came after its first runs); a real change of a model option is still refused."""
    from raymmrec.config import load_spec
    from raymmrec.train.build import check_same_run, resolved_config

    config = resolved_config(load_spec(method="lirdrec", overrides=["data.source=synthetic:tiny"]))
    assert config["model"]["dct"] is True and config["model"]["weight_copying"] is True
    saved = {**config, "model": {k: v for k, v in config["model"].items() if k not in ("dct", "weight_copying")}}
    check_same_run(saved, config, "ckpt")  # config.json of a run from before the options existed
    changed = {**config, "model": {**config["model"], "dct": False}}
    with pytest.raises(ValueError, match="model.dct False -> True"):
        check_same_run(changed, config, "ckpt")


def test_a_long_epoch_reports_its_steps_and_evaluation_in_a_log():
    import io

    from raymmrec.config import load_spec
    from raymmrec.train.build import build, local_evaluate, make_trainer
    from raymmrec.train.callbacks import ProgressCallback

    spec = load_spec("bpr", overrides=["data.source=synthetic:tiny", "train.epochs=1", "train.batch_size=64"])
    p = build(spec)
    log = io.StringIO()  # not a terminal: lines, not bars; every_s=0 reports every step
    trainer = make_trainer(p, local_evaluate(p.evaluators), [ProgressCallback(stream=log, every_s=0.0)])
    trainer.fit()
    lines = log.getvalue().splitlines()
    steps = -(-len(p.data.train) // 64)
    assert trainer.steps_per_epoch == steps > 2
    assert [ln.split(",")[0] for ln in lines[:steps - 1]] == [f"epoch 0: step {k}/{steps}" for k in range(2, steps + 1)]
    assert "s/step, about 0 s left in the epoch" in lines[steps - 2]
    assert lines[steps - 1] == "epoch 0: evaluating" and lines[steps].startswith("epoch 0: loss=")
