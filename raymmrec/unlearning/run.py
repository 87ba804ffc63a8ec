"""One unlearning request against a trained run, in this process: a new run folder with the proof.

``unlearn(run, request)`` reads the trained run (a folder: plain, relative or ``file://`` path, or a URL
such as ``s3://``; never altered), applies the
request to its data, rebuilds the model over the retain data (:mod:`raymmrec.data.forget`), loads the
trained weights, runs MMRecUn (:mod:`raymmrec.unlearning.mmrecun`), measures original, unlearned and
(when asked) Gold models (:mod:`raymmrec.unlearning.measure`), and writes::

    <output_dir>/<name>/
        config.json     the run's config with data.forget = "forget.parquet": relative, the request in
                        this folder, so a moved or uploaded folder still loads (load_trained reads it)
        forget.parquet  the request
        best.pt         the unlearned weights, their validation/test metrics, and ``unlearned_from``:
                        the source run, its best epoch, the request, the unlearning epochs
        report.json     every figure, times, options, the per-epoch history
        report.md       the same as a readable table
        gold/           Gold: a full run folder retrained from scratch on the retain data (with gold=True)

Everything is written under a temporary name and renamed at the end (on a URL: staged locally and
uploaded, ``report.json`` last, so a folder without it is unfinished): a failed or killed request
leaves no partial run folder.

Example::

    report = unlearn("runs/bm3-lfm2k-seed999", ForgetRequest.of(users=[3, 17]), gold=True)
    print(report["table"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from raymmrec.config import RunSpec, spec_from_dict
from raymmrec.data import RecData
from raymmrec.data.forget import ForgetRequest, apply_forget, read_request
from raymmrec.errors import UserError
from raymmrec.train.artifacts import BEST, CONFIG, best_payload, read_best
from raymmrec.files import is_url, join, read_bytes, write_json, location
from raymmrec.train.loop import TrainState
from raymmrec.train.build import Pieces, build, load_data, local_evaluate, make_sampler, resolve_device
from raymmrec.train.checkpoint import BEST_FORMAT_VERSION, check_format
from raymmrec.unlearning.measure import held_out_pairs, membership_auc, report_for, retained_utility
from raymmrec.unlearning.mmrecun import (LR_SCALE, UnlearnOptions, UnlearnResult, fine_tune, options_from,
                                         reset_rows, resolve_reset)

REQUEST, REPORT_JSON, REPORT_MD, GOLD = "forget.parquet", "report.json", "report.md", "gold"
ROWS = ("forget recall@20", "forget ndcg@20", "retain recall@20", "retain ndcg@20", "test recall@20",
        "test ndcg@20", "membership_auc", "auc_vs_unseen", "top50_exposure", "seconds")


def default_name(run: str, req: ForgetRequest) -> str:
    digest = hashlib.sha256(req.to_frame().to_csv(index=False).encode()).hexdigest()[:8]
    return f"{Path(str(run).rstrip('/')).name}-forget-{req.kind}{len(req)}-{digest}"


def _model_like(p: Pieces, weights: dict[str, Any] | None, seed: int | None = None) -> torch.nn.Module:
    """A second model of ``p``'s class over ``p``'s graph (fresh init from ``seed``, or ``weights``)."""
    if seed is not None:
        torch.manual_seed(seed)
    m = type(p.model)(p.model.cfg, p.graph)
    p.objective.attach(m, p.data.n_users, p.data.n_items)
    m = m.to(p.device)
    if weights is not None:
        m.load_state_dict(weights)
    return m.eval()


def table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: one row per figure, one column per model."""
    cols = [c for c in ("original", "unlearned", "gold") if report.get(c)]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in ROWS:
        vals = [report[c].get(row) for c in cols]
        if all(v is None for v in vals):
            continue
        fmt = (lambda v: f"{v:.1f}") if row == "seconds" else (lambda v: f"{int(v)}") if row == "top50_exposure" \
            else (lambda v: f"{v:.4f}")
        lines.append(f"| {row} | " + " | ".join("" if v is None else fmt(v) for v in vals) + " |")
    r = report["request"]
    head = (f"{report['method']} run {report['run']}: forget {r['describe']} ({r['forgotten_train_pairs']:,} "
            f"training interactions); {report['epochs_run']} unlearning epochs")
    if report.get("stop_reason"):
        head += f" (stopped: {report['stop_reason']}; {report.get('epochs_kept')} kept)"
    if report.get("speedup"):
        head += f"; unlearning {report['speedup']:.1f}x faster than Gold"
    if report.get("warning"):
        head += f"\nwarning: {report['warning']}"
    return head + "\n\n" + "\n".join(lines)


