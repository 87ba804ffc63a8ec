#!/usr/bin/env bash
# The GPU suite's entry: installs what benchmarks/gpu_prep.sh prepared (only what this Python lacks), then runs
# python -m benchmarks.gpu_suite with the same arguments. On a GPU machine with Python 3.12 and a CUDA torch:
#   bash benchmarks/gpu_suite.sh              (every check, figures in $OUT or runs/gpu-suite-*)
#   bash benchmarks/gpu_suite.sh --cpu-smoke  (the same checks on tiny data on the CPU; CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
site=${GPU_SUITE_SITE:-/tmp/site}
is312() { "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; }
if ! "$py" -c 'import ray' 2>/dev/null && [[ ! -d $site/ray && -f .gpu-ray/install.sh ]]; then
  if is312; then
    echo "installing the Ray bundle (.gpu-ray) into $site"
    bash .gpu-ray/install.sh && touch "$site/.gpu-suite" || echo "warning: the Ray bundle did not install; Ray checks will skip"
  else
    echo "the Ray bundle in .gpu-ray is for Python 3.12; this is $("$py" -V 2>&1): not installed"
  fi
fi
if [[ -d .gpu-prep/whl ]]; then
  PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$py" -m benchmarks.gpu_suite --install-wheels .gpu-prep/whl --site "$site"
fi
if [[ -f $site/.gpu-suite ]]; then export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"  # raymmrec and benchmarks from this checkout, not installed
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
# the suite's Ray instances in a folder of their own: ray.init() would otherwise join any Ray another
# program started on this machine with `ray start` (found through the default temp folder)
export RAY_TMPDIR=${RAY_TMPDIR:-$(mktemp -d /tmp/raygsXXXX)}
exec "$py" -m benchmarks.gpu_suite "$@"
