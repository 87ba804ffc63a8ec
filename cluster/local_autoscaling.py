"""A Ray cluster that autoscales on this machine: Ray's autoscaler with its fake node provider, which
starts each worker node as a local raylet (with its own object store) when jobs ask for resources.

    python cluster/local_autoscaling.py up       # the head of cluster/local-fake.yaml, no worker node yet
    python cluster/local_autoscaling.py status   # `ray status`: nodes, resources in use, pending demand
    python cluster/local_autoscaling.py down     # stops this cluster's processes (no other Ray's)

Not `ray up cluster/local-fake.yaml`: Ray 2.60 does not drive this provider from `ray up` (its wheel lacks
the provider's defaults file, and `ray up` would start the head over SSH); the head must be started
with ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``, which this script does
(raymmrec.ray.local_cluster), from this checkout, which every node then runs. docs/clusters.md walks
through a session.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's raymmrec, installed or not

from raymmrec.ray.local_cluster import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
