"""Lease locks on the memory backend: the holder's state machine, fencing, waking, `singleton`.

Virtual time (`ManualClock`, heartbeat driven by hand) wherever the behaviour
is about time; real threads and tasks only to show that waiters are woken by
a release (a holder with a TTL far longer than the waiter's timeout, so only a
release can let the waiter in).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tokenbucket import (
    AsyncLease,
    AsyncLeaseLock,
    BackendError,
    ConfigurationError,
    Lease,
    LeaseError,
    LeaseLock,
    LeaseLost,
    MemoryBackend,
    NotAcquired,
    singleton,
)
from tokenbucket._events import LeaseEvent
from tokenbucket._lease import _drive
from tokenbucket.backends import AsyncLeaseBackend, LeaseBackend
from tokenbucket.fencing import check_fence, create_fence_table, fenced_execute
from tokenbucket.testing import ManualClock


def virtual(ttl: float = 10.0, **options: Any) -> tuple[ManualClock, MemoryBackend, Any]:
    """A clock, a memory backend on it, and a factory of sync locks without a heartbeat thread."""
    clock = ManualClock(1000.0)
    backend = MemoryBackend(clock=clock)

    def make(name: str = "job", **more: Any) -> LeaseLock:
        kwargs = {"ttl": ttl, "backend": backend, "clock": clock, "heartbeat": False, **options, **more}
        return LeaseLock(name, **kwargs)

    return clock, backend, make


class FlakyStore(MemoryBackend):
    """A memory store whose renewals fail (as a Redis outage would) while ``down`` is set."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.down = False

    def lease_renew(self, name: str, token: str, ttl: float) -> Any:
        if self.down:
            raise BackendError("the store is unreachable (test)")
        return super().lease_renew(name, token, ttl)


def tick(lease: Lease) -> float | None:
    """One heartbeat tick, as the heartbeat thread runs it."""
    result: float | None = _drive(lease._lock, lease._heartbeat_flow())
    return result


# ------------------------------------------------------------------ configuration


class TestTTLIsMandatory:
    @pytest.mark.parametrize("cls", [LeaseLock, AsyncLeaseLock])
    def test_missing_ttl_is_a_type_error(self, cls: Any) -> None:
        with pytest.raises(TypeError, match="ttl"):
            cls("job")

    @pytest.mark.parametrize("cls", [LeaseLock, AsyncLeaseLock])
    @pytest.mark.parametrize("ttl", [0, -1, -0.5, float("inf"), float("nan")])
    def test_non_positive_or_infinite_ttl_is_refused(self, cls: Any, ttl: float) -> None:
        with pytest.raises(ConfigurationError, match="ttl"):
            cls("job", ttl=ttl)

    @pytest.mark.parametrize("cls", [LeaseLock, AsyncLeaseLock])
    def test_none_ttl_is_a_type_error(self, cls: Any) -> None:
        with pytest.raises(TypeError, match="ttl"):
            cls("job", ttl=None)

    def test_bad_max_hold_and_backend(self) -> None:
        with pytest.raises(ConfigurationError, match="max_hold"):
            LeaseLock("job", ttl=1, max_hold=0)
        with pytest.raises(TypeError, match="LeaseBackend"):
            LeaseLock("job", ttl=1, backend=object())  # type: ignore[arg-type]

    def test_singleton_needs_ttl_and_a_known_on_busy(self) -> None:
        with pytest.raises(TypeError):
            singleton("job")  # type: ignore[call-arg]
        with pytest.raises(ConfigurationError, match="on_busy"):
            singleton("job", ttl=1, on_busy="ignore")  # type: ignore[arg-type]

    def test_memory_backend_implements_both_lease_protocols(self) -> None:
        assert isinstance(MemoryBackend(), LeaseBackend)
        assert not isinstance(object(), AsyncLeaseBackend)


# ------------------------------------------------------------------ the holder's view


