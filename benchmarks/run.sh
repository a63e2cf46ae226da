#!/usr/bin/env bash
# The one benchmark command: bash benchmarks/run.sh [--quick] [--only NAME] [--output PATH]
# Builds benchmarks/.venv (git-ignored) with the project (editable) and the pinned peers,
# then runs `python -m benchmarks`, which prints the report and, for a full run,
# writes docs/benchmarks.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="benchmarks/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ benchmarks/requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[redis]" -r benchmarks/requirements.txt
    touch "$stamp"
fi
export TB_BENCH_COMMAND="bash benchmarks/run.sh${*:+ $*}"
exec "$venv/bin/python" -m benchmarks "$@"
