"""`raymmrec train` on Ray Train workers (1 unless --num-workers says otherwise), for `ray job submit`.

Local:    python jobs/train.py --method lightgcn --data ../shared/data/lfm2k [--num-workers 2] [train.epochs=50 ...]
Cluster:  ray job submit --working-dir . -- python jobs/train.py --method bm3 --num-workers 4 --device cuda \\
              --data s3://bucket/mmrec/baby --output-dir s3://bucket/raymmrec

The same options as `raymmrec train` (see `raymmrec train --help`); the cluster is the one `ray job submit`
names (RAY_ADDRESS), else --address, else a local Ray.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import train_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(train_main(prog="jobs/train.py", default_workers=1))
