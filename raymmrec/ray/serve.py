"""Live top-K recommendations from a trained run with Ray Serve, and in-place model swaps.

    raymmrec serve --run runs/lightgcn-lfm2k [--port 8000] [--replicas 2] [--cpus-per-replica 1]
    curl 'http://127.0.0.1:8000/recommend?user=3&k=10'
    curl -X POST http://127.0.0.1:8000/recommend -d '{"users": [3, 17], "k": 10}'
    curl http://127.0.0.1:8000/info            # the run's name, method, dataset, epoch, sizes, limits
    raymmrec serve --run runs/lightgcn-lfm2k-v2  # on a running app: swaps the model, no downtime
    raymmrec unlearn --run runs/lightgcn-lfm2k --request items.csv --serve raymmrec  # forget, then swap

Each replica of the application (one deployment, ``recommend``) loads the run's best model once and
computes its scoring tables once (:class:`raymmrec.serving.Ranker`); a ranking is
:func:`raymmrec.recommend.top_k`, the same code and tie order as ``raymmrec recommend`` and evaluation.
The run's dataset is read once per deploy, not by each replica (:class:`ServedData`: a detached actor
per app and dataset owns the arrays in the object store; replicas map them read-only, one copy per
node, and never read the source).
Concurrent requests are ranked together (``serve.batch``: one ranking per distinct k for all).
A request is bounded (:class:`raymmrec.serving.Limits`: users, k, users x k; ``--max-users``,
``--max-k``, ``--max-results``); an error reply names the client's mistake, or says "internal" and
leaves the details to the replica's log; answers and ``/info`` name the run and dataset, never a path.

The run is the deployment's ``user_config``. Deploying the app again with another run is Serve's
rolling update: with ``max_surge_percent=100`` Serve starts the new replicas (which load the new run)
while the old ones keep answering, routes to the new ones once they are ready, then drains and stops
the old ones; ``serve.run`` returns once every replica serves the new run, so no request fails during
the swap and every answer after it comes from the new run (each answer names its run). A swap keeps
the app's route prefix, and Serve keeps its host and port; the address printed is the one Serve
reports for the app.

Where this command finds a running Ray cluster (``RAY_ADDRESS``, ``--address`` or a local
``ray start``), it deploys and returns, and the application lives on in the cluster; otherwise it
starts Ray in this process and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ray import serve

from raymmrec.errors import UserError, run_main
from raymmrec.files import location
from raymmrec.serving import Limits, RequestError

DEFAULT_APP = "raymmrec"
DEPLOYMENT = "recommend"
DEFAULT_K = 20
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}
INTERNAL = "internal: the service could not answer this request (the details are in its log)"
BODY_BYTES_PER_USER = 32
LOG = logging.getLogger("ray.serve")


def _json(obj: Any, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(obj, status_code=status)


class RecommendService:
    """(Serve deployment) HTTP front of a :class:`~raymmrec.serving.Ranker`; see the module docstring."""

    def __init__(self) -> None:
        self._ranker = None
        self._settings: dict[str, Any] = {}

    async def reconfigure(self, settings: dict[str, Any]) -> None:
        """Load ``settings["run"]`` beside the current model, then switch to it in one assignment."""
        import torch

        from raymmrec.serving import Ranker

        run = str(settings["run"]).rstrip("/")
        limits = Limits.of(settings)
        if self._ranker is None or self._ranker.run != run:
            torch.set_num_threads(max(1, int(settings.get("cpus") or 1)))
            device = "cuda" if float(settings.get("gpus") or 0) > 0 else "cpu"
            data, prepared, names = await asyncio.to_thread(fetch_served_data, settings["data"])
            self._ranker = await asyncio.to_thread(Ranker.load, run, device, limits, data=data, prepared=prepared,
                                                   names=names)
        self._ranker.limits = limits
        self._settings = dict(settings)

    def settings(self) -> dict[str, Any]:
        """The settings this replica was deployed with (run, replicas, cpus, gpus, limits, route prefix):
        redeploys keep them."""
        return dict(self._settings)

    def data_mapping(self) -> dict[str, Any]:
        """This replica's pid and where the served dataset's training pairs lie in its memory: the
        ``/proc/self/maps`` entry (device, inode, file) of their first byte (Linux; None elsewhere).
        The replicas of one node name one file: the object store's, mapped, not copied."""
        import os

        address = self._ranker.data.train.users.ctypes.data
        entry = None
        try:
            for line in open("/proc/self/maps").read().splitlines():
                parts = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= address < hi:
                    entry = " ".join(parts[3:5] + parts[5:])
                    break
        except OSError:
            pass
        return {"pid": os.getpid(), "mapping": entry}

    async def __call__(self, request):  # noqa: ANN001 - a starlette Request
        try:
            return await self._route(request)
        except RequestError as e:  # the client's fault: its message names the field and what was expected
            return _json({"error": str(e)}, e.status)
        except Exception:  # noqa: BLE001 - answered, never raised: the replica keeps serving
            # the details (paths, internals) go to the replica's log, never to the client
            LOG.exception("%s %s failed", request.method, request.url.path)
            return _json({"error": INTERNAL}, 500)

    async def _route(self, request):  # noqa: ANN001
        ranker = self._ranker
        if ranker is None:
            return _json({"error": "model: not loaded yet"}, 503)
        root = request.scope.get("root_path", "") or ""
        path = request.url.path[len(root):] if request.url.path.startswith(root) else request.url.path
        path = "/" + path.strip("/")
        method = request.method
        allowed = {"/healthz": ("GET",), "/info": ("GET",), "/recommend": ("GET", "POST")}
        if path not in allowed:
            raise RequestError("path", f"no route {path}; expected /recommend, /info or /healthz"[:200], 404)
        if method not in allowed[path]:
            raise RequestError("method", f"{method} {path} is not served; expected {' or '.join(allowed[path])}",
                               405)
        if path == "/healthz":
            return _json({"status": "ok", "run": ranker.name, "epoch": ranker.info["epoch"]})
        if path == "/info":
            return _json(ranker.info)
        limits = ranker.limits
        if method == "GET":
            params = request.query_params
            unknown = sorted(set(params) - {"user", "k"})
            if unknown:
                raise RequestError(unknown[0][:40], "unknown query parameter; expected user and k")
            if "user" not in params:
                raise RequestError("user", "missing; expected /recommend?user=U&k=K")
            user = ranker.check_user(params["user"])
            k = ranker.check_k(params.get("k", str(min(DEFAULT_K, limits.max_k))))
            limits.check(1, k)
            answer, rows = await self._ranked([user], k)
            return _json({**answer, "user": user, "k": k, "items": rows[0]})
        most = BODY_BYTES_PER_USER * limits.max_users + 1024  # room for max_users ids, each written out long
        raw = await _bounded_body(request, most, limits.max_users)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestError("body", 'expected a JSON object {"users": [...], "k": K}') from None
        if not isinstance(body, dict):
            raise RequestError("body", f'expected a JSON object {{"users": [...], "k": K}}, got {type(body).__name__}')
        unknown = sorted(set(body) - {"users", "k"})
        if unknown:
            raise RequestError(unknown[0][:40], "unknown field; expected users and k")
        users = ranker.check_users(body.get("users"))
        k = ranker.check_k(body.get("k", min(DEFAULT_K, limits.max_k)))
        limits.check(len(users), k)
        answer, rows = await self._ranked(users, k)
        return _json({**answer, "k": k, "results": [{"user": u, "items": r} for u, r in zip(users, rows)]})

    async def _ranked(self, users: list[int], k: int) -> tuple[dict[str, Any], list]:
        answer, rows = await self._rank((users, k))
        if answer is None:
            raise rows
        return answer, rows

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _rank(self, asks: list[tuple[list[int], int]]) -> list[tuple[dict[str, Any], list]]:
        """All waiting requests ranked together: one ranking per distinct k over their users stacked.

        Ranking each k on its own keeps a batch's answer the sum of its requests' (each within
        ``max_results``): one large-k request never makes every other request's users ranked to its k.
        Every answer of one batch comes from one model, which the answer names.
        """
        ranker = self._ranker
        out: list[Any] = [None] * len(asks)
        by_k: dict[int, list[int]] = {}
        for i, (us, k) in enumerate(asks):
            # checked against the model of the request's arrival; a swap in between may change the range
            if all(u < ranker.n_users for u in us):
                by_k.setdefault(k, []).append(i)
            else:
                out[i] = (None, RequestError("users", f"expected ids in [0, {ranker.n_users}) for the model "
                                                      "now served"))
        head = {"run": ranker.name, "method": ranker.info["method"], "epoch": ranker.info["epoch"]}
        for k, which in by_k.items():
            rows = await asyncio.to_thread(ranker.recommend, [u for i in which for u in asks[i][0]], k)
            start = 0
            for i in which:
                out[i] = (head, rows[start:start + len(asks[i][0])])
                start += len(asks[i][0])
        return out