def trained_spec(run: str) -> RunSpec:
    """The spec of the trained run folder ``run`` (a location as :func:`raymmrec.files.location` gives),
    or one line saying why it cannot be unlearned from."""
    try:
        config = json.loads(read_bytes(join(run, CONFIG)))
    except FileNotFoundError:
        raise UserError(f"--run {run}: not a trained run folder (no {CONFIG})") from None
    spec = spec_from_dict(config)
    if spec.data.forget:
        raise UserError(f"--run {run} is itself trained without a forget request's data; unlearn from the original run")
    return spec


def unlearn(run: str, request: ForgetRequest | str, *, options: UnlearnOptions | dict[str, Any] | None = None,
            output_dir: str | None = None, name: str | None = None, gold: bool = False, device: str = "auto",
            progress: bool = True, data: RecData | None = None) -> dict[str, Any]:
    """Unlearn ``request`` (a :class:`ForgetRequest` or a Parquet/CSV path) from the trained ``run``.

    ``data``: the run's dataset as :func:`~raymmrec.train.build.load_data` gives it, when the caller
    already holds it (the Ray layer maps it from the object store); otherwise it is read here.
    Returns the report (also written as ``report.json``); ``report["folder"]`` is the new run folder.
    """
    say: Callable[[str], None] = (lambda m: print(f"[unlearn] {m}", flush=True)) if progress else (lambda m: None)
    opts = options if isinstance(options, UnlearnOptions) else options_from(options)
    run = location(run)  # every form the other commands take: plain or relative path, file://, s3://
    spec0 = trained_spec(run)
    best = read_best(run)
    if best is None:
        raise UserError(f"--run {run}: not a trained run folder (no {BEST})")
    check_format(best, join(run, BEST), BEST_FORMAT_VERSION)
    req = read_request(request) if isinstance(request, str) else request
    output_dir = location(output_dir) if output_dir else _parent(run)
    name = name or default_name(run, req)
    final = join(output_dir, name)
    if _exists(final):
        raise UserError(f"{final} already exists; choose another --name or remove it")
    dev = resolve_device(device)
    started = time.time()

    data0 = data if data is not None else load_data(spec0)
    data1 = apply_forget(data0, req)  # checks every id against the data first
    say(f"{spec0.method} run {run}: forgetting {req.describe()} ({len(data1.forgotten):,} training interactions)")
    spec1 = spec0.model_copy(deep=True)
    spec1.data.forget = join(final, REQUEST)  # while running (data1 has it applied); config.json: REQUEST
    spec1.output_dir, spec1.run_name = output_dir, name

    local = not is_url(final)
    if local:
        _remove_stale_stages(Path(output_dir), name)
    stage = Path(output_dir, f".{name}.tmp-{os.getpid()}") if local else Path(tempfile.mkdtemp(prefix="unlearn-"))
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        report = _unlearn(run, req, opts, spec0, spec1, data0, data1, best, dev, stage, gold, say)
        report["folder"] = final
        report["started_at"], report["finished_at"] = started, time.time()  # epoch seconds
        (stage / REPORT_MD).write_text(report["table"] + "\n")
        write_json(stage / REPORT_JSON, report)
        _publish(stage, final, local)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"wrote {final}")
    return report


