"""`raymmrec train --method bm3` on Ray Train workers (1 unless --num-workers says otherwise), for `ray job submit`.

Local:    python jobs/train_bm3.py [--data ml100k] [--num-workers 2] [train.epochs=50 ...]
Cluster:  ray job submit --working-dir . -- python jobs/train_bm3.py --num-workers 4 --device cuda \\
              --output-dir s3://bucket/raymmrec
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import train_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(train_main(prog="jobs/train_bm3.py", default_method="bm3", default_workers=1))
