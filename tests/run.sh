#!/usr/bin/env bash
# Set up the virtualenv and run the whole test-suite (slow tests included) from the checkout.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow" -x`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/.ci/setup-venv" | tail -n 1)
cd "$root"
export MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
set +e
"$venv/bin/python" -m pytest -q -rs --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$status"
