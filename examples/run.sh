#!/usr/bin/env bash
# Set up the virtualenv and run the main job: pruning-aware training on scikit-learn's digits.
# Extra arguments go to the example, e.g. `bash examples/run.sh --epochs 10`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/.ci/setup-venv" | tail -n 1)
cd "$root"
export MPLBACKEND=Agg
exec "$venv/bin/python" examples/digits_pat.py --out runs/digits "$@"