# ---------------------------------------------------------------- the app's data, read once per deploy

DATA_NAMESPACE = "raymmrec-serve"  # the holders' Ray namespace (a named actor is found by name only there)
WATCH_S = 30.0  # how often a holder looks whether its app still serves its data
HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives the head node only


class ServedData:
    """(Detached Ray actor, one per app and dataset) the dataset of the runs an app serves, read once.

    :meth:`load` runs the one loading task of :func:`raymmrec.ray.shared.share` (the dataset read and
    checked, the prepared inputs built) and reads the item names; the arrays are in the object store,
    owned by this actor, so they outlive the ``raymmrec serve`` command that deployed the app. Each
    replica gets them with :func:`fetch_served_data`: read-only views of its node's shared memory (one
    copy per node, whatever the number of replicas), and no replica reads the source.

    It runs on the head node (:func:`on_the_head_node`): the arrays it owns outlive the loss of a worker
    node, and a replica started to replace a lost one fetches them.

    Freed when this actor ends (Ray frees the objects an actor owns with it): :func:`deploy` ends the
    app's other holders once a swap serves the new one, and once :meth:`watch` is on, the holder ends
    itself when its app is deleted (``serve.delete``, ``serve shutdown``): within ``WATCH_S`` seconds.
    """

    def __init__(self) -> None:
        self._shared = None
        self._names: Any = None
        self._watching = False

    def load(self, spec_dict: dict[str, Any]) -> str:
        """Read the dataset (once: a second call returns at once); its summary line."""
        import ray

        from raymmrec.config import spec_from_dict
        from raymmrec.ray.shared import share
        from raymmrec.recommend import item_names

        if self._shared is None:
            spec = spec_from_dict(spec_dict)
            shared = share(spec)
            self._names = ray.put(item_names(spec) or {})
            self._shared = shared
        return self._shared.summary

    def shared(self) -> tuple[Any, Any]:
        """(the :class:`~raymmrec.ray.shared.SharedData`, the ref of the item names)."""
        return self._shared, self._names

    def watch(self, app: str) -> None:
        """End this holder (and free its data) once ``app`` is gone (deleted, or Serve shut down)."""
        import threading

        if self._watching:
            return
        self._watching = True

        def loop() -> None:
            import ray

            while not threading.Event().wait(WATCH_S):
                try:
                    if app in serve.status().applications:
                        continue
                except Exception:  # noqa: BLE001 - Serve gone (serve.shutdown): so is the app
                    pass
                ray.kill(ray.get_runtime_context().current_actor)
                return

        threading.Thread(target=loop, daemon=True, name="raymmrec-serve-watch").start()


