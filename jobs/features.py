"""Extract item features (text, image, image2text) from a catalogue with Ray Data encoder actors.

Local:    python jobs/features.py --catalog ../shared/data/lfm2k/item_text.tsv --out /tmp/lfm2k --modality text
Cluster:  ray job submit --working-dir . -- python jobs/features.py --catalog s3://bucket/images/ \
              --out s3://bucket/mydataset --modality image --actors 8 --device cuda --batch-size 256

Writes <out>/<modality>_feat.npy (row i = item i) and <modality>_feat.manifest.json (encoder, preprocessing,
missing/broken items, time); ids beyond an existing table are appended to it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from raymmrec.cli import job_main  # noqa: E402  (`raymmrec features`, as its own program)

if __name__ == "__main__":
    sys.exit(job_main("features", prog="jobs/features.py"))
