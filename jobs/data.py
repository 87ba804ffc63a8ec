"""Build a dataset folder (MMRec layout) from public raw files with Ray Data: `raymmrec data amazon`.

Local:    python jobs/data.py amazon --ratings ratings_Baby.csv --meta meta_Baby.json.gz \
              --images image_features_Baby.b --out data/baby
Cluster:  ray job submit --working-dir . -- python jobs/data.py amazon --reviews s3://bucket/raw/Baby_Products.jsonl.gz \
              --meta s3://bucket/raw/meta_Baby_Products.jsonl.gz --out s3://bucket/datasets/baby23 --actors 4

Writes <out>/<name>.inter, text_feat.npy, image_feat.npy (with manifests), u_id_mapping.csv, i_id_mapping.csv
and amazon.json, all at once (a temporary folder renamed into place; on S3 the .inter file goes last).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import job_main  # noqa: E402  (`raymmrec data`, as its own program)

if __name__ == "__main__":
    sys.exit(job_main("data", prog="jobs/data.py"))