class TestHolder:
    def test_not_acquired_says_who_holds_it_and_until_when(self) -> None:
        clock, _, make = virtual(ttl=30)
        lease = make(task="backfill").acquire()
        clock.advance(16)
        with pytest.raises(NotAcquired) as caught:
            make().acquire(blocking=False)
        message = str(caught.value)
        assert "task=backfill" in message
        assert f"pid {lease.info.owner.pid}" in message
        assert "expires in 14 s" in message
        assert caught.value.holder is not None
        assert caught.value.holder.fence == lease.fence

    def test_expired_lease_is_lost_and_the_next_holder_gets_a_larger_fence(self) -> None:
        clock, _, make = virtual(ttl=10)
        first = make().acquire()
        clock.advance(10)
        assert first.state == "lost"
        with pytest.raises(LeaseLost, match="TTL ran out"):
            first.ensure_held()
        second = make().acquire(blocking=False)
        assert second.fence > first.fence
        assert first.release() is False  # token-checked: the new holder keeps its lease
        second.ensure_held()

    def test_renewal_keeps_it_held_past_the_ttl(self) -> None:
        clock, backend, make = virtual(ttl=10)
        lease = make().acquire()
        for _ in range(5):
            clock.advance(3)
            assert tick(lease) == pytest.approx(10 / 3)
        assert lease.state == "held"
        info = backend.lease_inspect("job")
        assert info is not None
        assert info.renewals == 5
        assert info.expires_in == pytest.approx(10)

    def test_hung_holder_with_require_beat_loses_within_ttl_of_its_last_beat(self) -> None:
        clock, backend, make = virtual(ttl=9, require_beat=True)
        lease = make().acquire()
        clock.advance(3)
        lease.beat()
        tick(lease)
        clock.advance(3)  # no beat from here on: the holder hangs
        tick(lease)
        info = backend.lease_inspect("job")
        assert info is not None
        assert info.expires_in == pytest.approx(6)
        clock.advance(3)
        tick(lease)
        clock.advance(3)
        assert backend.lease_inspect("job") is None
        assert lease.state == "lost"
        assert "did not beat" in lease.lost_reason
        assert make().acquire(blocking=False).fence > lease.fence

    def test_max_hold_caps_the_total(self) -> None:
        clock, backend, make = virtual(ttl=10, max_hold=25)
        lease = make().acquire()
        for _ in range(10):
            clock.advance(3)
            tick(lease)
        assert backend.lease_inspect("job") is None
        assert lease.state == "lost"
        assert "max_hold=25" in lease.lost_reason

    def test_break_needs_the_right_fence_and_the_holder_learns_at_its_next_renewal(self) -> None:
        _, backend, make = virtual(ttl=10)
        lost: list[Lease] = []
        events: list[LeaseEvent] = []
        lock = make(on_lost=lost.append, listeners=[events.append])
        lease = lock.acquire()
        with pytest.raises(LeaseError, match=f"has fence {lease.fence}, not {lease.fence + 1}"):
            lock.break_lease(lease.fence + 1)
        assert backend.lease_inspect("job") is not None
        broken = lock.break_lease(lease.fence)
        assert broken.fence == lease.fence
        with pytest.raises(LeaseError, match="not held"):
            lock.break_lease(lease.fence)
        assert lease.state == "held"  # it has not talked to the store yet
        tick(lease)
        assert lease.state == "lost"
        assert lost == [lease]
        assert [e.kind for e in events] == ["acquired", "broken", "lost"]

    def test_with_block_raises_lease_lost_when_the_lease_was_lost_inside(self) -> None:
        _, backend, make = virtual(ttl=10)
        lock = make()

        def body() -> None:
            with lock as lease:
                backend.lease_break("job", lease.fence)
                tick(lease)

        with pytest.raises(LeaseLost, match="lost while held"):
            body()
        assert backend.lease_inspect("job") is None

    def test_with_block_releases_and_keeps_the_body_error(self) -> None:
        _, backend, make = virtual(ttl=10)
        leases: list[Lease] = []

        def body() -> None:
            with make() as lease:
                leases.append(lease)
                raise KeyError("boom")

        with pytest.raises(KeyError):
            body()
        assert leases[0].state == "released"
        assert backend.lease_inspect("job") is None

    def test_failing_renewals_suspend_then_lose_at_the_local_deadline(self) -> None:
        clock = ManualClock(1000.0)
        store = FlakyStore(clock)
        events: list[LeaseEvent] = []
        lock = LeaseLock("job", ttl=9, backend=store, clock=clock, heartbeat=False, listeners=[events.append])
        lease = lock.acquire()
        clock.advance(3)
        store.down = True
        tick(lease)
        assert lease.state == "suspended"
        lease.ensure_held()  # suspended is still held: the deadline has not passed
        store.down = False
        clock.advance(3)
        tick(lease)
        assert lease.state == "held"  # recovered before the deadline (1009): held until 1015
        store.down = True
        clock.advance(3)
        assert tick(lease) == pytest.approx(0.9)  # retrying sooner while suspended
        clock.advance(5.999)
        assert lease.state == "suspended"
        clock.advance(0.001)
        assert lease.state == "lost"
        assert "while renewals were failing" in lease.lost_reason
        assert [e.kind for e in events] == ["acquired", "suspended", "renewed", "suspended", "lost"]

    def test_with_is_not_reentrant(self) -> None:
        _, backend, make = virtual(ttl=10)
        lock = make()
        with lock as lease:
            with pytest.raises(LeaseError, match="not reentrant"):
                lock.__enter__()
            info = backend.lease_inspect("job")
            assert info is not None
            assert info.fence == lease.fence
        assert backend.lease_inspect("job") is None

    def test_a_lost_lease_is_never_reacquired(self) -> None:
        clock, backend, make = virtual(ttl=10)
        lease = make().acquire()
        clock.advance(11)
        assert tick(lease) is None  # the heartbeat stops
        with pytest.raises(LeaseLost):
            lease.renew()
        assert backend.lease_inspect("job") is None

    def test_waiting_sleeps_on_a_custom_clock_until_the_holder_expires(self) -> None:
        clock, _, make = virtual(ttl=10)
        first = make().acquire()
        with pytest.raises(NotAcquired, match="gave up after 4 s"):
            make().acquire(timeout=4)
        second = make().acquire(timeout=60)
        assert clock.now() >= 1010
        assert second.fence == first.fence + 1


