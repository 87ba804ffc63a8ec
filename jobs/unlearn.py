"""Forget users, items or interactions from a trained run (MMRecUn), each request its own Ray task.

Local:    python jobs/unlearn.py --run runs/bm3-lfm2k --request forget.parquet --gold
Cluster:  ray job submit --working-dir . -- python jobs/unlearn.py --run s3://bucket/runs/bm3-lfm2k \
              --request s3://bucket/requests/a.parquet --request s3://bucket/requests/b.parquet \
              --device cuda

Each request writes a new run folder beside the run (or under --output-dir) with the unlearned
weights, config, forget.parquet and report.json / report.md; the trained run is never altered.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import job_main  # noqa: E402  (`raymmrec unlearn`, as its own program)

if __name__ == "__main__":
    sys.exit(job_main("unlearn", prog="jobs/unlearn.py"))
