"""Train any registered method data-parallel with Ray Train.

Local:    python jobs/train.py --method lightgcn --data ../shared/data/lfm2k [--num-workers 2] [train.epochs=50 ...]
Cluster:  ray job submit --working-dir . -- python jobs/train.py --method bm3 --num-workers 4 --use-gpu \\
              --data s3://bucket/mmrec/baby --storage-path s3://bucket/raymmrec
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.ray.launch import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
