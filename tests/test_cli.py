"""The command line reports user errors as one line ``error: ...`` (exit 2), tracebacks only with --verbose."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from raymmrec.args import add_run_arguments, spec_from_args


def raymmrec(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raymmrec", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture
def malformed_folder(tmp_path):
    """An MMRec folder whose .inter file lacks the x_label column."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("userID\titemID\trating\ttimestamp\n0\t0\t1\t1\n1\t1\t1\t2\n")
    np.save(folder / "text_feat.npy", np.zeros((2, 4), dtype=np.float32))
    return folder


@pytest.mark.slow
def test_malformed_dataset_is_one_error_line(tmp_path, malformed_folder):
    proc = raymmrec("train", "--method", "bpr", "--data", str(malformed_folder), "--output-dir", str(tmp_path / "runs"),
                    cwd=tmp_path)
    assert_one_line_error(proc, "bad.inter", "x_label")
    verbose = raymmrec("train", "--method", "bpr", "--data", str(malformed_folder), "--verbose",
                       "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_bad_option_missing_folder_and_unknown_method_are_one_error_line(tmp_path):
    line = assert_one_line_error(raymmrec("train", "--method", "bpr", "train.batch_size=0", cwd=tmp_path))
    assert line == "error: train.batch_size: expected an integer >= 1, got 0"
    assert_one_line_error(raymmrec("train", "--method", "bpr", "--data", str(tmp_path / "no-such-folder"),
                                   cwd=tmp_path), "no-such-folder")
    assert_one_line_error(raymmrec("train", "--method", "bm4", cwd=tmp_path), "method", "'bm4'")
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_cli_main_returns_2_for_a_bad_option(capsys):
    from raymmrec.cli import main

    assert main(["train", "--method", "bpr", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: train.batch_size: expected an integer >= 1, got 0\n"


def test_ray_worker_options_without_num_workers_are_one_error_line(capsys, tmp_path):
    """`raymmrec train` without --num-workers runs in one process, where the workers' options mean nothing."""
    from raymmrec.cli import main

    argv = ["train", "--method", "bpr", "--data", "synthetic:tiny", "--output-dir", str(tmp_path)]
    assert main([*argv, "--cpus-per-worker", "1", "--address", "127.0.0.1:6379"]) == 2
    assert capsys.readouterr().err == ("error: --address, --cpus-per-worker: options of Ray workers; add --num-workers N "
                                       "to train on Ray (without it the run is one process)\n")
    assert main([*argv, "--wait-for-resources"]) == 2
    assert capsys.readouterr().err.startswith("error: --wait-for-resources: an option of Ray workers; ")
    assert not list(tmp_path.iterdir())  # nothing ran


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_run_arguments(p, default_method="bpr")
    return p.parse_args(argv)


def test_run_arguments_keep_string_values_and_accept_verbose():
    args = parse(["--run-name", "2024-01-01", "--output-dir", "010", "--verbose", "train.lr=1e-3"])
    assert args.verbose
    spec = spec_from_args(args)
    assert spec.run_name == "2024-01-01" and spec.resolved_run_name == "2024-01-01"
    assert spec.output_dir == "010" and spec.train.lr == pytest.approx(1e-3)
    json.dumps(spec.to_dict())
    assert not parse([]).verbose


def raiser(exc: BaseException):
    def fn() -> int:
        raise exc
    return fn


class StorageProblem(Exception):
    pass


def user_error(message: str) -> Exception:
    from raymmrec.errors import UserError

    class BucketGone(UserError):  # other layers subclass UserError
        pass

    return BucketGone(message)


@pytest.mark.parametrize("make, line", [
    (lambda: ValueError("train.lr: expected a number > 0, got 0"), "error: train.lr: expected a number > 0, got 0"),
    (lambda: KeyError("unknown method 'bm4'; registered: bm3"), "error: unknown method 'bm4'; registered: bm3"),
    (lambda: FloatingPointError("loss is NaN at epoch 3"), "error: loss is NaN at epoch 3"),
    (lambda: FileNotFoundError("config file x.yaml does not exist"), "error: config file x.yaml does not exist"),
    (lambda: user_error("bucket s3://b is gone\nretry later"), "error: bucket s3://b is gone retry later"),
])
def test_run_main_reports_expected_errors_on_one_line(capsys, make, line):
    from raymmrec.errors import run_main

    assert run_main(raiser(make()), verbose=False) == 2
    assert capsys.readouterr().err == line + "\n"
    assert run_main(raiser(make()), verbose=True) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith(line + "\n")


def test_run_main_interrupt_exit_codes_and_bugs(capsys):
    from raymmrec.errors import run_main

    assert run_main(raiser(KeyboardInterrupt()), verbose=False) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert run_main(lambda: None) == 0 and run_main(lambda: 3) == 3
    with pytest.raises(StorageProblem):  # not a user error: a bug keeps its traceback
        run_main(raiser(StorageProblem("boom")))


@pytest.mark.parametrize("device, gpus, cluster_gpus, expect", [
    ("auto", None, 0, ("cpu", 0.0)), ("auto", None, 2, ("cuda", 1.0)), ("auto", 0.5, 2, ("cuda", 0.5)),
    ("cpu", None, 2, ("cpu", 0.0)), ("cuda", 0.25, 1, ("cuda", 0.25)), ("cuda:1", None, 1, ("cuda", 1.0)),
    ("cuda", None, 0, "--device cuda: the Ray cluster has no GPU (use --device cpu or auto)"),
    ("cpu", 0.5, 2, "--gpus-per-trial 0.5: each trial runs on the CPU here (--device cpu)"),
    ("auto", 0.5, 0, "--gpus-per-trial 0.5: each trial runs on the CPU here (the cluster has no GPU)"),
    ("cuda", 2.0, 4, "--gpus-per-trial: expected a share of one GPU in (0, 1], got 2"),
    ("tpu", None, 0, "--device: expected auto, cpu or cuda on Ray, got 'tpu'"),
])
def test_every_ray_command_asks_for_its_device_as_train_does(device, gpus, cluster_gpus, expect):
    """``--device`` (as ``raymmrec train`` takes it) picks where trials, replicas, requests and actors
    run; ``--gpus-per-<unit>`` only shares a GPU; a contradiction is one line naming the option."""
    from raymmrec.config import ConfigError
    from raymmrec.ray.devices import device_and_gpus

    if isinstance(expect, str):
        with pytest.raises(ConfigError) as e:
            device_and_gpus(device, gpus, cluster_gpus, "trial")
        assert str(e.value) == expect
    else:
        assert device_and_gpus(device, gpus, cluster_gpus, "trial") == expect


def test_tune_takes_the_run_options_of_train(capsys):
    """One way to say where runs go and on what device: ``--output-dir`` and ``--device``, as ``train``."""
    from raymmrec.ray.tune import tune_main

    with pytest.raises(SystemExit):
        tune_main(["--method", "bpr", "--storage-path", "/tmp/x"])
    assert "unrecognized arguments: --storage-path" in capsys.readouterr().err