# ------------------------------------------------------------------ state machine


class LeaseMachine(RuleBasedStateMachine):
    """Three lock objects contend for one name in virtual time; some require beats, one caps the hold."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(1000.0)
        self.backend = FlakyStore(self.clock)
        self.locks = [
            LeaseLock("job", ttl=10, backend=self.backend, clock=self.clock, heartbeat=False),
            LeaseLock("job", ttl=6, backend=self.backend, clock=self.clock, heartbeat=False, require_beat=True),
            LeaseLock("job", ttl=8, backend=self.backend, clock=self.clock, heartbeat=False, max_hold=20),
        ]
        self.leases: list[Lease] = []
        self.broken: set[int] = set()
        self.last_fence = 0

    def live(self) -> list[Lease]:
        return [lease for lease in self.leases if lease.state in ("held", "suspended")]

    @rule(i=st.integers(0, 2))
    def acquire(self, i: int) -> None:
        try:
            lease = self.locks[i].acquire(blocking=False)
        except NotAcquired as exc:
            holder = exc.holder
            lease = None
        if lease is None:
            assert holder is not None
            assert holder.fence == self.last_fence  # only the latest acquisition can be in the store
            return
        assert lease.fence > self.last_fence
        self.last_fence = lease.fence
        self.leases.append(lease)

    @rule(seconds=st.one_of(st.floats(0, 3), st.floats(0, 12)))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(down=st.booleans())
    def outage(self, down: bool) -> None:
        self.backend.down = down  # renewals fail meanwhile: holders are suspended, then lost at their deadline

    def pick(self, data: st.DataObject) -> Lease:
        """A lease, usually one its holder believes it holds."""
        live = self.live()
        return data.draw(st.sampled_from(live if live and data.draw(st.integers(0, 3)) else self.leases))

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        lease = self.pick(data)
        before = lease.state
        stored = self.backend.lease_inspect("job")
        tick(lease)
        if before in ("lost", "released"):
            assert lease.state == before
        if stored is None or stored.fence != lease.fence:
            # a stale holder's renewal must neither revive it, nor touch (or create) anyone's lease
            assert lease.state != "held"
            after = self.backend.lease_inspect("job")
            if stored is None:
                assert after is None
            else:
                assert after is not None
                assert (after.fence, after.renewals) == (stored.fence, stored.renewals)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def beat(self, data: st.DataObject) -> None:
        lease = self.pick(data)
        if lease.state in ("held", "suspended"):
            lease.beat()
        else:
            with pytest.raises(LeaseLost):
                lease.beat()

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = self.pick(data)
        stale = lease.fence in self.broken or lease.fence != self.last_fence
        released = lease.release()
        if released:
            assert not stale
        assert lease.state in ("lost", "released")

    @rule(exact=st.booleans())
    def operator_breaks(self, exact: bool) -> None:
        info = self.backend.lease_inspect("job")
        if info is None:
            return
        ok, _ = self.backend.lease_break("job", info.fence if exact else info.fence - 1)
        assert ok == exact
        if ok:
            self.broken.add(info.fence)

    @invariant()
    def at_most_one_holder(self) -> None:
        believers = [lease for lease in self.live() if lease.fence not in self.broken]
        assert len(believers) <= 1
        stored = self.backend.lease_inspect("job")
        for lease in believers:
            assert stored is not None
            assert stored.fence == lease.fence

    @invariant()
    def a_lease_never_outlives_its_progress(self) -> None:
        stored = self.backend.lease_inspect("job")
        if stored is None:
            return
        holder = next(lease for lease in self.leases if lease.fence == stored.fence)
        lock = holder._lock
        end = self.clock.now() + stored.expires_in
        if lock.require_beat:
            assert end <= holder._last_beat + lock.ttl + 1e-6
        if lock.max_hold is not None:
            assert end <= holder._acquired_at + lock.max_hold + 1e-6


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


# ------------------------------------------------------------------ real threads and tasks


def test_a_waiting_thread_is_woken_by_the_release() -> None:
    backend = MemoryBackend()
    holder = LeaseLock("job", ttl=120, backend=backend).acquire()
    got: list[Lease] = []
    waiter = threading.Thread(target=lambda: got.append(LeaseLock("job", ttl=5, backend=backend).acquire(timeout=30)))
    waiter.start()
    for _ in range(3000):  # until the waiter is parked (not polling)
        if backend._lease_waiters.get("job"):
            break
        threading.Event().wait(0.01)
    holder.release()
    waiter.join(30)
    assert len(got) == 1
    assert got[0].fence == holder.fence + 1
    got[0].release()


async def parked(backend: MemoryBackend) -> None:
    """Return once a task waits for lease "job" on ``backend``."""
    for _ in range(3000):
        if backend._lease_waiters.get("job"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no waiter parked")


@pytest.mark.asyncio
async def test_a_waiting_task_is_woken_by_the_release() -> None:
    backend = MemoryBackend()
    lock = AsyncLeaseLock("job", ttl=120, backend=backend)
    holder = await lock.acquire()
    waiter = asyncio.create_task(AsyncLeaseLock("job", ttl=5, backend=backend).acquire(timeout=30))
    await parked(backend)
    assert await holder.release() is True
    lease = await asyncio.wait_for(waiter, 30)
    assert lease.fence == holder.fence + 1
    assert await lease.release() is True


@pytest.mark.asyncio
async def test_async_with_cancels_the_holder_on_loss_and_raises_lease_lost() -> None:
    backend = MemoryBackend()
    lock = AsyncLeaseLock("job", ttl=0.3, backend=backend, cancel_on_lost=True)
    leases: list[AsyncLease] = []

    async def body() -> None:
        async with lock as lease:
            leases.append(lease)
            backend.lease_break("job", lease.fence)
            await asyncio.sleep(30)  # cancelled by the heartbeat once it sees the loss (within ttl/3)
        raise AssertionError("not reached")

    with pytest.raises(LeaseLost, match="lost while held"):
        await body()
    assert leases[0].state == "lost"


@pytest.mark.asyncio
async def test_async_heartbeat_renews_and_release_wakes_nothing_left_behind() -> None:
    clock = ManualClock(0.0)
    backend = MemoryBackend(clock=clock)
    lock = AsyncLeaseLock("job", ttl=10, backend=backend, clock=clock, heartbeat=False)
    lease = await lock.acquire()
    clock.advance(5)
    assert await lease.renew() is True
    clock.advance(9)
    lease.ensure_held()  # renewed at 5: held until 15
    assert await lease.release() is True
    with pytest.raises(LeaseLost, match="released"):
        lease.ensure_held()
    assert await lock.inspect() is None


class SlowAsyncStore:
    """An `AsyncLeaseBackend` over a `MemoryBackend` whose acquire replies arrive late (a slow network)."""

    def __init__(self) -> None:
        self.memory = MemoryBackend()
        self.replying = asyncio.Event()

    async def lease_acquire(self, name: str, token: str, ttl: float, owner: Any) -> Any:
        reply = self.memory.lease_acquire(name, token, ttl, owner)  # the store has granted it...
        self.replying.set()
        await asyncio.sleep(30)  # ... and the reply is on its way
        return reply

    async def lease_renew(self, name: str, token: str, ttl: float) -> Any:
        return self.memory.lease_renew(name, token, ttl)

    async def lease_release(self, name: str, token: str) -> bool:
        return self.memory.lease_release(name, token)

    async def lease_break(self, name: str, expect_fence: int) -> Any:
        return self.memory.lease_break(name, expect_fence)

    async def lease_inspect(self, name: str) -> Any:
        return self.memory.lease_inspect(name)

    async def lease_list(self) -> Any:
        return self.memory.lease_list()

    async def lease_wait(self, name: str, timeout: float) -> bool:
        return await self.memory.lease_wait_async(name, timeout)


@pytest.mark.asyncio
async def test_a_task_cancelled_while_the_grant_is_in_flight_gives_the_lease_back() -> None:
    store = SlowAsyncStore()
    assert isinstance(store, AsyncLeaseBackend)
    task = asyncio.create_task(AsyncLeaseLock("job", ttl=60, backend=store).acquire())
    await store.replying.wait()
    assert store.memory.lease_inspect("job") is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.memory.lease_inspect("job") is None  # not held for 60 s by a task that is gone


@pytest.mark.asyncio
async def test_cancelling_an_async_waiter_takes_nothing() -> None:
    backend = MemoryBackend()
    holder = await AsyncLeaseLock("job", ttl=120, backend=backend).acquire()
    waiter = asyncio.create_task(AsyncLeaseLock("job", ttl=5, backend=backend).acquire())
    await parked(backend)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not backend._lease_waiters.get("job")
    info = backend.lease_inspect("job")
    assert info is not None
    assert info.fence == holder.fence
    await holder.release()


# ------------------------------------------------------------------ singleton


class TestSingleton:
    def test_skip_raise_and_the_lease_passed_in(self) -> None:
        backend = MemoryBackend()
        runs: list[int] = []

        @singleton("nightly", ttl=30, backend=backend, pass_lease=True)
        def job(lease: Lease, n: int) -> int:
            runs.append(lease.fence)
            assert skipped() is None  # the same job, started again while this run holds the lease
            with pytest.raises(NotAcquired, match=r"task=.*job"):
                strict()
            return n * 2

        @singleton("nightly", ttl=30, backend=backend)
        def skipped() -> str:
            raise AssertionError("must not run while another run holds the lease")

        @singleton("nightly", ttl=30, backend=backend, on_busy="raise")
        def strict() -> str:
            raise AssertionError("must not run")

        assert job(21) == 42
        assert job(1) == 2
        assert runs[1] > runs[0]
        assert backend.lease_inspect("nightly") is None

    def test_wait_runs_after_the_holder(self) -> None:
        clock = ManualClock(0.0)
        backend = MemoryBackend(clock=clock)
        holder = LeaseLock("nightly", ttl=10, backend=backend, clock=clock, heartbeat=False).acquire()

        @singleton("nightly", ttl=10, backend=backend, on_busy="wait", timeout=60, clock=clock, heartbeat=False)
        def job() -> float:
            return clock.now()

        assert job() >= 10
        assert holder.state == "lost"

    @pytest.mark.asyncio
    async def test_async_job(self) -> None:
        backend = MemoryBackend()

        @singleton("nightly", ttl=30, backend=backend)
        async def job() -> str:
            assert await job() is None  # skipped while this run holds it
            info = backend.lease_inspect("nightly")
            assert info is not None
            assert info.owner.task.endswith("job")
            return "done"

        assert await job() == "done"
        assert isinstance(job.lock, AsyncLeaseLock)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ fencing


class TestFencing:
    def test_a_stale_fence_is_refused_and_writes_nothing(self, tmp_path: Path) -> None:
        conn = sqlite3.connect(tmp_path / "store.db")
        conn.execute("CREATE TABLE deals (asin TEXT PRIMARY KEY, price INTEGER)")
        conn.commit()
        upsert = "INSERT OR REPLACE INTO deals (asin, price) VALUES (?, ?)"
        assert fenced_execute(conn, "deals", 5, upsert, ("A1", 100)) == 1
        assert fenced_execute(conn, "deals", 5, upsert, ("A1", 101)) == 1  # the same holder again
        assert fenced_execute(conn, "deals", 7, upsert, ("A1", 120)) == 1  # a later holder
        with pytest.raises(LeaseLost, match="fence 5 is stale, a later holder wrote with fence 7"):
            fenced_execute(conn, "deals", 5, upsert, ("A1", 1))
        assert conn.execute("SELECT price FROM deals").fetchall() == [(120,)]
        assert fenced_execute(conn, "other", 1, upsert, ("B1", 5)) == 1  # fences are per resource

    def test_check_fence_inside_a_transaction_rolls_back_the_whole_transaction(self, tmp_path: Path) -> None:
        conn = sqlite3.connect(tmp_path / "store.db")
        create_fence_table(conn)
        conn.execute("CREATE TABLE log (line TEXT)")
        conn.commit()
        with conn:
            check_fence(conn, "log", 9)
            conn.execute("INSERT INTO log VALUES ('new holder')")

        def stale_transaction() -> None:
            with conn:
                conn.execute("INSERT INTO log VALUES ('stale holder, first statement')")
                check_fence(conn, "log", 8)

        with pytest.raises(LeaseLost):
            stale_transaction()
        assert conn.execute("SELECT line FROM log").fetchall() == [("new holder",)]
        with pytest.raises(ValueError, match="identifier"):
            check_fence(conn, "log", 9, table="x; DROP TABLE log")
        with pytest.raises(TypeError):
            check_fence(conn, "log", "9")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the real heartbeat


@pytest.mark.realtime
def test_the_heartbeat_thread_keeps_the_lease_past_its_ttl() -> None:
    backend = MemoryBackend()
    with LeaseLock("job", ttl=0.3, backend=backend) as lease:
        threading.Event().wait(0.8)
        lease.ensure_held()
        info = backend.lease_inspect("job")
        assert info is not None
        assert info.renewals >= 2
    assert backend.lease_inspect("job") is None


@pytest.mark.realtime
@pytest.mark.asyncio
async def test_the_heartbeat_task_keeps_the_lease_past_its_ttl() -> None:
    backend = MemoryBackend()
    async with AsyncLeaseLock("job", ttl=0.3, backend=backend) as lease:
        await asyncio.sleep(0.8)
        lease.ensure_held()
        assert lease.info.renewals >= 2
    assert backend.lease_inspect("job") is None


@pytest.mark.realtime
def test_a_dropped_handle_stops_its_heartbeat() -> None:
    backend = MemoryBackend()
    LeaseLock("job", ttl=0.3, backend=backend).acquire()  # the handle is dropped at once
    threading.Event().wait(0.8)
    assert backend.lease_inspect("job") is None  # nothing renews a lease nobody can release
