"""Rewrite the output shown in ``console`` blocks with what the commands print today.

Run from the repository root, naming the pages to refresh::

    .venv/bin/python docs/scripts/refresh_console.py docs/case-study.md docs/how-to/deals-app.md

Only blocks whose shown output is exact are rewritten: a block whose output
contains ``...`` (a doctest ellipsis for numbers that move, such as a Redis
bucket refilling in real time) or that carries a ``not-run`` marker is left
alone, as is a block that needs a server (the test supplies one). Read the
diff before committing: the point of the docs test is that a changed output is
noticed, not silently accepted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_docs import blocks, console_sessions  # noqa: E402


def refresh(page: Path) -> int:
    """Rewrite ``page`` in place; return how many commands' outputs changed."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONWARNINGS": "ignore",
        "COLUMNS": "200",
    }
    lines = page.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = 0
    # Work from the last block up, so earlier line numbers stay valid.
    for block in reversed([b for b in blocks(page) if b.lang == "console" and b.skip_reason is None]):
        sessions = console_sessions(block)
        if any("..." in expected for _, expected in sessions):
            continue
        indent = lines[block.line - 1][: len(lines[block.line - 1]) - len(lines[block.line - 1].lstrip())]
        body: list[str] = []
        for command, expected in sessions:
            out = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True).stdout
            out = "\n".join(line.rstrip() for line in out.strip("\n").splitlines())
            changed += out != expected.strip("\n")
            body.extend(_command_lines(command))
            body.extend(out.splitlines() if out else [])
        first, last = block.line, block.line + len(block.source.splitlines())
        lines[first:last] = [f"{indent}{line}\n" if line else "\n" for line in body]
    page.write_text("".join(lines), encoding="utf-8")
    return changed


def _command_lines(command: str) -> list[str]:
    """``$ command``, wrapped before each ``--job`` the way the pages show it."""
    parts = command.split(" --job ")
    if len(parts) == 1:
        return [f"$ {command}"]
    head, jobs = parts[0], parts[1:]
    shown = [f"$ {head} \\"]
    for n, job in enumerate(jobs):
        shown.append(f"    --job {job}" + (" \\" if n < len(jobs) - 1 else ""))
    return shown


def main(argv: list[str]) -> int:
    for name in argv:
        print(f"{name}: {refresh(Path(name))} output(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