def _unlearn(run: str, req: ForgetRequest, opts: UnlearnOptions, spec0, spec1, data0, data1, best: dict[str, Any],
             dev: torch.device, stage: Path, gold: bool, say: Callable[[str], None]) -> dict[str, Any]:
    ks = tuple(spec0.eval.ks)
    mbe = spec0.eval.max_batch_elems
    (stage / REQUEST).write_bytes(req.to_parquet_bytes())

    p0 = build(spec0, device=dev, data=data0)  # the original model over the original graph
    original = _model_like(p0, best["model"])
    fig_original = report_for(original, data0, data1, req, ks, dev, mbe)
    del original, p0

    t0 = time.perf_counter()
    p1 = build(spec1, device=dev, data=data1)  # retain graph, item graph and sampler
    p1.model.load_state_dict(best["model"])
    setup_s = time.perf_counter() - t0
    valid_held_out = held_out_pairs(data0, req, "valid")

    def stop_metric(m) -> float:  # noqa: ANN001
        with torch.no_grad():
            return membership_auc(m.scoring_embeddings(), data1.forgotten, valid_held_out)

    lr = opts.lr or LR_SCALE * spec0.train.lr
    opts = dataclasses.replace(opts, reset=resolve_reset(opts.reset, req.kind, type(p1.model), spec0.train.weight_decay))
    batch_size = opts.batch_size or spec0.train.batch_size
    sampler = make_sampler(spec1, data1, p1.graph, num_negatives=1)  # never an item-wise request's items
    # a request of pairs the model never trained on (only in valid/test, cold-start items): nothing to unlearn
    res = (fine_tune if len(data1.forgotten) else _keep_weights)(p1.model, data1, sampler, opts, lr=lr, batch_size=batch_size, device=dev,
                    stop_metric=stop_metric, keep_metric=retained_utility(data1, device=dev, max_batch_elems=mbe),
                    fresh=lambda: _model_like(p1, None, seed=spec0.train.seed), req=req,
                    log=say)
    unlearn_s = setup_s + res.seconds
    fig_unlearned = report_for(p1.model, data0, data1, req, ks, dev, mbe)
    fig_original["seconds"], fig_unlearned["seconds"] = None, unlearn_s
    (stage / BEST).write_bytes(_unlearned_best(p1, run, best, req, len(data1.forgotten), res))
    write_json(stage / CONFIG, _in_folder(p1.config, REQUEST))

    fig_gold = None
    if gold:
        from raymmrec.train.run import run as train_run

        say("Gold: retraining from scratch on the retain data")
        gspec = spec1.model_copy(deep=True)
        gspec.output_dir, gspec.run_name = str(stage), GOLD
        t1 = time.perf_counter()
        train_run(gspec, progress=False, data=data1)
        gold_s = time.perf_counter() - t1
        gbest = read_best(str(stage / GOLD))
        fig_gold = report_for(_model_like(p1, gbest["model"]), data0, data1, req, ks, dev, mbe)
        fig_gold["seconds"] = gold_s
        gconf = json.loads((stage / GOLD / CONFIG).read_text())
        gconf["output_dir"] = spec1.output_dir
        gconf["run_name"] = f"{spec1.run_name}/{GOLD}"
        write_json(stage / GOLD / CONFIG, _in_folder(gconf, f"../{REQUEST}"))

    if not len(data1.forgotten):  # no forgotten training pair: the forget figures measure nothing
        for fig in (fig_original, fig_unlearned, fig_gold or {}):
            fig.update({k: None for k in fig if k.startswith("forget ")})
    report = {
        "run": run, "method": spec0.method,
        "request": {"kind": req.kind, "size": len(req), "describe": req.describe(),
                    "forgotten_train_pairs": len(data1.forgotten), "source": req.source},
        "options": {**opts.__dict__, "lr": lr, "batch_size": batch_size},
        "epochs_run": res.epochs_run, "epochs_kept": res.epochs_kept, "stop_reason": res.stop_reason,
        "final_lr": res.lr, "warning": res.warning, "reset": res.reset, "history": res.history,
        "original": fig_original, "unlearned": fig_unlearned, "gold": fig_gold,
        "speedup": (fig_gold["seconds"] / unlearn_s) if fig_gold else None,
    }
    report["table"] = table(report)
    return report