def fetch_served_data(name: str) -> tuple[Any, Any, dict[int, str]]:
    """(Replica) the dataset, prepared inputs and item names held by the holder ``name``: no read of the source."""
    import ray

    from raymmrec.ray.shared import fetch

    shared, names = ray.get(ray.get_actor(name, namespace=DATA_NAMESPACE).shared.remote())
    data, prepared = fetch(shared)
    return data, prepared, ray.get(names)


def data_key(spec: Any) -> str:
    """What a served dataset depends on (the data options, the method and model options that make the
    prepared inputs): two runs with the same key share one holder, and a swap between them reads nothing."""
    import hashlib

    d = spec.to_dict()
    what = json.dumps({k: d.get(k) for k in ("data", "method", "model")}, sort_keys=True, default=str)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def holder_name(app: str, key: str) -> str:
    return f"{app}/data/{key}"


def app_holders(app: str) -> list[str]:
    """The names of ``app``'s data holders alive on this cluster."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == DATA_NAMESPACE and a["name"].startswith(f"{app}/data/")]


def end_holders(names: list[str]) -> None:
    """End these holders: the objects they own are freed with them."""
    import ray

    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=DATA_NAMESPACE), no_restart=True)
        except ValueError:  # already gone
            pass


def on_the_head_node() -> dict[str, Any]:
    """Actor options that place an app's data holder on the head node, where Serve's controller runs (no
    options where Ray does not tell which node that is). Left to Ray, a holder of no CPU went to a worker
    node: when that node was lost, the holder and the arrays it owns went with it, and the lost replica's
    replacement, which fetches them, never started. A hard affinity: with ``soft=True`` Ray still placed
    the holder on a worker node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})), None)
    return {} if head is None else {"scheduling_strategy": NodeAffinitySchedulingStrategy(head, soft=False)}


