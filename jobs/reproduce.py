"""Paper grids of several methods on several datasets through Ray Tune, and one comparison table.

ray job submit --working-dir . -- python jobs/reproduce.py --methods bpr,lightgcn,vbpr,bm3 \
    --data s3://bucket/lfm2k,s3://bucket/dbbook --output-dir s3://bucket/reproduce data.rating_threshold=1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import job_main  # noqa: E402  (`raymmrec reproduce`, as its own program)

if __name__ == "__main__":
    sys.exit(job_main("reproduce", prog="jobs/reproduce.py"))
