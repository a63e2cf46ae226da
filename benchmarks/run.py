"""Run the benchmarks and write the Markdown report.

Usage (from the repository root; ``bash benchmarks/run.sh`` builds the venv
with the pinned peers and calls this)::

    python -m benchmarks [--quick] [--only NAME ...] [--output PATH]

A full run writes ``docs/benchmarks.md``; ``--quick`` and ``--only`` print the
report and write a file only when ``--output`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ._harness import SectionReport, Sizes, peer_version, table, target_rows
from .sections import SECTIONS

__all__ = ["DESIGN_CHOICES", "build_report", "main", "run_sections"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
PEERS = ["token-bucket", "limits", "pyrate-limiter", "throttled-py", "aiolimiter", "redis"]

DESIGN_CHOICES: list[tuple[str, str, str]] = [
    (
        "A lock for each call in memory",
        "`MemoryBackend` holds one lock for the few microseconds of each call, so threads sharing a bucket never "
        "spend more than it holds.",
        "Every in-memory figure pays for that lock; token-bucket's `MemoryStorage` takes none and pays nothing, "
        'at the price of races its own docstring calls "mitigated but not completely eliminated".',
    ),
    (
        "The bucket keeps its memory slot",
        "A bucket on a `MemoryBackend` keeps its own slot of the backend and charges it under the backend's lock "
        "with the backend's own arithmetic (`_Slot.take`, `_model.try_take`), without the call and dict lookup.",
        "A slot says when it went stale (the idle sweep dropped it, another object of the name or a `reconfigure` "
        "changed its policy, a reservation waits), and then the request takes the ordinary path, unchanged.",
    ),
    (
        "A fast path for plain requests",
        "A plain request (a whole-number cost, no timeout, no `op` or `units`, one bandwidth, no listeners) makes "
        "its one `reserve` call straight from the front end, awaited on an asyncio store.",
        "The general flow, which handles timeouts, lanes, cost models and events, would make exactly that call "
        "and decide nothing else, so skipping it saves its overhead without changing the result.",
    ),
    (
        "One EVALSHA per operation, the state in one key",
        "Every bucket operation on Redis is one `EVALSHA` of a script that reads the state with one `GET` and "
        "writes it back with one `SET ... PX` (value and TTL together): one round trip, one atomic step.",
        "The state is one string of packed little-endian doubles (and the ring of recent calls), so the script "
        "neither parses nor formats the numbers every call reads and writes.",
    ),
    (
        "The server's clock",
        "The scripts read Redis `TIME`, so every host computes refills and start times on one clock, however "
        "far its own clock has drifted.",
        "It costs one command inside the script, not a round trip; a front end given a clock of its own (such "
        "as `ManualClock` in tests) passes its time instead.",
    ),
    (
        "A ring of call ids",
        "Each reserve and settle carries an 8-byte call id, and the bucket key keeps the last 32 calls that "
        "charged, so a retried call finds itself there and is answered again instead of charged twice.",
        "When a reply is lost, the backend gives the call's tokens back later in one step that uses the ring: "
        "a call that ran is refunded once, and one that has not arrived yet is marked so it charges nothing.",
    ),
    (
        "Coalescing concurrent reserves",
        "Reserves for one bucket that wait in one process at the same moment are sent as one script call that "
        "reserves for each in order, so round trips fall by the batch size with the same FIFO order and the "
        "same guarantee as separate calls.",
        "A lone caller has nobody to wait for and goes straight out, as without coalescing; `coalesce=False` "
        "turns it off.",
    ),
    (
        "hiredis as an optional extra",
        "redis-py reads replies in pure Python unless hiredis is installed, and `pip install "
        "'tokenbucket[redis-fast]'` adds it (`redis[hiredis]`) without making a compiled dependency a requirement.",
        "The Redis section measures ours on both parsers and scores ours against the peers on the parser the "
        "peers use.",
    ),
    (
        "First-come first-served reservations instead of retry loops",
        "A request that cannot start at once charges its cost at once (into debt if need be) and sleeps the "
        "computed delay, so requests start in the order they asked and nobody polls.",
        "With try-and-retry, small requests keep slipping in ahead of a large one; the fairness section "
        "measures how long a large request waits among small ones under both designs.",
    ),
]
"""The design choices the report explains: (name, two sentences)."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _redis_server_version() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        return "not found"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "unknown"


def run_sections(names: Sequence[str], sizes: Sizes, *, echo: bool = False) -> list[SectionReport]:
    """Run the named sections in report order; a section that crashes is reported, not raised."""
    reports: list[SectionReport] = []
    for name, bench in SECTIONS.items():
        if name not in names:
            continue
        started = time.monotonic()
        if echo:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            rep = bench(sizes)
        except Exception:
            rep = SectionReport(name, f"{name}: FAILED")
            rep.lines.extend(["```", traceback.format_exc().rstrip(), "```"])
        rep.notes.append(f"_Section time: {time.monotonic() - started:.1f} s._")
        if echo:
            print(f"[bench] {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        reports.append(rep)
    return reports


def build_report(reports: Sequence[SectionReport], sizes: Sizes, command: str) -> str:
    """The whole Markdown document: header, targets, then every section."""
    from tokenbucket import __version__

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{p} {peer_version(p)}" for p in PEERS)
    out = [
        "# Benchmarks",
        "",
        "Generated by the benchmark command below; do not edit by hand. Every figure is the median of rounds taken "
        "in one run, the libraries interleaved round by round, and throughput is reported as a ratio to ours "
        "(`ours ÷ this`: above 1 means ours is faster). The machine is shared and noisy: compare ratios, not "
        "absolute numbers.",
        "",
        f"- Date: {now}" + (" (**--quick**: tiny sizes, figures not meaningful)" if sizes.quick else ""),
        f"- Command: `{command}`",
        f"- Machine: nproc {_nproc()}, {_cpu_model()}, {platform.system()} {platform.release()}",
        f"- Load average at the end (1, 5, 15 min): {_load()}: other work shares these CPUs",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- tokenbucket {__version__}; peers: {versions}; redis-server {_redis_server_version()}",
        "",
    ]
    targets = [t for rep in reports for t in rep.targets]
    if targets:
        met = sum(1 for t in targets if t.met)
        missed = sum(1 for t in targets if t.met is False)
        out.extend(["## Targets", "", f"{met} met, {missed} missed, {len(targets) - met - missed} not measured.", ""])
        out.extend(table(["target", "goal", "this run", "verdict"], target_rows(targets)))
        out.append("")
    out.extend(["## Design choices", ""])
    out.extend(f"- **{name}.** {first} {second}" for name, first, second in DESIGN_CHOICES)
    out.append("")
    for rep in reports:
        out.append(rep.markdown())
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (seconds, not minutes); figures not meaningful"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SECTIONS),
        metavar="NAME",
        help=f"run one section: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--output", type=Path, help=f"where to write the report (default for a full run: {DEFAULT_OUTPUT})"
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick_sizes() if args.quick else Sizes.full()
    names = args.only or list(SECTIONS)
    command = os.environ.get("TB_BENCH_COMMAND") or shlex.join(
        ["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]
    )
    reports = run_sections(names, sizes, echo=True)
    report = build_report(reports, sizes, command)
    print(report)
    output = args.output
    if output is None and not args.quick and not args.only:
        output = DEFAULT_OUTPUT
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
        print(f"[bench] report written to {output}", file=sys.stderr)
    return 1 if any(rep.title.endswith("FAILED") for rep in reports) else 0