def hold_data(run: str, app: str) -> tuple[str, bool]:
    """The holder of ``run``'s dataset for ``app`` (created and loaded here when none has it: the
    dataset's one read of this deploy); (its name, whether it was created here). Raises the
    dataset's own one-line error (the holder then ended)."""
    import ray

    from raymmrec.ray.launch import absolute_data_paths
    from raymmrec.ray.shared import get_or_raise_cause
    from raymmrec.train.trained import read_run

    spec = read_run(run)[0]
    absolute_data_paths(spec)  # the loading task runs in another directory
    name = holder_name(app, data_key(spec))
    created = name not in app_holders(app)
    holder = ray.remote(ServedData).options(name=name, namespace=DATA_NAMESPACE, lifetime="detached", num_cpus=0,
                                            get_if_exists=True, **on_the_head_node()).remote()
    try:
        get_or_raise_cause(holder.load.remote(spec.to_dict()))
    except BaseException:
        if created:
            end_holders([name])
        raise
    return name, created


# ---------------------------------------------------------------- driver side


async def _bounded_body(request, most: int, max_users: int) -> bytes:  # noqa: ANN001 - a starlette Request
    """The request's body, refused with a 413 as soon as it is over ``most`` bytes: a declared length
    is checked before anything is read, and the stream is cut off once past it (a client cannot make the
    replica buffer more than ``most`` bytes)."""
    def too_long(n: str) -> RequestError:
        return RequestError("body", f"{n} bytes; at most {most:,} for max_users={max_users}", 413)

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise too_long(f"{int(declared):,}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > most:
            raise too_long(f"over {most:,}")
    return bytes(raw)


def connect(address: str | None = None, start_local: bool = True) -> bool:
    """Connect to a running Ray cluster (``address``, ``RAY_ADDRESS`` or a local ``ray start``).

    Without one: start Ray in this process when ``start_local`` (returns True: this process owns
    it), else a one-line error.
    """
    import ray

    if ray.is_initialized():
        return False
    if address == "local":  # a Ray of this process's own, even where another one runs on this machine
        ray.init(address="local", logging_level=logging.WARNING, log_to_driver=False)
        return True
    try:
        ray.init(address=address or "auto", logging_level=logging.WARNING, log_to_driver=False)
        return False
    except ConnectionError:
        if address or not start_local:
            raise UserError(f"--address: no running Ray cluster found at {address or 'auto'}") from None
    ray.init(logging_level=logging.WARNING, log_to_driver=False)
    return True


def _check_run(run: str) -> None:
    """A one-line error before any deploy when ``run`` is not a finished run folder."""
    from raymmrec.files import is_url, join
    from raymmrec.train.artifacts import BEST, CONFIG

    for name in (CONFIG, BEST):
        path = join(run, name)
        if is_url(path):
            from raymmrec.data.io import open_fs

            fs, p = open_fs(path)
            ok = fs.exists(p)
        else:
            ok = Path(path.removeprefix("file://")).is_file()
        if not ok:
            raise UserError(f"--run: {run} is not a finished run folder ({path} does not exist)")


def running_apps() -> dict[str, Any]:
    """Serve's applications on the connected cluster (empty when Serve is not running)."""
    try:
        return dict(serve.status().applications)
    except Exception:  # noqa: BLE001 - no Serve controller yet
        return {}


def current_settings(app: str) -> dict[str, Any]:
    """The settings (run, replicas, cpus, gpus, limits) the running ``app`` was deployed with."""
    if app not in running_apps():
        raise UserError(f"--serve: no Serve application named {app!r} on this Ray cluster "
                        f"(running: {', '.join(running_apps()) or 'none'})")
    return serve.get_app_handle(app).settings.remote().result(timeout_s=60)


def serve_details() -> dict[str, Any] | None:
    """Serve's own record of its HTTP address and applications (the controller's), or None where
    Serve is not running or does not tell (its public API reports neither address nor route prefix)."""
    try:
        from ray.serve.context import _get_global_client

        details = _get_global_client().get_serve_details()
        return details if isinstance(details.get("http_options"), dict) else None
    except Exception:  # noqa: BLE001 - no Serve controller, or an API that moved: "cannot tell"
        return None


def listen_url(details: dict[str, Any] | None, app: str) -> str | None:
    """The URL ``app`` answers at, from Serve's record (:func:`serve_details`); None where it has none."""
    try:
        http = details["http_options"]
        host, port, prefix = http["host"], int(http["port"]), details["applications"][app]["route_prefix"]
    except (TypeError, KeyError, ValueError):
        return None
    if not host or not isinstance(prefix, str):
        return None
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}{'' if prefix == '/' else prefix.rstrip('/')}"


