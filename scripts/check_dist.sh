#!/usr/bin/env bash
# Build the sdist and wheel, install each into a clean venv, and use the package there.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m build --outdir "$work/dist" . >/dev/null
for artifact in "$work"/dist/*.whl "$work"/dist/*.tar.gz; do
  python3 -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet "$artifact"
  # Run from an empty folder so the installed copy is used, not the checkout.
  (cd "$work" && "$work/venv/bin/python" - <<'PY'
import importlib.metadata as md
import math

import tokenbucket
from tokenbucket.testing import ManualClock

clock = ManualClock()
bucket = tokenbucket.TokenBucket("smoke", rate="5/minute", capacity=300, overdraft=math.inf, clock=clock)
bucket.acquire(20).settle(1000)
assert bucket.snapshot().debt == 700, bucket.snapshot()
bucket.acquire(20)  # waits in virtual time until the balance is back to 1 token
assert clock.now() == 8412.0, clock.now()
assert md.version("tokenbucket") == tokenbucket.__version__
assert (md.files("tokenbucket") or []) and any(str(f).endswith("py.typed") for f in md.files("tokenbucket") or [])
print("installed tokenbucket", tokenbucket.__version__, "from", tokenbucket.__file__)
PY
  )
  rm -rf "$work/venv"
  echo "ok: $(basename "$artifact")"
done
