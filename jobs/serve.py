"""Serve a trained run's live top-K recommendations with Ray Serve (or swap a running app to another run).

Local:    python jobs/serve.py --run runs/lightgcn-lfm2k --port 8000
Cluster:  ray job submit --working-dir . -- python jobs/serve.py --run s3://bucket/runs/bm3-lfm2k \
              --replicas 4 --cpus-per-replica 2
Swap:     ray job submit --working-dir . -- python jobs/serve.py --run s3://bucket/runs/bm3-lfm2k-forget-42

On a cluster the job deploys the application and ends; the application lives on in the cluster
(Serve is detached). Run again with another --run for the same --app: Serve's in-place rolling update,
no request fails and every answer after it comes from the new run. See raymmrec/ray/serve.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import job_main  # noqa: E402  (`raymmrec serve`, as its own program)

if __name__ == "__main__":
    sys.exit(job_main("serve", prog="jobs/serve.py"))