def build_app(settings: dict[str, Any]):
    """The Serve application of ``settings``: run (user_config), replicas, cpus, gpus, limits."""
    actor = {"num_cpus": float(settings["cpus"]), "num_gpus": float(settings["gpus"])}
    deployment = serve.deployment(
        RecommendService, name=DEPLOYMENT, num_replicas=int(settings["replicas"]),
        ray_actor_options=actor, user_config=dict(settings), max_ongoing_requests=64, max_surge_percent=100,
        logging_config=QUIET_LOGS, health_check_period_s=5, graceful_shutdown_timeout_s=30)
    # every deploy is a rolling restart (Serve manages versions itself; its public API sets none):
    # with a 100 % surge the new replicas load the new run while the old ones keep answering
    return deployment.bind()


def _keep(option: str, given: Any, running: Any, what: str) -> Any:
    """``running`` where ``given`` is None or the same; a one-line error where it differs."""
    if given is None or running is None or given == running:
        return running if given is None else given
    raise UserError(f"{option}: {what} is {running}, which a running Serve keeps (asked for {given}); "
                    "leave the option out, or delete the app (serve.delete / serve shutdown) to change it")


def running_prefix(app: str, details: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
                   ) -> str | None:
    """The route prefix the running ``app`` answers at: Serve's record, else the one its settings hold
    (None: neither tells, so a swap must be given it)."""
    details = serve_details() if details is None else details
    settings = current_settings(app) if settings is None else settings
    return ((details or {}).get("applications", {}).get(app) or {}).get("route_prefix") or settings.get("route_prefix")


def deploy(run: str, *, app: str = DEFAULT_APP, port: int | None = None, host: str | None = None,
           route_prefix: str | None = None, replicas: int | None = None, cpus: float | None = None,
           gpus: float | None = None, max_users: int | None = None, max_k: int | None = None,
           max_results: int | None = None) -> dict[str, Any]:
    """Start ``app`` serving ``run``, or swap a running ``app`` to ``run`` in place (rolling update).

    Options left ``None`` keep the running app's values: its route prefix, the host and port Serve
    listens on, its replicas, CPUs, GPUs and request limits (new app: route ``/``, 127.0.0.1:8000,
    1 replica, 1 CPU, 0 GPUs, :class:`~raymmrec.serving.Limits`' defaults). A host, port or route
    prefix that differs from the running one is an error: Serve keeps its address, and a swap that
    moved the app would leave its clients with 404s. Returns once every replica serves ``run``: the
    settings and ``url``, the address Serve reports for the app (None where it does not tell).
    """
    run = location(run)  # absolute: a replica (maybe on another node, in another directory) loads it
    _check_run(run)
    swap = app in running_apps()
    old = current_settings(app) if swap else {}
    details = serve_details()
    http = (details or {}).get("http_options") or {}
    host = _keep("--host", host, http.get("host"), "the host Serve listens on")
    port = _keep("--port", port, http.get("port"), "the port Serve listens on")
    if swap:
        route_prefix = _keep("--route-prefix", route_prefix, running_prefix(app, details, old),
                             f"app {app!r}'s route prefix")
        if route_prefix is None:
            raise UserError(f"--route-prefix: Serve does not tell app {app!r}'s route prefix; give the one it "
                            "runs at, which a swap keeps")
    route_prefix = route_prefix or "/"
    if not route_prefix.startswith("/"):
        raise UserError(f"--route-prefix: expected a path starting with /, got {route_prefix!r}")
    settings = {"run": run,
                "replicas": replicas if replicas is not None else old.get("replicas", 1),
                "cpus": cpus if cpus is not None else old.get("cpus", 1.0),
                "gpus": gpus if gpus is not None else old.get("gpus", 0.0),
                "route_prefix": route_prefix}
    try:
        given = {"max_users": max_users, "max_k": max_k, "max_results": max_results}
        limits = Limits.of({**old, **{key: v for key, v in given.items() if v is not None}})
    except ValueError as e:
        raise UserError(str(e)) from None
    settings.update(dataclasses.asdict(limits))
    if int(settings["replicas"]) < 1:
        raise UserError(f"--replicas: expected an integer >= 1, got {settings['replicas']}")
    if not http:  # Serve not started yet (a running one keeps its address whatever is passed here)
        host, port = host or "127.0.0.1", port or 8000
        serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    settings["data"], created = hold_data(run, app)  # the dataset's one read for this deploy, unless held already
    try:
        serve.run(build_app(settings), name=app, route_prefix=route_prefix, logging_config=QUIET_LOGS)
    except Exception as e:  # noqa: BLE001 - a replica that could not load the run
        if created:
            end_holders([settings["data"]])
        raise UserError(f"--run: app {app!r} could not serve {run}: {' '.join(str(e).split())[:400]}") from None
    # every replica serves the new data: the app's other holders (an older dataset's) are freed
    end_holders([name for name in app_holders(app) if name != settings["data"]])
    import ray

    ray.get(ray.get_actor(settings["data"], namespace=DATA_NAMESPACE).watch.remote(app))
    return {**settings, "app": app, "swapped_from": old.get("run"), "url": listen_url(serve_details(), app),
            "asked": f"http://{host}:{port}{'' if route_prefix == '/' else route_prefix.rstrip('/')}"}


