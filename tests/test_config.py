"""Rates, policies, clocks and the memory backend: configuration and bad input."""

from __future__ import annotations

import math

import pytest

from tokenbucket import AsyncTokenBucket, ConfigurationError, MemoryBackend, Rate, TokenBucket
from tokenbucket.backends import Backend, Policy
from tokenbucket.testing import ManualClock


class TestRate:
    @pytest.mark.parametrize(
        ("text", "per_second"),
        [("5/minute", 5 / 60), ("5 per minute", 5 / 60), ("300/hour", 300 / 3600), ("10 per 2 minutes", 10 / 120)],
    )
    def test_parse(self, text: str, per_second: float) -> None:
        assert Rate.parse(text).per_second == pytest.approx(per_second)

    def test_constructor_and_equality(self) -> None:
        assert Rate(5, per=60) == Rate.parse("5/minute")
        assert Rate(3).per_second == 3

    @pytest.mark.parametrize("text", ["", "abc", "5/fortnight", "0/minute", "5/minute;10/hour", "1.5/second"])
    def test_bad_strings_name_the_string(self, text: str) -> None:
        with pytest.raises(ConfigurationError) as info:
            Rate.parse(text)
        assert repr(text) in str(info.value)

    @pytest.mark.parametrize(("amount", "per"), [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (1, 0), (1, -5)])
    def test_bad_numbers(self, amount: float, per: float) -> None:
        with pytest.raises(ConfigurationError):
            Rate(amount, per=per)

    def test_wrong_types(self) -> None:
        with pytest.raises(TypeError):
            Rate("5", per=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Rate.coerce(5)  # type: ignore[arg-type]


class TestPolicy:
    def test_defaults(self) -> None:
        p = Policy.build("5/minute")
        assert (p.capacity, p.overdraft, p.min_start, p.initial) == (5, 0, 1, 5)

    @pytest.mark.parametrize(
        ("kwargs", "word"),
        [
            ({"capacity": 0}, "capacity"),
            ({"capacity": -3}, "capacity"),
            ({"capacity": math.inf}, "capacity"),
            ({"capacity": math.nan}, "capacity"),
            ({"overdraft": -1}, "overdraft"),
            ({"overdraft": math.nan}, "overdraft"),
            ({"min_start": 50, "capacity": 10, "overdraft": 5}, "min_start"),  # min_start counts only with an overdraft
            ({"min_start": -1}, "min_start"),
            ({"initial": 11, "capacity": 10}, "initial"),
            ({"initial": math.nan}, "initial"),
        ],
    )
    def test_bad_values(self, kwargs: dict[str, float], word: str) -> None:
        with pytest.raises(ConfigurationError, match=word):
            Policy.build("10/second", **kwargs)

    @pytest.mark.parametrize("kwargs", [{"capacity": "10"}, {"overdraft": None}, {"initial": "0"}, {"capacity": True}])
    def test_wrong_types(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(TypeError):
            Policy.build("10/second", **kwargs)  # type: ignore[arg-type]


class TestFrontEndConstruction:
    @pytest.mark.parametrize("cls", [TokenBucket, AsyncTokenBucket])
    def test_bad_arguments(self, cls: type) -> None:
        with pytest.raises(ConfigurationError):
            cls("", "5/minute")
        with pytest.raises(TypeError):
            cls(5, "5/minute")
        with pytest.raises(ConfigurationError):
            cls("k", "five per minute")
        with pytest.raises(TypeError):
            cls("k", "5/minute", backend=object())
        with pytest.raises(TypeError):
            cls("k", "5/minute", clock=object())

    def test_default_backend_is_shared_by_name(self) -> None:
        a = TokenBucket("shared-by-name-test", "1/hour", capacity=3)
        b = TokenBucket("shared-by-name-test", "1/hour", capacity=3)
        assert a.try_acquire(3) is not None
        assert b.try_acquire(1) is None

    def test_backends_satisfy_the_protocols(self) -> None:
        assert isinstance(MemoryBackend(), Backend)

    def test_repr_and_properties(self) -> None:
        bucket = TokenBucket("keepa", "5/minute", capacity=300, overdraft=math.inf)
        assert "keepa" in repr(bucket)
        assert bucket.capacity == 300
        assert bucket.overdraft == math.inf
        assert bucket.rate == Rate(5, per=60)


class TestManualClock:
    def test_never_goes_backwards(self) -> None:
        clock = ManualClock(10)
        with pytest.raises(ConfigurationError):
            clock.set(5)
        with pytest.raises(ConfigurationError):
            clock.advance(-1)
        assert clock.advance(2.5) == 12.5

    def test_sleep_jumps(self) -> None:
        clock = ManualClock()
        clock.sleep(3)
        assert clock.now() == 3

    async def test_async_sleep_waits_for_advance_without_autojump(self) -> None:
        import asyncio

        clock = ManualClock(autojump=False)
        task = asyncio.create_task(clock.asleep(5))
        await asyncio.sleep(0)
        clock.advance(4)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(1)
        await asyncio.wait_for(task, 1)
        assert clock.now() == 5


class TestMemoryBackend:
    def test_idle_full_buckets_are_dropped_and_recreated_identically(self) -> None:
        clock = ManualClock()
        backend = MemoryBackend(clock=clock)
        p = Policy.build("10/second", capacity=10)
        for i in range(5000):
            backend.reserve(f"k{i}", p, 1, 0.0, None)
        assert len(backend) <= 5000
        clock.advance(1)  # every bucket refills to full
        for i in range(5000, 10000):
            backend.reserve(f"k{i}", p, 1, 0.0, None)
        assert len(backend) < 7000  # the idle full ones were swept
        snap = backend.snapshot("k0", p, None)
        assert snap.tokens == 10

    def test_buckets_not_full_are_kept(self) -> None:
        clock = ManualClock()
        backend = MemoryBackend(clock=clock)
        p = Policy.build("1/hour", capacity=10)
        for i in range(3000):
            backend.reserve(f"k{i}", p, 5, 0.0, None)
        assert len(backend) == 3000
        assert backend.snapshot("k1", p, None).tokens == 5

    def test_initial_other_than_capacity_is_never_dropped(self) -> None:
        clock = ManualClock()
        backend = MemoryBackend(clock=clock)
        p = Policy.build("10/second", capacity=10, initial=0)
        for i in range(3000):
            backend.reserve(f"k{i}", p, 0, 0.0, None)
        clock.advance(10)
        backend.reserve("late", p, 0, 0.0, None)
        assert len(backend) == 3001
