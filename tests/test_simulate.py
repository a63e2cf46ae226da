"""`tokenbucket.simulate` and the ``simulate`` command, checked against figures computed by hand."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import tokenbucket._simulate
from tokenbucket import ConfigurationError, CostExceedsCapacity, JobSpec, SimulationResult, simulate
from tokenbucket._simulate import main, parse_duration

KEEPA = {"capacity": 300, "overdraft": math.inf}  # 5/minute refills one token every 12 s
INCIDENT = ["products:cost=20,batch=50,continuous", "deals:cost=5,every=60,gate=20"]


class TestHandComputed:
    def test_strict_one_job_constant_cost(self) -> None:
        # 300 tokens pay 15 calls of 20 at t=0; then 20 tokens refill every 240 s: calls at 240, 480, ..., 7200.
        result = simulate("5/minute", ["a:cost=20,continuous"], duration="2h", capacity=300)
        job = result.job("a")
        assert job.calls == 15 + 30
        assert job.units == 45
        assert job.tokens == 45 * 20
        assert job.calls_per_hour == pytest.approx(22.5)
        assert job.longest_wait == pytest.approx(240)
        assert job.first_call == 0
        # strict mode never goes below zero: the balance touches 0 only at instants
        assert result.peak_debt == 0
        assert result.peak_debt_at is None
        assert result.time_at_or_below_zero == pytest.approx(0, abs=1e-6)
        assert not job.starved
        assert job.verdict == "ok"

    def test_keepa_rule_one_job_constant_cost(self) -> None:
        # 15 calls take 300 to 0; the 16th starts at a balance of 1 (t=12 s) and leaves -19; then one call
        # every 240 s at 12 + 240k <= 7200, k = 1..29. Each leaves the balance at or below zero for 228 s.
        result = simulate("5/minute", ["a:cost=20,continuous"], duration="2h", **KEEPA)
        job = result.job("a")
        assert job.calls == 15 + 1 + 29
        assert [t for t, _ in job.progress[14:18]] == pytest.approx([0, 12, 252, 492])
        assert result.peak_debt == pytest.approx(19)
        assert result.peak_debt_at == pytest.approx(12)
        assert result.time_at_or_below_zero == pytest.approx(30 * 228)

    def test_incident_two_hours(self) -> None:
        # products: 50 ASINs × 20 = 1000 tokens from a full bucket of 300 -> -700 at t=0; its next call needs the
        # balance back at 1: 701 × 12 s = 8412 s, after the end. deals' gate (balance >= 20) never opens.
        result = simulate("5/minute", INCIDENT, duration="2h", **KEEPA)
        products, deals = result.job("products"), result.job("deals")
        assert products.calls == 1
        assert products.units == 50
        assert products.tokens == 1000
        assert products.queued == 1  # the second call is reserved and waiting
        assert not products.starved  # it waits for its own cost, nobody else is served meanwhile
        assert products.served_others == 0
        assert deals.runs == 121  # t = 0, 60, ..., 7200
        assert deals.calls == 0
        assert deals.skipped == {"gate": 121}
        assert deals.starved
        assert deals.verdict == "never ran"
        assert result.peak_debt == pytest.approx(700)
        assert result.peak_debt_at == 0
        assert result.time_at_or_below_zero == pytest.approx(7200)
        assert result.starved == ("deals",)

    def test_incident_six_hours_peaks_at_minus_999(self) -> None:
        # Later calls start at a balance of 1 and leave -999: at 8412 s, then 1000 × 12 s later at 20412 s.
        result = simulate("5/minute", INCIDENT, duration="6h", **KEEPA)
        products = result.job("products")
        assert products.progress == ((0.0, 50), (8412.0, 100), (20412.0, 150))
        assert result.peak_debt == pytest.approx(999)
        assert result.peak_debt_at == pytest.approx(8412)
        assert result.job("deals").calls == 0

    def test_the_fix_waiting_and_planned_batches(self) -> None:
        # deals wait their turn and products use one-bucket batches (15 × 20 = 300): nobody starves, and the
        # debt never exceeds one batch started at a balance of 1: 299.
        result = simulate(
            "5/minute", ["products:cost=20,batch=planner,continuous", "deals:cost=5,every=5m"], duration="6h",
            **KEEPA,
        )  # fmt: skip
        deals = result.job("deals")
        assert deals.calls > 0.75 * deals.runs
        assert result.starved == ()
        assert result.peak_debt == pytest.approx(299)
        # under Keepa's rule a deal queued behind a 300-token reservation waits for it to start and for the
        # balance to climb back to 1 afterwards: up to two batches of refill (2 h), never more
        assert deals.longest_wait <= 2 * 3600 + 13 * 60

    def test_ghost_lock_stalls_the_job(self) -> None:
        # a runs every minute from 0 to 29 min (30 calls); from 30 min its lock is held by a crashed holder.
        result = simulate(
            "5/minute", ["a:cost=1,every=60,ghost_lock=30m", "b:cost=1,every=60"], duration="2h", capacity=300,
            stall_after="1h",
        )  # fmt: skip
        a, b = result.job("a"), result.job("b")
        assert a.calls == 30
        assert a.skipped == {"lock": 91}  # 30 min ... 120 min
        assert a.longest_wait == pytest.approx(5400)
        assert a.starved
        assert a.verdict == "stalled 90m"
        assert b.calls == 121
        assert not b.starved

    def test_lock_with_ttl_recovers(self) -> None:
        result = simulate(
            "5/minute", ["a:cost=1,every=60,ghost_lock=30m,lock_ttl=10m", "b:cost=1,every=60"], duration="2h",
            capacity=300, stall_after="1h",
        )  # fmt: skip
        a = result.job("a")
        assert a.skipped == {"lock": 10}  # 30 .. 39 min
        assert a.calls == 121 - 10
        assert a.longest_wait == pytest.approx(600)
        assert not a.starved

    def test_crash_kills_the_waiting_run_without_refund(self) -> None:
        # x's run at t=0 waits for 100 tokens of an empty strict bucket (1200 s); its holder crashes at 600 s.
        result = simulate("5/minute", ["x:cost=100,every=1h,ghost_lock=600"], duration="1h", capacity=300, initial=0)
        x = result.job("x")
        assert x.calls == 0
        assert x.skipped == {"crash": 1, "lock": 1}  # the run at 3600 s finds the lock held
        # the dead reservation's 100 tokens are spent: at 1 h the balance is 300 refilled - 100 = 200
        assert result.final_balance == pytest.approx(200)

    def test_planner_and_fit_size_batches_to_one_bucket(self) -> None:
        # one full bucket (300) pays 15 units of 20
        result = simulate(
            "5/minute", ["p:cost=20,batch=planner,continuous", "f:cost=20,batch=fit,every=1h"], duration="2h",
            **KEEPA,
        )  # fmt: skip
        p, f = result.job("p"), result.job("f")
        assert p.units == 15 * p.calls
        assert p.calls >= 2
        assert f.units == 15 * f.calls
        assert f.calls >= 1
        # p spends the bucket at 0; f (arrived at 0 too) starts at a balance of 1 after 12 s; p's next 300
        # tokens are reserved behind f: 301 × 12 s = 3612 s.
        assert [t for t, _ in p.progress[:2]] == pytest.approx([0, 3612])
        assert f.progress[0][0] == pytest.approx(12)

    def test_timeout_skips_runs_that_would_wait_too_long(self) -> None:
        # strict, empty bucket, 60 tokens per run: each run would wait 720 s > timeout 300 s -> skipped
        result = simulate("5/minute", ["t:cost=60,every=10m,timeout=5m"], duration="1h", capacity=300, initial=0)
        t = result.job("t")
        assert t.calls > 0
        assert t.skipped.get("timeout", 0) > 0
        assert t.runs == t.calls + t.skipped["timeout"] + t.queued


class TestNoiseAndArrivals:
    def test_noise_charges_within_bounds_and_is_settled(self) -> None:
        result = simulate("1/second", ["n:cost=100,every=200,noise=0.5"], duration="2000", capacity=1000, seed=3)
        n = result.job("n")
        assert n.calls == 11
        assert n.tokens != 100 * n.calls
        assert 50 * n.calls <= n.tokens <= 150 * n.calls
        # strict and refilled faster than spent: the final balance is what the upstream really charged minus refill
        assert result.final_balance <= 1000

    def test_same_seed_same_result_other_seed_differs(self) -> None:
        jobs = ["p:cost=3,poisson=60", "q:cost=7,poisson=300,noise=0.3"]
        a = simulate("5/minute", jobs, duration="10h", capacity=300, seed=7)
        b = simulate("5/minute", jobs, duration="10h", capacity=300, seed=7)
        c = simulate("5/minute", jobs, duration="10h", capacity=300, seed=8)
        assert a == b
        assert a.job("p").runs != c.job("p").runs or a.job("q").tokens != c.job("q").tokens
        assert 500 <= a.job("p").runs <= 700  # mean gap 60 s over 10 h: 600 expected (fixed seed)

    def test_start_offset_and_call_seconds(self) -> None:
        result = simulate("10/second", ["s:cost=1,every=100,start=50,call_seconds=30"], duration="1000", capacity=10)
        s = result.job("s")
        assert [t for t, _ in s.progress] == pytest.approx([50 + 100 * k for k in range(10)])


class TestValidation:
    def test_fixed_batch_that_can_never_start_is_an_error_up_front(self) -> None:
        with pytest.raises(ConfigurationError, match=r"batch 50 × 20 = 1000 tokens can never start"):
            simulate("5/minute", ["p:cost=20,batch=50"], duration="1h", capacity=300)

    def test_single_unit_too_expensive(self) -> None:
        with pytest.raises(CostExceedsCapacity):
            simulate("5/minute", ["p:cost=400,batch=planner"], duration="1h", capacity=300)

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("x:colour=red", "unknown key 'colour'"),
            ("x:every=1m,poisson=2m", "not both"),
            ("x:batch=0", "batch must be at least 1"),
            ("x:batch=many", "not a whole number"),
            ("x:cost=-1", "zero or more"),
            ("x:every", "needs a value"),
            ("x:noise=2", "fraction"),
            (":cost=1", "job name"),
            ("x:cost=0", "call without end"),
        ],
    )
    def test_bad_job_specs(self, spec: str, message: str) -> None:
        with pytest.raises(ConfigurationError, match=message):
            simulate("5/minute", [spec], duration="1h")

    def test_duplicate_names_and_bad_duration(self) -> None:
        with pytest.raises(ConfigurationError, match="must differ"):
            simulate("5/minute", ["a", "a"], duration="1h")
        with pytest.raises(ConfigurationError, match="cannot read duration"):
            simulate("5/minute", ["a"], duration="soon")
        with pytest.raises(ConfigurationError, match="above zero"):
            simulate("5/minute", ["a"], duration=0)

    def test_parse_duration(self) -> None:
        assert parse_duration("90") == 90
        assert parse_duration("90s") == 90
        assert parse_duration("15m") == 900
        assert parse_duration("1h30m") == 5400
        assert parse_duration("1d") == 86400
        assert parse_duration(2.5) == 2.5

    def test_job_spec_parse(self) -> None:
        spec = JobSpec.parse("deals:cost=5,every=1m,gate=20,ghost_lock=2h,lock_ttl=30s,batch=planner")
        assert spec == JobSpec("deals", cost=5, every=60, gate=20, ghost_lock=7200, lock_ttl=30, batch="planner")
        assert spec.kind == "gate"
        assert spec.arrival == "every 60s"


class TestOutput:
    def test_result_is_frozen(self) -> None:
        result = simulate("5/minute", ["a:cost=20"], duration="1h", capacity=300)
        assert isinstance(result, SimulationResult)
        with pytest.raises(AttributeError):
            result.peak_debt = 1  # type: ignore[misc]

    def test_table_names_the_starved(self) -> None:
        table = simulate("5/minute", INCIDENT, duration="2h", **KEEPA).table()
        assert "peak debt 700 tokens" in table
        assert "STARVED: never ran" in table
        assert table.splitlines()[-1].endswith(": deals")

    def test_cli_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["--rate", "5/minute", "--capacity", "300", "--overdraft", "inf", "--duration", "2h"]
        for job in INCIDENT:
            argv += ["--job", job]
        code = main([*argv, "--json"])
        data = json.loads(capsys.readouterr().out)
        assert code == 1  # a job starved
        assert data["peak_debt"] == 700
        assert data["overdraft"] == "inf"
        assert data["starved"] == ["deals"]
        assert [j["calls"] for j in data["jobs"]] == [1, 0]
        assert "balance" not in data
        main([*argv, "--json", "--series"])
        series = json.loads(capsys.readouterr().out)
        assert series["balance"][0] == [0.0, 300.0]
        assert series["jobs"][0]["progress"] == [[0.0, 50]]

    def test_cli_exit_codes(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--rate", "5/minute", "--duration", "1h", "--job", "a:cost=1,every=60"]) == 0
        assert main(["--rate", "5/minute", "--duration", "1h", "--job", "a:cost=99,batch=9"]) == 2
        assert "can never start" in capsys.readouterr().err

    @pytest.mark.parametrize(("suffix", "magic"), [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<svg")])
    def test_plot(self, tmp_path: Path, suffix: str, magic: bytes, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / f"incident.{suffix}"
        argv = ["--rate", "5/minute", "--capacity", "300", "--overdraft", "inf", "--duration", "2h"]
        for job in INCIDENT:
            argv += ["--job", job]
        main([*argv, "--plot", str(out)])
        data = out.read_bytes()
        assert len(data) > 1000
        if suffix == "png":
            assert data.startswith(magic)
        else:
            assert magic in data[:2000]
            assert data.rstrip().endswith(b"</svg>")
        assert f"plot written to {out}" in capsys.readouterr().out

    def test_plot_rejects_other_formats(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code = main(["--rate", "5/minute", "--duration", "1h", "--job", "a", "--plot", str(tmp_path / "x.pdf")])
        assert code == 2
        assert ".png or .svg" in capsys.readouterr().err

    def test_module_runs_standalone(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "tokenbucket._simulate", "--rate", "5/minute", "--capacity", "300",
             "--overdraft", "inf", "--duration", "2h", "--job", INCIDENT[0], "--job", INCIDENT[1]],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == ""  # no warning either (the CLI module is not imported by the package)
        assert "deals" in proc.stdout
        assert "never ran" in proc.stdout


def documented_incident() -> list[str]:
    """The incident command line exactly as the module docs give it (the docs page copies it)."""
    doc = tokenbucket._simulate.__doc__ or ""
    start = doc.index("    tokenbucket simulate ")
    end = doc.index("\n\n", start)
    words = shlex.split(doc[start:end].replace("\\\n", " "))
    assert words[:2] == ["tokenbucket", "simulate"]
    return words[1:]


def test_documented_incident_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from tokenbucket._cli import main as cli_main

    argv = documented_incident()
    assert cli_main([*argv, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    jobs = {j["name"]: j for j in data["jobs"]}
    # the claims the docs make about this command
    assert jobs["deals"]["calls"] == 0
    assert jobs["deals"]["skipped"] == {"gate": 73}
    assert jobs["deals"]["verdict"] == "never ran"
    assert jobs["products"]["calls"] == 2
    assert jobs["products"]["starved"] is False
    assert jobs["backfill"]["calls"] == 1
    assert jobs["backfill"]["skipped"]["crash"] == 2
    assert jobs["backfill"]["starved"] is True
    assert data["peak_debt"] == 999
    # above zero only for the 12 s before each start at a balance of 1 (8400-8412 s, 9600-9612 s)
    assert data["time_at_or_below_zero"] == pytest.approx(data["duration"] - 24)
    # the fix the docs suggest: no gate, planned batches, a lease with a TTL -> every job runs
    fixed = [w.replace(",gate=20", "").replace("batch=50", "batch=planner") for w in argv]
    fixed = [w + ",lock_ttl=90s" if w.startswith("backfill:") else w for w in fixed]
    cli_main([*fixed, "--json"])
    after = json.loads(capsys.readouterr().out)
    assert all(j["calls"] > 0 for j in after["jobs"])
    assert after["peak_debt"] < 300


def test_lanes_shorten_the_urgent_jobs_longest_wait() -> None:
    """The deal collector's shape: a backfill in the bulk lane, the update every 10 minutes in the urgent one."""
    policy = {"capacity": 1200, "overdraft": 300, "min_start": 96, "duration": "12h", "seed": 1}
    fifo = simulate("20/minute", ["backfill:cost=20,batch=planner,continuous", "update:cost=20,batch=5,every=10m"],
                    **policy)  # type: ignore[arg-type]  # fmt: skip
    laned = simulate(
        "20/minute",
        ["backfill:cost=20,batch=planner,continuous,lane=bulk", "update:cost=20,batch=5,every=10m,lane=urgent"],
        lanes={"urgent": 0, "bulk": 396},
        **policy,  # type: ignore[arg-type]
    )
    update = {r.name: r for r in fifo.jobs}["update"], {r.name: r for r in laned.jobs}["update"]
    assert update[1].longest_wait < update[0].longest_wait
    assert update[1].calls >= update[0].calls
    assert laned.peak_debt <= fifo.peak_debt  # the bulk lane stays out of the deepest debt
    assert all(not job.starved for job in laned.jobs)
    sized = simulate(  # a hold-back of the update's demand during one backfill wait: the update never waits
        "20/minute",
        ["backfill:cost=20,batch=planner,continuous,lane=bulk", "update:cost=20,batch=5,every=10m,lane=urgent"],
        lanes={"urgent": 0, "bulk": 800},
        **policy,  # type: ignore[arg-type]
    )
    by = {r.name: r for r in sized.jobs}
    assert by["update"].longest_wait <= 600  # within its own period
    assert by["update"].calls == 72  # every run of 12 hours
    assert by["backfill"].units > 0.8 * {r.name: r for r in fifo.jobs}["backfill"].units  # bulk still progresses


def test_lane_errors() -> None:
    assert JobSpec.parse("backfill:lane=bulk").lane == "bulk"
    with pytest.raises(ConfigurationError, match="no lane 'bulk'"):
        simulate("5/minute", ["backfill:lane=bulk"], duration="1h")
    with pytest.raises(ConfigurationError, match="what lane 'bulk' can ever start"):
        simulate("5/minute", ["backfill:cost=1,batch=5,lane=bulk"], duration="1h", lanes={"bulk": 2})
    assert tokenbucket._simulate.main(["--rate", "5/minute", "--duration", "1h", "--job", "a", "--lane", "bulk"]) == 2