def parser(prog: str = "raymmrec serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="trained run folder or URL (config.json + best.pt)")
    p.add_argument("--app", default=DEFAULT_APP, help=f"Serve application name (default {DEFAULT_APP}); "
                                                      "an existing one is swapped to --run in place")
    p.add_argument("--port", type=int, default=None,
                   help="HTTP port when this starts Serve (default 8000; a running Serve keeps its own)")
    p.add_argument("--host", default=None,
                   help="HTTP host when this starts Serve (default 127.0.0.1; a running Serve keeps its own)")
    p.add_argument("--route-prefix", default=None, help="URL prefix of a new app (default /; a swap keeps the app's)")
    p.add_argument("--replicas", type=int, default=None, help="replicas (default 1, or the running app's)")
    p.add_argument("--cpus-per-replica", type=float, default=None, help="CPUs per replica (default 1)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda: where the replicas rank (default: the running app's, else cpu)")
    p.add_argument("--gpus-per-replica", type=float, default=None,
                   help="with GPUs (--device cuda, or auto on a GPU cluster): a replica's share of one GPU (default 1)")
    d = Limits()
    p.add_argument("--max-users", type=int, default=None,
                   help=f"users per request (default {d.max_users:,}, or the running app's)")
    p.add_argument("--max-k", type=int, default=None,
                   help=f"items per user, k (default {d.max_k:,}, or the running app's)")
    p.add_argument("--max-results", type=int, default=None,
                   help=f"users x k per request (default {d.max_results:,}, or the running app's)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a running local cluster, "
                                                   "else Ray started here); 'local': always start Ray here")
    p.add_argument("--verbose", action="store_true", help="tracebacks with error messages")
    return p


def main(argv: list[str] | None = None, prog: str = "raymmrec serve") -> int:
    args = parser(prog).parse_args(argv)
    return run_main(lambda: _main(args), verbose=args.verbose)


def where(out: dict[str, Any]) -> str:
    """``at <url>`` where Serve reports the app's address, else a line saying this cannot tell."""
    if out["url"]:
        return f"at {out['url']}"
    return f"at an address Serve does not report (this command cannot tell; it asked for {out['asked']})"


def _main(args: argparse.Namespace) -> int:
    _check_run(location(args.run))
    owned = connect(args.address)
    gpus = args.gpus_per_replica  # neither option: the running app's, else the CPU
    if args.device is not None or gpus is not None:
        from raymmrec.ray.devices import cluster_gpus, device_and_gpus

        gpus = device_and_gpus(args.device, gpus, cluster_gpus(), "replica")[1]
    out = deploy(args.run, app=args.app, port=args.port, host=args.host, route_prefix=args.route_prefix,
                 replicas=args.replicas, cpus=args.cpus_per_replica, gpus=gpus,
                 max_users=args.max_users, max_k=args.max_k, max_results=args.max_results)
    what = f"swapped from {out['swapped_from']} to" if out["swapped_from"] else "serving"
    print(f"app {out['app']!r}: {what} {out['run']} ({out['replicas']} replica(s)) {where(out)}", flush=True)
    if out["url"]:
        print(f"  curl '{out['url']}/recommend?user=0&k=10'", flush=True)
    if owned:
        print("Ray was started by this command: serving until Ctrl-C", flush=True)
        try:
            while True:
                import time

                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
