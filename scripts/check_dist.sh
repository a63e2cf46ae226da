#!/usr/bin/env bash
# Build the sdist and wheel, install each into a clean venv, and use the package there.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m build --outdir "$work/dist" . >/dev/null
command -v redis-server >/dev/null || { echo "check_dist: redis-server is not on PATH (scripts/test.sh installs it)" >&2; exit 1; }
for artifact in "$work"/dist/*.whl "$work"/dist/*.tar.gz; do
  python3 -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet "tokenbucket[redis] @ file://$artifact"
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

# The Lua scripts are package data: a Redis bucket works from the installed copy, on a private server.
import shutil
import socket
import subprocess
import tempfile
import time

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
with tempfile.TemporaryDirectory() as tmp:
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )
    try:
        backend = tokenbucket.RedisBackend.from_url(f"redis://127.0.0.1:{port}/0")
        deadline = time.monotonic() + 10
        while True:
            try:
                backend.client.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        shared = tokenbucket.TokenBucket("smoke", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend)
        shared.acquire(20).settle(1000)
        assert 699 < shared.snapshot().debt <= 700, shared.snapshot()
        assert shared.try_acquire(1) is None
        backend.close()
    finally:
        server.terminate()
        server.wait(10)
print("installed tokenbucket", tokenbucket.__version__, "from", tokenbucket.__file__, "(memory and Redis buckets work)")
PY
  )
  rm -rf "$work/venv"
  echo "ok: $(basename "$artifact")"
done
