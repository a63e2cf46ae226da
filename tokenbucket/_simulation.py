"""What-if simulation: several jobs sharing one bucket, in virtual time (the library part).

`simulate` runs the real library (a `tokenbucket.TokenBucket` on a
`tokenbucket.MemoryBackend`, driven by a `tokenbucket.testing.ManualClock`), so
the figures are what the library would really do, not a re-implementation.
The job syntax, the semantics of a run, the legacy gate and the ghost lock, and
the incident's command line are described in ``tokenbucket._simulate`` (the
``tokenbucket simulate`` command), which uses this module.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._bucket import Grant, Reservation, TokenBucket
from ._cost import CostModel
from ._exceptions import AcquireTimeout, ConfigurationError, CostExceedsCapacity
from ._model import Policy, lane_max_cost, refill_tokens
from ._planner import BatchPlanner
from ._rate import Rate
from .backends._memory import MemoryBackend
from .testing import ManualClock

__all__ = ["JobResult", "JobSpec", "SimulationResult", "parse_duration", "plot", "simulate"]

_EPSILON = 1e-6
"""Events up to this many seconds after the end still count (absorbs float rounding in start times)."""

_MAX_EVENTS = 5_000_000
"""A bound on the work of one simulation, so a mistaken job cannot run for ever."""

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(min|[smhd]?)")


def parse_duration(text: str | float) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` (or a number).

    Raises:
        ConfigurationError: the text is not a duration, or it is negative or not finite.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    elif isinstance(text, str):
        compact = text.strip().lower().replace(" ", "")
        if compact in ("inf", "infinity"):
            value = math.inf
        else:
            pos = 0
            value = 0.0
            for m in _PART.finditer(compact):
                if m.start() != pos:
                    break
                value += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(compact) or not compact:
                raise ConfigurationError(f"cannot read duration {text!r}: use seconds or 90s, 15m, 2h, 1d, 1h30m")
    else:
        raise ConfigurationError(f"a duration must be a number or a string like '2h', not {type(text).__name__}")
    if not value >= 0:
        raise ConfigurationError(f"a duration must be zero or more, got {text!r}")
    return value


def _format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours}h{rest:02d}m"


Batch = int | Literal["planner", "fit"]


@dataclass(frozen=True)
class JobSpec:
    """One job in a simulation. `JobSpec.parse` reads the ``--job`` syntax.

    Attributes:
        name: The job's name (also its operation name for the cost model).
        cost: Tokens per unit (the estimate; the upstream charges it, plus noise).
        batch: Units per call: a number, ``"planner"`` (`tokenbucket.BatchPlanner`
            with a budget of one full bucket) or ``"fit"`` (the most units a full
            bucket pays for).
        max_batch: The upstream's limit on units per call (what the planner may use).
        every: Seconds between runs; None with ``poisson`` None means continuous.
        poisson: Mean seconds between runs, exponentially distributed.
        start: When the first run arrives.
        retry: How soon a continuous job tries again after a skipped run.
        gate: Legacy gate: abort a run unless the balance is at least this.
        ghost_lock: From this time on, the job's lock is held by a crashed holder.
        lock_ttl: If set, that lock expires this long after the crash.
        timeout: A waiting job gives up a run that would wait longer than this.
        call_seconds: How long one call takes (the job is busy meanwhile).
        noise: Relative cost noise; None uses the simulation's default.
        lane: The bucket's lane the job waits in (see ``lanes`` of `simulate`); None for none.
    """

    name: str
    cost: float = 1.0
    batch: Batch = 1
    max_batch: int = 100
    every: float | None = None
    poisson: float | None = None
    start: float = 0.0
    retry: float = 60.0
    gate: float | None = None
    ghost_lock: float | None = None
    lock_ttl: float | None = None
    timeout: float | None = None
    call_seconds: float = 0.0
    noise: float | None = None
    lane: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in ":,="):
            raise ConfigurationError(f"job name must be a non-empty string without ':', ',' or '=': {self.name!r}")
        _number(self.name, "cost", self.cost)
        if isinstance(self.batch, str):
            if self.batch not in ("planner", "fit"):
                raise ConfigurationError(f"job {self.name!r}: batch must be a number, 'planner' or 'fit'")
        elif isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigurationError(f"job {self.name!r}: batch must be at least 1, got {self.batch!r}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ConfigurationError(f"job {self.name!r}: max_batch must be at least 1, got {self.max_batch!r}")
        if self.every is not None and self.poisson is not None:
            raise ConfigurationError(f"job {self.name!r}: give every= or poisson=, not both")
        for key in ("every", "poisson"):
            value = getattr(self, key)
            if value is not None and not (_number(self.name, key, value) > 0 and math.isfinite(value)):
                raise ConfigurationError(f"job {self.name!r}: {key} must be a finite number of seconds above 0")
        if not _number(self.name, "retry", self.retry) > 0:
            raise ConfigurationError(f"job {self.name!r}: retry must be above 0 seconds")
        for key in ("start", "call_seconds", "gate", "ghost_lock", "lock_ttl", "timeout", "noise"):
            value = getattr(self, key)
            if value is not None:
                _number(self.name, key, value)
        if self.noise is not None and self.noise > 1:
            raise ConfigurationError(f"job {self.name!r}: noise is a fraction between 0 and 1, got {self.noise!r}")
        if self.lane is not None and (not isinstance(self.lane, str) or not self.lane):
            raise ConfigurationError(f"job {self.name!r}: lane must be a lane's name, got {self.lane!r}")

    @property
    def kind(self) -> str:
        """``"gate"`` for a legacy gate job, else ``"waits"``."""
        return "gate" if self.gate is not None else "waits"

    @property
    def arrival(self) -> str:
        """How runs arrive, in words."""
        if self.every is not None:
            return f"every {_format_duration(self.every)}"
        if self.poisson is not None:
            return f"poisson mean {_format_duration(self.poisson)}"
        return "continuous"

    @classmethod
    def parse(cls, text: str) -> JobSpec:
        """Read ``"NAME:key=value,flag,..."`` (see the module docs for the keys).

        Raises:
            ConfigurationError: an unknown key or a bad value (the message names it).
        """
        name, sep, rest = text.partition(":")
        name = name.strip()
        kwargs: dict[str, Any] = {}
        for item in rest.split(",") if sep else []:
            item = item.strip()
            if not item:
                continue
            key, eq, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            raw = raw.strip()
            if key == "continuous" and not eq:
                kwargs["every"] = kwargs["poisson"] = None
                continue
            if not eq:
                raise ConfigurationError(f"job {name!r}: {key!r} needs a value ({key}=...)")
            if key in ("cost", "unit_cost", "gate", "noise"):
                kwargs["cost" if key == "unit_cost" else key] = _float(name, key, raw)
            elif key == "batch":
                kwargs["batch"] = raw if raw in ("planner", "fit") else _int(name, key, raw)
            elif key == "max_batch":
                kwargs["max_batch"] = _int(name, key, raw)
            elif key in ("every", "poisson", "start", "retry", "ghost_lock", "lock_ttl", "timeout", "call_seconds"):
                kwargs[key] = parse_duration(raw)
            elif key == "lane":
                kwargs["lane"] = raw
            else:
                raise ConfigurationError(
                    f"job {name!r}: unknown key {key!r}; known: cost, batch, max_batch, continuous, every, "
                    "poisson, start, retry, gate, ghost_lock, lock_ttl, timeout, call_seconds, noise, lane"
                )
        return cls(name, **kwargs)


def _number(job: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"job {job!r}: {key} must be a number, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ConfigurationError(f"job {job!r}: {key} must be zero or more, got {value!r}")
    return float(value)


def _float(job: str, key: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"job {job!r}: {key}={raw!r} is not a number") from None


def _int(job: str, key: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"job {job!r}: {key}={raw!r} is not a whole number") from None


@dataclass(frozen=True)
class JobResult:
    """What one job achieved.

    Attributes:
        name: The job.
        kind: ``"waits"`` (waits its turn) or ``"gate"`` (legacy gate, never waits).
        arrival: How its runs arrived, in words.
        batch: How its batches were sized, in words.
        runs: Runs that arrived.
        calls: Calls started.
        units: Units covered by those calls.
        tokens: Tokens the upstream charged for them (with noise).
        skipped: Runs that ended without a call, by reason (``gate``, ``lock``, ``timeout``).
        queued: Runs still waiting for the job at the end.
        calls_per_hour: ``calls`` over the duration, per hour.
        units_per_hour: ``units`` over the duration, per hour.
        longest_wait: The longest time the job wanted to call and no call of
            its own started (including a wait still going on at the end).
        served_others: Calls other jobs started during that longest wait.
        first_call: When its first call started (None: never).
        starved: True when the job never ran, or its longest wait exceeded the
            stall threshold while other jobs were being served.
        verdict: ``"ok"``, ``"never ran"`` or ``"stalled <duration>"``.
        progress: ``(time, cumulative units)`` at each call start.
    """

    name: str
    kind: str
    arrival: str
    batch: str
    runs: int
    calls: int
    units: int
    tokens: float
    skipped: dict[str, int]
    queued: int
    calls_per_hour: float
    units_per_hour: float
    longest_wait: float
    served_others: int
    first_call: float | None
    starved: bool
    verdict: str
    progress: tuple[tuple[float, int], ...] = field(repr=False)


@dataclass(frozen=True)
class SimulationResult:
    """The outcome of `simulate`. Times are seconds from the start.

    Attributes:
        duration: Simulated seconds.
        rate: The refill rate.
        capacity: The bucket's capacity.
        overdraft: The overdraft (``math.inf`` for Keepa's rule).
        min_start: The balance needed to start, with an overdraft.
        seed: The random seed.
        stall_after: The stall threshold used (seconds).
        jobs: One result per job, in the order given.
        peak_debt: The most the upstream's balance was below zero (0 if never).
        peak_debt_at: When that was (None if never in debt).
        time_at_or_below_zero: Seconds the upstream's balance spent at or below zero.
        final_balance: The upstream's balance at the end.
        balance: ``(time, upstream balance)`` samples: after every event, and where
            refill reaches capacity, so straight lines between them are exact.
    """

    duration: float
    rate: Rate
    capacity: float
    overdraft: float
    min_start: float
    seed: int
    stall_after: float
    jobs: tuple[JobResult, ...]
    peak_debt: float
    peak_debt_at: float | None
    time_at_or_below_zero: float
    final_balance: float
    balance: tuple[tuple[float, float], ...] = field(repr=False)

    def job(self, name: str) -> JobResult:
        """The result of the job called ``name``.

        Raises:
            KeyError: no such job.
        """
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    @property
    def starved(self) -> tuple[str, ...]:
        """The names of the starved jobs."""
        return tuple(j.name for j in self.jobs if j.starved)

    def to_dict(self, *, series: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (infinities as the string ``"inf"``); ``series`` adds the samples."""
        jobs = []
        for job in self.jobs:
            item = asdict(job)
            if not series:
                del item["progress"]
            else:
                item["progress"] = [list(p) for p in job.progress]
            jobs.append(item)
        out: dict[str, Any] = {
            "duration": self.duration,
            "rate": {"amount": self.rate.amount, "per": self.rate.per, "per_second": self.rate.per_second},
            "capacity": self.capacity,
            "overdraft": self.overdraft,
            "min_start": self.min_start,
            "seed": self.seed,
            "stall_after": self.stall_after,
            "peak_debt": self.peak_debt,
            "peak_debt_at": self.peak_debt_at,
            "time_at_or_below_zero": self.time_at_or_below_zero,
            "final_balance": self.final_balance,
            "starved": list(self.starved),
            "jobs": jobs,
        }
        if series:
            out["balance"] = [list(p) for p in self.balance]
        return _jsonable(out)  # type: ignore[no-any-return]

    def table(self) -> str:
        """The human-readable report the CLI prints."""
        od = "inf" if math.isinf(self.overdraft) else f"{self.overdraft:g}"
        lines = [
            f"bucket: rate {self.rate}, capacity {self.capacity:g}, overdraft {od}, min_start {self.min_start:g}; "
            f"simulated {_format_duration(self.duration)}",
        ]
        header = ("job", "kind", "arrival", "batch", "calls", "calls/h", "units/h", "longest wait", "skipped", "queued")
        rows: list[tuple[str, ...]] = [(*header, "verdict")]
        for j in self.jobs:
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(j.skipped.items())) or "-"
            rows.append(
                (
                    j.name,
                    j.kind,
                    j.arrival,
                    j.batch,
                    str(j.calls),
                    f"{j.calls_per_hour:.2f}",
                    f"{j.units_per_hour:.1f}",
                    _format_duration(j.longest_wait),
                    skipped,
                    str(j.queued),
                    ("STARVED: " if j.starved else "") + j.verdict,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        at = "" if self.peak_debt_at is None else f" at {_format_duration(self.peak_debt_at)}"
        share = 100 * self.time_at_or_below_zero / self.duration if self.duration else 0.0
        lines.append(
            f"peak debt {self.peak_debt:.0f} tokens{at}; balance at or below zero for "
            f"{_format_duration(self.time_at_or_below_zero)} ({share:.1f}% of the time); "
            f"final balance {self.final_balance:.0f}"
        )
        starved = self.starved
        lines.append(
            f"starved (never ran, or waited over {_format_duration(self.stall_after)} while others were served): "
            + (", ".join(starved) if starved else "none")
        )
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Job:
    """A job's mutable state while the simulation runs."""

    def __init__(self, index: int, spec: JobSpec, noise: float) -> None:
        self.index = index
        self.spec = spec
        self.noise = noise
        self.continuous = spec.every is None and spec.poisson is None
        self.waiting: list[tuple[Reservation, float, int]] = []  # (reservation, arrival, size)
        self.skipped_since: float | None = None  # arrival of the first skipped run since the last call
        self.runs = 0
        self.calls = 0
        self.units = 0
        self.tokens = 0.0
        self.skipped: dict[str, int] = {}
        self.longest_wait = 0.0
        self.longest_from = 0.0
        self.first_call: float | None = None
        self.progress: list[tuple[float, int]] = []

    def skip(self, reason: str, arrival: float) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if self.skipped_since is None:
            self.skipped_since = arrival

    def oldest_want(self) -> float | None:
        """The arrival of the oldest run whose work is not done (waiting, or skipped since the last call)."""
        times = [arrival for _, arrival, _ in self.waiting]
        if self.skipped_since is not None:
            times.append(self.skipped_since)
        return min(times) if times else None

    def note_wait(self, now: float) -> None:
        oldest = self.oldest_want()
        if oldest is not None and now - oldest > self.longest_wait:
            self.longest_wait = now - oldest
            self.longest_from = oldest


class _Simulation:
    """One run: an event loop in virtual time over the real bucket."""

    def __init__(
        self,
        policy: Policy,
        jobs: Sequence[JobSpec],
        duration: float,
        seed: int,
        noise: float,
        stall_after: float | None,
        lanes: Mapping[str, float] | None = None,
    ) -> None:
        self.policy = policy
        self.duration = duration
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = ManualClock()
        priors = {spec.name: spec.cost for spec in jobs}
        self.model = CostModel(prior=priors)
        self.bucket = TokenBucket(
            "simulated",
            policy.rate,
            capacity=policy.capacity,
            overdraft=policy.overdraft,
            min_start=policy.min_start,
            initial=policy.initial,
            backend=MemoryBackend(self.clock),
            clock=self.clock,
            cost_model=self.model,
            lanes=lanes,
        )
        for spec in jobs:
            if spec.lane is not None and spec.lane not in self.bucket.lanes:
                known = ", ".join(repr(n) for n in self.bucket.lanes) or "none (give --lane NAME=TOKENS)"
                raise ConfigurationError(f"job {spec.name!r}: no lane {spec.lane!r}; the lanes: {known}")
        self.planner = BatchPlanner(self.bucket, self.model)
        # A job in a lane plans (and fits) within what its lane can ever start.
        self.lane_planners = {
            lane: BatchPlanner(self.bucket, self.model, max_cost=min(policy.capacity, lane_max_cost(policy, hold)))
            for lane, hold in self.bucket.lanes.items()
        }
        self.jobs = [_Job(i, spec, noise if spec.noise is None else spec.noise) for i, spec in enumerate(jobs)]
        self.stall_after = 3 * policy.capacity / policy.refill if stall_after is None else stall_after
        self.heap: list[tuple[float, int, str, int, Any]] = []  # (time, order, kind, job, payload)
        self.seq = 0
        self.promised = 0.0  # tokens of reservations whose start this simulation has not reached
        self.call_log: list[tuple[float, int]] = []  # (start, job index), in time order
        self.samples: list[tuple[float, float]] = []
        self.peak_debt = 0.0
        self.peak_debt_at: float | None = None
        self.below_zero = 0.0
        self.last_t = 0.0
        self.last_tokens = 0.0
        self.last_promised = 0.0
        self.events = 0
        for job in self.jobs:
            self._check_batch(job)

    # -- sizing -------------------------------------------------------------------------------
    def _max_cost(self, spec: JobSpec) -> float:
        """The largest call the job can ever start: in its lane, if it has one."""
        if spec.lane is None:
            return self.policy.max_cost
        return lane_max_cost(self.policy, self.bucket.lanes[spec.lane])

    def _check_batch(self, job: _Job) -> None:
        spec = job.spec
        limit = self._max_cost(spec)
        if isinstance(spec.batch, int):
            cost = spec.batch * spec.cost
            if cost > limit:
                where = "capacity + overdraft" if spec.lane is None else f"what lane {spec.lane!r} can ever start"
                raise ConfigurationError(
                    f"job {spec.name!r}: batch {spec.batch} × {spec.cost:g} = {cost:g} tokens can never start "
                    f"({where} is {limit:g}); use batch=fit or batch=planner"
                )
        elif spec.cost > limit:
            raise CostExceedsCapacity(spec.cost, limit)
        if spec.cost == 0 and spec.every is None and spec.poisson is None and spec.call_seconds == 0:
            raise ConfigurationError(
                f"job {spec.name!r}: a continuous job whose calls cost nothing and take no time would call "
                "without end; give it a cost, call_seconds or every="
            )

    def _size(self, job: _Job) -> int:
        spec = job.spec
        if isinstance(spec.batch, int):
            return spec.batch
        if spec.batch == "fit":
            if spec.cost == 0:
                return spec.max_batch
            return max(1, min(spec.max_batch, int(min(self.policy.capacity, self._max_cost(spec)) // spec.cost)))
        planner = self.planner if spec.lane is None else self.lane_planners[spec.lane]
        return planner.plan(spec.name, spec.max_batch, spec.max_batch).size

    # -- event loop ---------------------------------------------------------------------------
    def _schedule(self, when: float, kind: str, job: _Job, payload: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, kind, job.index, payload))

    def _next_arrival(self, job: _Job, now: float) -> None:
        spec = job.spec
        if spec.every is not None:
            self._schedule(now + spec.every, "arrive", job)
        elif spec.poisson is not None:
            self._schedule(now + self.rng.expovariate(1.0 / spec.poisson), "arrive", job)

    def run(self) -> SimulationResult:
        for job in self.jobs:
            self._schedule(job.spec.start, "arrive", job)
            if job.spec.ghost_lock is not None:
                self._schedule(job.spec.ghost_lock, "crash", job)
        self._observe()
        end = self.duration + _EPSILON
        while self.heap and self.heap[0][0] <= end:
            when, _, kind, index, payload = heapq.heappop(self.heap)
            self.events += 1
            if self.events > _MAX_EVENTS:
                raise ConfigurationError(
                    f"the simulation needs more than {_MAX_EVENTS} events by {_format_duration(when)}; "
                    "shorten the duration or make fewer, larger calls"
                )
            self.clock.set(max(when, self.clock.now()))
            self._observe(before=True)  # the balance just before this event
            job = self.jobs[index]
            if kind == "arrive":
                self._arrive(job)
            elif kind == "start":
                self._start(job, payload)
            elif kind == "crash":
                self._crash(job)
            else:
                self._done(job, *payload)
            self._observe()
        self.clock.set(max(self.duration, self.clock.now()))
        self._observe(before=True)
        return self._result()

    def _arrive(self, job: _Job) -> None:
        now = self.clock.now()
        job.runs += 1
        self._next_arrival(job, now)
        self._run(job, now)

    def _run(self, job: _Job, arrival: float) -> None:
        """One run: skip it (lock, gate, timeout), call at once, or reserve and wait for the start."""
        spec = job.spec
        reason = self._skip_reason(job, arrival)
        if reason is None:
            size = self._size(job)
            # planner jobs are priced by the cost model, which learns from settles; the others as configured
            cost = None if spec.batch == "planner" else size * spec.cost
            if spec.gate is not None:
                grant = self.bucket.try_acquire(cost, op=spec.name, units=size, lane=spec.lane)
                if grant is not None:
                    self._call(job, grant, size, arrival)
                    return
                reason = "gate"
            else:
                try:
                    res = self.bucket.reserve(cost, timeout=spec.timeout, op=spec.name, units=size, lane=spec.lane)
                except AcquireTimeout:
                    reason = "timeout"
                else:
                    job.waiting.append((res, arrival, size))
                    if res.delay > 0:
                        self.promised += res.cost
                        self._schedule(res.start, "start", job, res)
                    else:
                        self._start(job, res)
                    return
        job.skip(reason, arrival)
        if job.continuous:  # the worker tries again later
            self._schedule(arrival + spec.retry, "arrive", job)

    def _skip_reason(self, job: _Job, now: float) -> str | None:
        spec = job.spec
        crashed = spec.ghost_lock is not None and now >= spec.ghost_lock
        if crashed and (spec.lock_ttl is None or now < spec.ghost_lock + spec.lock_ttl):  # type: ignore[operator]
            return "lock"
        if spec.gate is not None and self.bucket.snapshot().tokens < spec.gate:
            return "gate"
        return None

    def _crash(self, job: _Job) -> None:
        """The job's lock holder dies; runs waiting for their start die with it, unrefunded."""
        if not job.waiting:
            return
        for _, arrival, _ in job.waiting:
            job.skip("crash", arrival)
        job.waiting.clear()
        if job.continuous:  # a supervisor restarts the worker, which finds the lock held
            self._schedule(self.clock.now(), "arrive", job)

    def _start(self, job: _Job, res: Reservation) -> None:
        if res.delay > 0:
            self.promised -= res.cost
        found = [i for i, entry in enumerate(job.waiting) if entry[0] is res]
        if not found:
            return  # its holder crashed: the tokens are spent, no call is made
        _, arrival, size = job.waiting[found[0]]
        grant = res.wait()  # the clock is at the start: no sleep
        self._call(job, grant, size, arrival)
        del job.waiting[found[0]]

    def _call(self, job: _Job, grant: Grant, size: int, arrival: float) -> None:
        now = self.clock.now()
        job.note_wait(now)
        job.skipped_since = None
        job.calls += 1
        job.units += size
        if job.first_call is None:
            job.first_call = now
        job.progress.append((now, job.units))
        self.call_log.append((now, job.index))
        actual = grant.cost
        if job.noise:
            actual = float(max(0, round(grant.cost * self.rng.uniform(1 - job.noise, 1 + job.noise))))
        job.tokens += actual
        self._schedule(now + job.spec.call_seconds, "done", job, (grant, actual))  # an event even for 0 s

    def _done(self, job: _Job, grant: Grant, actual: float) -> None:
        if actual != grant.cost:
            grant.settle(actual)
        if job.continuous:
            self._schedule(self.clock.now(), "arrive", job)

    # -- measuring ------------------------------------------------------------------------------
    def _observe(self, *, before: bool = False) -> None:
        """Sample the upstream's balance now and account for the time since the last sample.

        After an event the balance comes from the bucket's snapshot. Between
        events only refill happens, so the balance just before an event (``before``),
        the time at or below zero and the moment refill reaches capacity follow
        from the previous sample by the model's own `refill_tokens`.
        """
        now = self.clock.now()
        refill = self.policy.refill
        cap = self.policy.capacity
        t0, tok0, prom0 = self.last_t, self.last_tokens, self.last_promised
        if now > t0:
            if tok0 + prom0 <= 0:
                self.below_zero += min(now, t0 + (-prom0 - tok0) / refill) - t0
            full_at = t0 + (cap - tok0) / refill
            if tok0 < cap and full_at < now:
                self.samples.append((full_at, cap + prom0))
        if before:
            tokens = refill_tokens(tok0, t0, now, self.policy)
            self.samples.append((now, tokens + prom0))
            self.last_t, self.last_tokens = max(now, t0), tokens
            return
        tokens = self.bucket.snapshot().tokens
        balance = tokens + self.promised
        self.samples.append((now, balance))
        self.last_t, self.last_tokens, self.last_promised = now, tokens, self.promised
        if -balance > self.peak_debt + 1e-9:
            self.peak_debt = -balance
            self.peak_debt_at = now

    def _result(self) -> SimulationResult:
        hours = self.duration / 3600 if self.duration > 0 else math.nan
        results = []
        for job in self.jobs:
            job.note_wait(self.duration)
            lo, hi = job.longest_from, job.longest_from + job.longest_wait
            served = sum(1 for t, i in self.call_log if i != job.index and lo <= t <= hi)
            if job.calls == 0 and job.runs > 0:
                starved, verdict = True, "never ran"
            elif job.longest_wait > self.stall_after and served > 0:
                starved, verdict = True, f"stalled {_format_duration(job.longest_wait)}"
            else:
                starved, verdict = False, "ok"
            spec = job.spec
            batch = str(spec.batch) if isinstance(spec.batch, int) else spec.batch
            results.append(
                JobResult(
                    name=spec.name,
                    kind=spec.kind,
                    arrival=spec.arrival,
                    batch=f"{batch} × {spec.cost:g}",
                    runs=job.runs,
                    calls=job.calls,
                    units=job.units,
                    tokens=job.tokens,
                    skipped=dict(job.skipped),
                    queued=len(job.waiting),
                    calls_per_hour=job.calls / hours if hours else 0.0,
                    units_per_hour=job.units / hours if hours else 0.0,
                    longest_wait=job.longest_wait,
                    served_others=served,
                    first_call=job.first_call,
                    starved=starved,
                    verdict=verdict,
                    progress=tuple(job.progress),
                )
            )
        final = self.samples[-1][1] if self.samples else self.policy.initial
        return SimulationResult(
            duration=self.duration,
            rate=self.policy.rate,
            capacity=self.policy.capacity,
            overdraft=self.policy.overdraft,
            min_start=self.policy.min_start,
            seed=self.seed,
            stall_after=self.stall_after,
            jobs=tuple(results),
            peak_debt=self.peak_debt,
            peak_debt_at=self.peak_debt_at,
            time_at_or_below_zero=self.below_zero,
            final_balance=final,
            balance=tuple(self.samples),
        )


def simulate(
    rate: Rate | str,
    jobs: Iterable[JobSpec | str],
    *,
    duration: float | str,
    capacity: float | None = None,
    overdraft: float = 0.0,
    min_start: float = 1.0,
    initial: float | None = None,
    noise: float = 0.0,
    seed: int = 0,
    stall_after: float | str | None = None,
    lanes: Mapping[str, float] | None = None,
) -> SimulationResult:
    """Run jobs against one bucket in virtual time and report what each achieved.

    Uses the real `tokenbucket.TokenBucket` on a `tokenbucket.MemoryBackend`
    with a `tokenbucket.testing.ManualClock`; nothing sleeps. The same
    arguments and seed always give the same result.

    Args:
        rate: The refill rate, for example ``"5/minute"``.
        jobs: `JobSpec` objects, or strings in the ``--job`` syntax.
        duration: How long to simulate: seconds, or ``"6h"``.
        capacity: As for `tokenbucket.TokenBucket` (default: the rate's amount).
        overdraft: As for `tokenbucket.TokenBucket` (``math.inf`` is Keepa's rule).
        min_start: As for `tokenbucket.TokenBucket`.
        initial: The starting balance (default: full).
        noise: Default relative cost noise for the jobs (0: the upstream charges the estimate).
        seed: Seeds the noise and the Poisson arrivals.
        stall_after: A job that wanted to call for longer than this while other
            jobs were served is flagged as starved; default three times the time
            the bucket takes to fill from empty (``3 × capacity / rate``: 3 h for
            5/minute and 300), since under first-come first-served a wait of one
            or two bucketfuls is normal when the bucket is busy.
        lanes: The bucket's priority lanes, as for `tokenbucket.TokenBucket`
            (``{"urgent": 0, "bulk": 400}``); a job names its lane with ``lane=``.

    Returns:
        A frozen `SimulationResult`.

    Raises:
        ConfigurationError: a policy or job can never work (a fixed batch that
            can never start, two jobs with one name, ...), before anything runs.
    """
    policy = Policy.build(rate, capacity, overdraft, min_start, initial)
    specs = [JobSpec.parse(j) if isinstance(j, str) else j for j in jobs]
    if not specs:
        raise ConfigurationError("give at least one job")
    for spec in specs:
        if not isinstance(spec, JobSpec):
            raise TypeError(f"jobs must be JobSpec objects or strings, not {type(spec).__name__}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"job names must differ: {names}")
    seconds = parse_duration(duration)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"duration must be a finite time above zero, got {duration!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
        raise ConfigurationError(f"noise is a fraction between 0 and 1, got {noise!r}")
    stall = None if stall_after is None else parse_duration(stall_after)
    return _Simulation(policy, specs, seconds, seed, float(noise), stall, lanes).run()


def plot(result: SimulationResult, path: str) -> None:
    """Draw the balance over time and each job's progress to ``path`` (``.png`` or ``.svg``).

    Needs matplotlib (``pip install tokenbucket[plot]``).

    Raises:
        ConfigurationError: the file name does not end in ``.png`` or ``.svg``.
        ImportError: matplotlib is not installed (the message says how to get it).
    """
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in ("png", "svg"):
        raise ConfigurationError(f"--plot needs a file name ending in .png or .svg, got {path!r}")
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'tokenbucket[plot]'") from exc

    fig = Figure(figsize=(10, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    hours = [t / 3600 for t, _ in result.balance]
    top.plot(hours, [b for _, b in result.balance], color="tab:blue", linewidth=1.2, label="upstream balance")
    top.axhline(0, color="black", linewidth=0.8)
    top.axhline(result.capacity, color="tab:green", linewidth=0.8, linestyle="--", label="capacity")
    if math.isfinite(result.overdraft) and result.overdraft > 0:
        top.axhline(-result.overdraft, color="tab:red", linewidth=0.8, linestyle="--", label="-overdraft")
    top.set_ylabel("tokens")
    top.set_title(
        f"rate {result.rate}, capacity {result.capacity:g}: peak debt {result.peak_debt:.0f}, "
        f"at or below zero {100 * result.time_at_or_below_zero / result.duration:.1f}% of the time"
    )
    top.legend(loc="upper right", fontsize="small")
    end = result.duration / 3600
    for job in result.jobs:
        xs = [0.0] + [t / 3600 for t, _ in job.progress] + [end]
        ys = [0] + [u for _, u in job.progress]
        ys.append(ys[-1])
        label = f"{job.name} ({job.calls} calls{', STARVED' if job.starved else ''})"
        bottom.step(xs, ys, where="post", label=label)
    bottom.set_xlabel("hours")
    bottom.set_ylabel("units done")
    bottom.legend(loc="upper left", fontsize="small")
    fig.savefig(path, format=suffix)
