#!/usr/bin/env bash
# Install the library into .venv and run the demo. This is the README's main-job command.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
if [ -f examples/deals_app/pyproject.toml ]; then
  .venv/bin/python -m pip install --quiet -e examples/deals_app
  exec .venv/bin/deals-app demo "$@"
fi
exec .venv/bin/python examples/incident.py "$@"
