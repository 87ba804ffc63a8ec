"""Sweep a method's hyperparameters with Ray Tune (the authors' grid, or a wide space with ASHA).

Local:    python jobs/tune.py --method bm3 --data ../shared/data/lfm2k --max-concurrent 2
Cluster:  ray job submit --working-dir . -- python jobs/tune.py --method bm3 --data s3://bucket/lfm2k \
              --output-dir s3://bucket/sweeps --gpus-per-trial 0.5

The sweep folder (<storage>/<name>) gets trials.csv/.md, best_config.yaml, best/, plots/ and a
TensorBoard log per trial; rerunning the same command resumes an interrupted sweep.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import job_main  # noqa: E402  (`raymmrec tune`, as its own program)

if __name__ == "__main__":
    sys.exit(job_main("tune", prog="jobs/tune.py"))
