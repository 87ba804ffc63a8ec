"""Load benchmark of ``raymmrec serve``: live requests/s and latency against the bare ranking rate.

    python -m benchmarks.bench_serve --run /tmp/serve_bench/lightgcn-lfm2k [--requests 400]
        [--concurrency 1,4,16] [--batch-users 64] [--k 20] [--cpus-per-replica 1]

Deploys the run as a Serve application on 127.0.0.1 (a free port; a Ray cluster found through
``RAY_ADDRESS`` or ``ray start`` is used, else one is started here), then, at each concurrency level,
sends a bounded number of requests from that many client threads (keep-alive connections to
127.0.0.1 only) and prints requests/s, recommendations/s and p50/p99 latency for

* single: ``GET /recommend?user=U&k=K``, one user per request;
* batched: ``POST /recommend`` with ``--batch-users`` users per request;

and the recommendations/s of the bare ranking the service runs (:meth:`raymmrec.serving.Ranker.top_k`:
scoring tables computed once, one score matrix, training items masked, top-K) for the same users in
the same chunks, in this process with ``--cpus-per-replica`` threads. The figure is the ratio of the
best batched rate to the bare rate. The app is deleted at the end. Prints a report and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time

import numpy as np

from benchmarks.common import emit_figures, free_port, print_environment


def load(port: int, bodies: list[tuple[str, str, bytes | None]], concurrency: int) -> tuple[float, np.ndarray, int]:
    """Send every (method, path, body) once from ``concurrency`` threads; (seconds, latencies, failures)."""
    lat = np.zeros(len(bodies))
    failed = [0]
    nxt = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            method, path, body = bodies[i]
            t = time.perf_counter()
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            r = conn.getresponse()
            r.read()
            lat[i] = time.perf_counter() - t
            if r.status != 200:
                failed[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat, failed[0]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_serve", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="trained run folder")
    p.add_argument("--requests", type=int, default=400, help="requests per kind and concurrency level")
    p.add_argument("--concurrency", default="1,4,16", help="client threads, comma-separated")
    p.add_argument("--batch-users", type=int, default=64, help="users per batched POST")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    from raymmrec.ray.serve import connect, deploy
    from raymmrec.serving import Ranker

    torch.set_num_threads(max(1, int(args.cpus_per_replica)))
    env = print_environment()
    ranker = Ranker.load(args.run, device="cpu")
    rng = np.random.default_rng(args.seed)
    levels = [int(c) for c in args.concurrency.split(",")]
    n, b, k = args.requests, args.batch_users, args.k
    singles = rng.integers(0, ranker.n_users, size=n).tolist()
    batches = [rng.integers(0, ranker.n_users, size=b).tolist() for _ in range(n)]

    # the bare rate: the service's own ranking call on the same users in the same chunks, in this process
    ranker.top_k(batches[0], k)  # warm-up
    t = time.perf_counter()
    for users in batches:
        ranker.top_k(users, k)
    bare_batched = n * b / (time.perf_counter() - t)
    t = time.perf_counter()
    for u in singles:
        ranker.top_k([u], k)
    bare_single = n / (time.perf_counter() - t)

    from ray import serve

    if os.environ.get("RAY_ADDRESS"):
        connect()
    else:  # a cluster of its own (never one that another program started on this machine)
        import ray

        ray.init(address="local", num_cpus=max(2, int(args.replicas * args.cpus_per_replica)),
                 log_to_driver=False, include_dashboard=False)
    port = free_port()
    app = "bench-serve"
    info = deploy(args.run, app=app, port=port, replicas=args.replicas, cpus=args.cpus_per_replica)
    port = int(info["url"].rsplit(":", 1)[1].split("/")[0])
    print(f"# {ranker.info['method']} on {ranker.info['dataset']} ({ranker.n_users} users, {ranker.n_items} items), "
          f"k={k}, {args.replicas} replica(s) x {args.cpus_per_replica:g} CPU, {os.cpu_count()} CPUs here, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"bare ranking (Ranker.top_k): {bare_single:,.0f} recs/s one user per call; "
          f"{bare_batched:,.0f} recs/s {b} users per call")
    print(f"{'kind':8s} {'conc':>4s} {'req/s':>8s} {'recs/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'failed':>6s}")
    best, rows = 0.0, []
    try:
        for kind in ("single", "batched"):
            for c in levels:
                if kind == "single":
                    bodies = [("GET", f"/recommend?user={u}&k={k}", None) for u in singles]
                    per = 1
                else:
                    bodies = [("POST", "/recommend", json.dumps({"users": us, "k": k}).encode()) for us in batches]
                    per = b
                load(port, bodies[: max(c * 2, 8)], c)  # warm-up: connections, the batcher
                secs, lat, failed = load(port, bodies, c)
                rps = len(bodies) / secs
                if kind == "batched":
                    best = max(best, rps * per)
                rows.append({"kind": kind, "concurrency": c, "requests_per_s": rps, "recs_per_s": rps * per,
                             "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                             "failed": failed})
                print(f"{kind:8s} {c:4d} {rps:8.1f} {rps * per:9,.0f} {np.percentile(lat, 50) * 1e3:8.1f} "
                      f"{np.percentile(lat, 99) * 1e3:8.1f} {failed:6d}", flush=True)
    finally:
        serve.delete(app)
    print(f"batched served / bare ranking: {best:,.0f} / {bare_batched:,.0f} recs/s = {best / bare_batched:.2f}")
    emit_figures(env, {"run": args.run, "k": k, "batch_users": b, "replicas": args.replicas,
                       "cpus_per_replica": args.cpus_per_replica, "bare_single_recs_per_s": bare_single,
                       "bare_batched_recs_per_s": bare_batched, "rows": rows, "best_batched_recs_per_s": best,
                       "served_over_bare": best / bare_batched})
    return 0


if __name__ == "__main__":
    sys.exit(main())