def _in_folder(config: dict[str, Any], request: str) -> dict[str, Any]:
    """``config`` with ``data.forget`` = ``request``, a path relative to the run folder that holds the
    config (:func:`raymmrec.train.trained.load_trained` reads it so): never where the folder was written."""
    return {**config, "data": {**config["data"], "forget": request}}


def _parent(run: str) -> str:
    return run.rsplit("/", 1)[0] if is_url(run) else str(Path(run).parent)


def _keep_weights(model: torch.nn.Module, data: Any, sampler: Any, opts: UnlearnOptions, **kwargs: Any) -> UnlearnResult:
    """In place of :func:`fine_tune` when the request forgets no training pair: the trained weights
    never saw the request's pairs, so they are the unlearned weights (0 epochs). A user- or item-wise
    request's rows are still reset as ``opts.reset`` says: the reset is part of forgetting a user or an
    item, whether or not any of their pairs were trained on (e.g. an item-wise request of cold items)."""
    log = kwargs.get("log")
    if log:
        log("the request forgets no training interaction (its pairs are only in valid/test or cold-start "
            "items): the model never trained on them; its weights are kept, over the retain data")
    t0 = time.perf_counter()
    req = kwargs.get("req")
    reset = reset_rows(model, req, opts.reset, kwargs.get("fresh")) if req is not None else []
    model.eval()
    return UnlearnResult(0, time.perf_counter() - t0, [], reset, stop_reason="nothing trained on", epochs_kept=0)


def _unlearned_best(p1: Pieces, run: str, best: dict[str, Any], req: ForgetRequest, n_forgotten: int,
                    res: UnlearnResult) -> bytes:
    """``best.pt`` of the unlearned run: the weights, the retain data's validation and test metrics
    (the score under ``eval.valid_metric``), the source run's best epoch as ``epoch``, and
    ``unlearned_from``: the source run, its epoch and score, the request and the unlearning epochs
    (what ``recommend`` and ``evaluate`` print; :meth:`raymmrec.train.trained.Trained.weights_note`)."""
    results = local_evaluate({s: p1.evaluators[s] for s in ("valid", "test")})(p1.model)
    kept = res.epochs_kept if res.epochs_kept >= 0 else res.epochs_run
    state = TrainState(epoch=kept, best_epoch=int(best["epoch"]),
                       best_score=float(results["valid"][p1.spec.eval.valid_metric]),
                       best_valid=dict(results["valid"]), best_test=dict(results["test"]))
    payload = best_payload(p1.model, state, _in_folder(p1.config, REQUEST))
    payload["unlearned_from"] = {
        "run": run, "epoch": int(best["epoch"]), "score": float(best["score"]),
        "request": {"kind": req.kind, "size": len(req), "describe": req.describe(), "source": req.source,
                    "forgotten_train_pairs": n_forgotten},
        "unlearning_epochs": kept,  # the epochs these weights hold (epochs_kept)
        "epochs_run": int(res.epochs_run), "epochs_kept": int(kept),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def _exists(url: str) -> bool:
    if not is_url(url):
        return Path(url.removeprefix("file://")).exists()
    from raymmrec.data.io import open_fs

    fs, path = open_fs(url)
    return fs.exists(path)


def _remove_stale_stages(folder: Path, name: str) -> None:
    """Remove staging folders of this name left by killed requests (their process is gone)."""
    for d in folder.glob(f".{name}.tmp-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(stage: Path, final: str, local: bool) -> None:
    """Move the staged folder into place: a rename on a local disk; on a URL, ``report.json`` last."""
    if local:
        os.replace(stage, Path(final.removeprefix("file://")))
        return
    from raymmrec.data.io import open_fs

    fs, path = open_fs(final)
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != REPORT_JSON)
    for f in [*files, stage / REPORT_JSON]:
        fs.put_file(str(f), f"{path}/{f.relative_to(stage).as_posix()}")
