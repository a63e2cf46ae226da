"""Smoke test of the benchmarks: every section runs once at tiny size and reports sane figures.

No timing is asserted. Peers missing from this venv are reported by the
benchmark code itself as "peer not installed"; a missing Redis as "not available".
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmarks live beside the package, not inside it

from benchmarks import run as bench_run  # noqa: E402
from benchmarks._harness import SectionReport, Sizes, overspend  # noqa: E402
from benchmarks.sections import SECTIONS  # noqa: E402

TITLES = {
    "memory": "## 1. In memory",
    "asyncio": "## 2. asyncio",
    "redis": "## 3. Redis",
    "concurrent": "## 3b. Redis, ",
    "fairness": "## 4. Fairness",
    "accuracy": "## 5. Accuracy",
    "scale": "## 6. Scale",
    "footprint": "## 7. Memory",
}


def check_figures(rep: SectionReport) -> None:
    for name, value in rep.figures.items():
        assert math.isfinite(value), (name, value)
        if "overspend" in name:
            assert value == 0, f"{rep.key}: {name} = {value}"
        elif "p99" in name:
            assert value >= 0, (name, value)
        else:
            assert value > 0, (name, value)


@pytest.fixture(scope="module")
def reports() -> dict[str, SectionReport]:
    return {rep.key: rep for rep in bench_run.run_sections(list(SECTIONS), Sizes.quick_sizes())}


@pytest.mark.realtime
@pytest.mark.parametrize("name", list(SECTIONS))
def test_section_runs_and_reports_sane_figures(reports: dict[str, SectionReport], name: str) -> None:
    rep = reports[name]
    text = rep.markdown()
    assert text.startswith(TITLES[name]), text
    assert "Traceback" not in text, text
    assert "failed: " not in text, text
    check_figures(rep)


@pytest.mark.realtime
def test_our_in_process_figures_are_always_measured(reports: dict[str, SectionReport]) -> None:
    assert reports["memory"].figures["ours_ops_per_s"] > 0
    assert reports["asyncio"].figures["ours_ops_per_s"] > 0
    assert reports["footprint"].figures["bytes_per_bucket"] > 0
    for mode in ("threads", "asyncio"):
        assert reports["accuracy"].figures[f"memory_{mode}_overspend"] == 0


@pytest.mark.realtime
def test_the_concurrent_section_checks_its_ledger(reports: dict[str, SectionReport]) -> None:
    rep = reports["concurrent"]
    assert "Redis not available" not in rep.markdown()  # the suite always has a redis-server (scripts/test.sh)
    for mode in ("threads", "asyncio"):
        assert rep.figures[f"ledger_{mode}_overspend"] == 0
        assert rep.figures[f"{mode}_ours_ops_per_s"] > 0
    assert "| limits |" in rep.markdown()  # measured, or "peer not installed"


@pytest.mark.realtime
def test_missing_peers_are_reported_not_skipped(reports: dict[str, SectionReport]) -> None:
    memory = reports["memory"].markdown()
    for name in ("token-bucket", "limits", "pyrate-limiter", "throttled-py"):
        assert f"| {name} |" in memory


@pytest.mark.realtime
def test_report_has_every_section(reports: dict[str, SectionReport]) -> None:
    text = bench_run.build_report(list(reports.values()), Sizes.quick_sizes(), "python -m benchmarks --quick")
    assert text.startswith("# Benchmarks")
    assert "- Command: `python -m benchmarks --quick`" in text
    assert "- Machine: nproc" in text
    assert "- Python: " in text
    for title in TITLES.values():
        assert title in text
    assert text.index("## Targets") < text.index("## Design choices") < text.index(TITLES["memory"])


def test_each_design_choice_is_two_sentences() -> None:
    for name, *sentences in bench_run.DESIGN_CHOICES:
        assert len(sentences) == 2, name
        for sentence in sentences:
            assert sentence.endswith("."), (name, sentence)
            assert re.search(r"[^.]\. [A-Z]", sentence) is None, (name, sentence)  # one sentence each


def test_main_writes_only_where_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.md"
    assert bench_run.main(["--quick", "--only", "footprint", "--output", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "## 7. Memory" in text
    assert "## 1. In memory" not in text
    assert text in capsys.readouterr().out


def test_overspend_counts_starts_beyond_the_allowance() -> None:
    assert overspend([1.0, 2.0, 3.0], t0=0.0, rate=1.0, initial=0.0) == 0
    assert overspend([1.0, 1.5, 2.0], t0=0.0, rate=1.0, initial=0.0) == 1
    assert overspend([0.0, 0.0], t0=0.0, rate=1.0, initial=2.0) == 0
    assert overspend([], t0=0.0, rate=1.0, initial=0.0) == 0
