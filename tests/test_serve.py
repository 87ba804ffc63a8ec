"""Ray Serve: a real application on 127.0.0.1 answering real HTTP requests, model swaps under load,
and a forget request that reaches the live service (``raymmrec serve``, ``raymmrec unlearn --serve``).

The app runs under a route prefix that is not "/", with small request limits: swaps keep both."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request

import pandas as pd
import pytest

from raymmrec.cli import main as cli_main
from raymmrec.config import load_spec
from raymmrec.train.run import run

APP = "rec-test"
PREFIX = "/rec"
LIMITS = {"max_users": 50, "max_k": 100, "max_results": 2000}


def _train(out, name: str, seed: int) -> str:
    spec = load_spec("lightgcn", overrides=[f"output_dir={out}", f"run_name={name}", f"data.source={out / 'tiny'}",
                                            "train.epochs=3", "train.lr=0.01", "train.batch_size=64",
                                            f"train.seed={seed}"])
    run(spec, progress=False)
    return str(out / name)


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """Two tiny runs of one dataset folder (synthetic:tiny written out); the app serves the first (one
    replica, half a CPU) on a free loopback port, at ``PREFIX``, with ``LIMITS``."""
    from conftest import free_port
    from ray import serve

    from raymmrec.data.builtin import load_dataset
    from raymmrec.data.io import write_columnar
    from raymmrec.ray.serve import deploy

    out = tmp_path_factory.mktemp("serve")
    write_columnar(load_dataset("synthetic:tiny"), str(out / "tiny"), source="synthetic:tiny")
    a, b = _train(out, "a", 1), _train(out, "b", 2)
    port = free_port()
    info = deploy(a, app=APP, port=port, route_prefix=PREFIX, replicas=1, cpus=0.5, **LIMITS)
    root = f"http://127.0.0.1:{port}"
    assert info["url"] == root + PREFIX  # the address Serve reports, not only the one asked for
    try:
        yield {"a": a, "b": b, "url": info["url"], "root": root, "out": out}
    finally:
        serve.shutdown()


def call(url: str, body: object | bytes | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:  # an answer of Serve's own (e.g. no app at this path), not of the app
            return e.code, {"text": raw.decode(errors="replace")}


def cli_recommend(run_dir: str, users: str, k: int, capsys) -> dict[int, list[tuple[int, float]]]:
    assert cli_main(["recommend", "--run", run_dir, "--users", users, "--k", str(k)]) == 0
    recs: dict[int, list[tuple[int, float]]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line and line[0].isdigit():
            u, _, i, s = line.split("\t")[:4]
            recs.setdefault(int(u), []).append((int(i), float(s)))
    return recs


@pytest.mark.ray
@pytest.mark.slow
def test_answers_equal_raymmrec_recommend(served, capsys):
    url = served["url"]
    expected = cli_recommend(served["a"], "0,7,3", 5, capsys)
    status, one = call(f"{url}/recommend?user=7&k=5")
    assert status == 200 and one["run"] == "a" and one["user"] == 7  # the run's name, never its path
    assert [e["item"] for e in one["items"]] == [i for i, _ in expected[7]]
    assert [round(e["score"], 4) for e in one["items"]] == pytest.approx([s for _, s in expected[7]], abs=1e-4)
    status, many = call(f"{url}/recommend", {"users": [0, 7, 3, 0], "k": 5})
    assert status == 200 and [r["user"] for r in many["results"]] == [0, 7, 3, 0]
    for r in many["results"]:
        assert [e["item"] for e in r["items"]] == [i for i, _ in expected[r["user"]]]
    status, info = call(f"{url}/info")
    assert status == 200 and info["run"] == "a" and info["method"] == "lightgcn" and info["items"] > 0
    assert info["dataset"] == "synthetic:tiny" and {k: info[k] for k in LIMITS} == LIMITS
    assert not [v for v in info.values() if isinstance(v, str) and "/" in v], info  # no filesystem path
    status, health = call(f"{url}/healthz")
    assert status == 200 and health["run"] == "a"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("path,body,status,field", [
    ("/recommend?user=abc&k=5", None, 400, "user"),
    ("/recommend?user=99999", None, 404, "user"),
    ("/recommend?k=5", None, 400, "user"),
    ("/recommend?user=1&k=0", None, 400, "k"),
    ("/recommend?user=1&k=x", None, 400, "k"),
    ("/recommend?user=1&k=100000", None, 400, "k"),
    ("/recommend", b"{not json", 400, "body"),
    ("/recommend", [1, 2], 400, "body"),
    ("/recommend", {"users": "1,2"}, 400, "users"),
    ("/recommend", {"users": [1, -1]}, 404, "users"),
    ("/recommend", {"users": [1], "k": 2.5}, 400, "k"),
    ("/nope", None, 404, "path"),
])
def test_bad_requests_get_a_4xx_naming_the_field_and_the_service_keeps_answering(served, path, body, status, field):
    got, answer = call(served["url"] + path, body)
    assert got == status, answer
    assert set(answer) == {"error"} and answer["error"].startswith(f"{field}: ") and "\n" not in answer["error"]
    assert call(f"{served['url']}/recommend?user=1&k=3")[0] == 200


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("path,body,field,limit", [
    ("/recommend?user=1&k=101", None, "k", "max_k"),
    ("/recommend", {"users": list(range(51)), "k": 1}, "users", "max_users"),
    ("/recommend", {"users": list(range(30)), "k": 100}, "users", "max_results"),  # 3,000 > 2,000
    ("/recommend", b'{"users": [' + b"0, " * 2000 + b'0], "k": 1}', "body", "max_users"),
])
def test_a_request_over_a_limit_gets_a_4xx_naming_the_limit(served, path, body, field, limit):
    got, answer = call(served["url"] + path, body)
    assert 400 <= got < 500 and answer["error"].startswith(f"{field}: ") and limit in answer["error"], answer
    assert call(f"{served['url']}/recommend", {"users": list(range(20)), "k": 100})[0] == 200  # 2,000: at the limit


@pytest.mark.ray
@pytest.mark.slow
def test_a_body_without_a_declared_length_is_cut_off_at_the_limit(served):
    """Chunked, without end (no Content-Length): the replica stops reading once past the limit and answers
    413 while the client is still sending; reading the whole body first would never answer."""
    import http.client
    import socket
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(served["url"])
    sock = socket.create_connection((url.hostname, url.port), timeout=120)
    sock.sendall(f"POST {url.path}/recommend HTTP/1.1\r\nHost: {url.hostname}\r\n"
                 "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    answered = threading.Event()

    def feed() -> None:  # '{"users": [0, 0, 0, ...' for as long as the server reads
        chunk = b"0, " * 1000
        try:
            sock.sendall(b'b\r\n{"users": [\r\n')
            while not answered.is_set():
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:  # the server closed the connection after its answer
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        r = http.client.HTTPResponse(sock)
        r.begin()
        answer = json.loads(r.read())
    finally:
        answered.set()
        sock.close()
        feeder.join()
    assert r.status == 413 and answer["error"].startswith("body: ") and "max_users" in answer["error"], answer


@pytest.mark.ray
@pytest.mark.slow
def test_an_internal_error_is_logged_and_answered_without_its_text(served):
    """The reply says "internal" and nothing of the exception (paths, internals); the log has it all."""
    from starlette.requests import Request

    from raymmrec.ray.serve import INTERNAL, RecommendService
    from raymmrec.serving import Ranker

    service = RecommendService()
    service._ranker = Ranker.load(served["a"])
    secret = f"cannot read {served['out']}/secret.bin"

    def broken(*args):
        raise OSError(secret)

    service._ranker.check_user = broken  # an unexpected error while answering (serve.batch needs a replica)
    scope = {"type": "http", "method": "GET", "path": "/recommend", "query_string": b"user=1&k=3",
             "headers": [], "root_path": ""}
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append  # Serve's logger (a replica's log file) does not propagate to pytest's
    log = logging.getLogger("ray.serve")
    log.addHandler(handler)
    try:
        reply = asyncio.run(service(Request(scope)))
    finally:
        log.removeHandler(handler)
    assert reply.status_code == 500 and json.loads(reply.body) == {"error": INTERNAL}
    assert secret not in INTERNAL and str(served["out"]) not in INTERNAL
    assert any(r.exc_info and secret in str(r.exc_info[1]) for r in logged), logged


def test_the_printed_address_is_serves_or_says_it_cannot_tell():
    from raymmrec.ray.serve import listen_url, where

    details = {"http_options": {"host": "0.0.0.0", "port": 8123}, "applications": {"x": {"route_prefix": "/p"}}}
    assert listen_url(details, "x") == "http://0.0.0.0:8123/p"
    assert listen_url(details, "y") is None and listen_url(None, "x") is None
    assert "cannot tell" in where({"url": None, "asked": "http://127.0.0.1:8000"})


@pytest.mark.ray
@pytest.mark.slow
def test_swap_under_a_stream_of_requests_fails_none_and_then_answers_only_from_the_new_run(served, capsys):
    """Also: the replicas never read the dataset. Its folder is moved away before the swap to another run
    of it, and after; the new replicas, and a replica Serve restarts, answer from the data held for the app."""
    away = served["out"] / "tiny-away"
    (served["out"] / "tiny").rename(away)
    try:
        _swap_under_a_stream(served, capsys)
        _a_restarted_replica_answers(served)
    finally:
        away.rename(served["out"] / "tiny")


def _a_restarted_replica_answers(served) -> None:
    import ray
    from ray import serve

    from raymmrec.ray.serve import app_holders

    assert len(app_holders(APP)) == 1  # one dataset, read once for both runs
    replicas = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{APP}#")}
    assert len(replicas) == 1
    ray.kill(ray.get_actor(replicas.pop(), namespace="serve"), no_restart=True)
    handle = serve.get_app_handle(APP)
    while True:  # Serve starts another replica, which loads the run from the held data (or fails to start)
        try:
            pid = handle.data_mapping.remote().result(timeout_s=120)["pid"]
            break
        except Exception:  # noqa: BLE001 - the dead replica, until Serve replaces it
            assert serve.status().applications[APP].status in ("RUNNING", "DEPLOYING", "UNHEALTHY")
    status, body = call(f"{served['url']}/recommend?user=1&k=3")
    assert status == 200 and body["run"] == "b" and pid


@pytest.mark.ray
@pytest.mark.slow
def test_two_replicas_of_a_node_map_one_copy_of_the_dataset(served):
    """Both replicas of an app hold the training pairs in one shared file (the object store's), not
    each its own copy. Pairs over Ray's 100 KiB inline limit (smaller objects travel copied)."""
    import os

    from ray import serve

    from raymmrec.ray.serve import app_holders, deploy, end_holders

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc/self/maps (Linux)")
    spec = load_spec("lightgcn", overrides=[f"output_dir={served['out']}", "run_name=big", "train.epochs=1",
                                            "data.source=synthetic:users=1000,items=300,interactions=30000",
                                            "train.batch_size=4096"])
    run(spec, progress=False)
    app = "rec-two"
    deploy(str(served["out"] / "big"), app=app, route_prefix="/two", replicas=2, cpus=0.5)
    try:
        handle = serve.get_app_handle(app)
        seen: dict[int, str | None] = {}
        for _ in range(200):  # the router spreads calls over both replicas
            got = handle.data_mapping.remote().result(timeout_s=60)
            seen[got["pid"]] = got["mapping"]
            if len(seen) == 2:
                break
        files = set(seen.values())
        assert len(seen) == 2 and len(files) == 1, seen
        shm = files.pop()
        assert shm is not None and not shm.startswith("00:00 0 "), seen  # one file, not anonymous memory
    finally:
        serve.delete(app)
        end_holders(app_holders(app))


def _swap_under_a_stream(served, capsys) -> None:
    url, b = served["url"], served["b"]
    # a swap that would move the app, or ask Serve for another port, is refused before any deploy
    assert cli_main(["serve", "--run", b, "--app", APP, "--route-prefix", "/"]) == 2
    assert cli_main(["serve", "--run", b, "--app", APP, "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--route-prefix: app {APP!r}'s route prefix is {PREFIX}" in err and "--port: " in err
    answers: list[tuple[bool, int, str | None]] = []  # (sent after the swap returned, status, run)
    swapped, stop, first = threading.Event(), threading.Event(), threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            after = swapped.is_set()
            try:
                if i % 2:
                    status, body = call(f"{url}/recommend?user={i % 30}&k=10")
                else:
                    status, body = call(f"{url}/recommend", {"users": [i % 30, (i + 1) % 30], "k": 10})
            except Exception as e:  # noqa: BLE001 - a failed request is what this test counts
                status, body = -1, {"error": repr(e)}
            answers.append((after, status, body.get("run")))
            first.set()
            i += 1

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert first.wait(60)
        assert cli_main(["serve", "--run", b, "--app", APP]) == 0
        swapped.set()
        while sum(after for after, _, _ in answers) < 30 and all(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    printed = capsys.readouterr().out
    assert "swapped from" in printed and f"at {url}\n" in printed  # the prefix and port kept, and printed
    failed = [x for x in answers if x[1] != 200]
    assert not failed, failed[:5]
    assert {run for after, _, run in answers if not after} >= {"a"}
    assert {run for after, _, run in answers if after} == {"b"}
    info = call(f"{url}/info")[1]
    assert info["run"] == "b" and {k: info[k] for k in LIMITS} == LIMITS  # the limits kept too
    status, root = call(f"{served['root']}/recommend?user=1&k=3")  # "/" did not get the app
    assert status == 404 and "run" not in root
    served["swapped"] = True


@pytest.mark.ray
@pytest.mark.slow
def test_unlearn_with_serve_removes_the_forgotten_items_from_the_live_service(served, tmp_path, capsys):
    url = served["url"]
    status, before = call(f"{url}/recommend", {"users": list(range(30)), "k": 50})
    assert status == 200
    counts = pd.Series([e["item"] for r in before["results"] for e in r["items"]]).value_counts()
    forget = counts.index[:3].tolist()  # the items recommended most often
    request = tmp_path / "items.csv"
    pd.DataFrame({"itemID": forget}).to_csv(request, index=False)
    assert cli_main(["unlearn", "--run", served["a"], "--request", str(request), "--serve", APP,
                     "--output-dir", str(served["out"]), "--name", "a-forget", "epochs=1"]) == 0
    assert f"at {url}\n" in capsys.readouterr().out  # the app's prefix, host and port kept
    status, after = call(f"{url}/recommend", {"users": list(range(30)), "k": 50})
    assert status == 200 and after["run"] == "a-forget"
    shown = {e["item"] for r in after["results"] for e in r["items"]}
    assert shown and not shown & set(forget)
    assert call(f"{url}/info")[1]["forgotten_items"] == 3
