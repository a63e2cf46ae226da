"""The ring of a bucket's state (lua/bucket.lua, KEYS[1]) byte by byte: what it keeps, and old layouts.

The scripts are run directly (one EVALSHA each) against the session's private server, with
a client clock, so every byte of the stored value is known.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

import pytest
import redis

from tokenbucket.backends._redis import lua_source, parse_state

POLICY = struct.pack("<6d", 100.0, 1.0, 0.0, 0.0, 100.0, 1000.0)  # cap, refill, debt, min_start, initial, idle_ms
RING = 32


def entry(call: bytes, mark: float) -> bytes:
    return call + struct.pack("<d", mark)


def ids(n: int, tag: int) -> list[bytes]:
    return [struct.pack("<Q", tag * 1000 + i) for i in range(n)]


@pytest.fixture
def run(redis_client: redis.Redis) -> Callable[..., bytes]:
    """Run bucket script `op` at time `now` on a fresh bucket of this test, with extra ARGV."""
    tag = uuid.uuid4().hex
    keys = [f"{{ring-{tag}}}:bucket", f"{{ring-{tag}}}:queue", f"{{ring-{tag}}}:costs"]
    scripts = {}

    def call(op: str, now: float, *args: bytes | str) -> bytes:
        if op not in scripts:
            scripts[op] = redis_client.register_script(lua_source(f"bucket_{op}"))
        reply: bytes = scripts[op](keys, [repr(now), POLICY, *args])
        return reply

    call.keys = keys  # type: ignore[attr-defined]
    return call


def state(redis_client: redis.Redis, run: Callable[..., bytes]) -> bytes:
    raw = redis_client.get(run.keys[0])  # type: ignore[attr-defined]
    assert isinstance(raw, bytes)
    return raw


def head(tokens: float, updated: float, last_id: float, last_start: float = float("-inf")) -> bytes:
    return struct.pack("<5d", tokens, updated, last_id, last_start, 0.0) + POLICY


def test_the_ring_keeps_the_last_32_charging_calls_oldest_first(
    redis_client: redis.Redis, run: Callable[..., bytes]
) -> None:
    calls = ids(40, 1)
    for i, c in enumerate(calls):
        assert run("reserve", 10.0, "1", "", c) == b"1 0 0"
        raw = state(redis_client, run)
        kept = calls[max(0, i + 1 - RING) : i + 1]
        assert raw[88:] == b"".join(entry(k, 0) for k in kept)
    assert parse_state(raw)["tokens"] == 60
    # a retry of the last 32 is answered and charges nothing; an older one is a new call
    assert run("reserve", 10.0, "1", "", calls[8]) == b"1 0 0"
    assert parse_state(state(redis_client, run))["tokens"] == 60
    assert run("reserve", 10.0, "1", "", calls[7]) == b"1 0 0"
    assert parse_state(state(redis_client, run))["tokens"] == 59
    assert state(redis_client, run)[88:] == b"".join(entry(k, 0) for k in [*calls[9:], calls[7]])


def test_a_waiting_reservation_is_remembered_with_its_id(redis_client: redis.Redis, run: Callable[..., bytes]) -> None:
    first, second = ids(2, 2)
    assert run("reserve", 10.0, "100", "", first) == b"1 0 0"
    reply = run("reserve", 10.0, "4", "", second).split()
    assert reply[:2] == [b"1", b"4"]
    rid = float(reply[2])
    assert state(redis_client, run)[88:] == entry(first, 0) + entry(second, rid)
    assert run("reserve", 11.0, "4", "", second).split() == [b"1", b"3", reply[2]]  # the retry, 1 s later


def test_a_state_of_tokenbucket_0_1_is_read(redis_client: redis.Redis, run: Callable[..., bytes]) -> None:
    old = struct.pack("<4d", 50.0, 5.0, 7.0, float("-inf")) + POLICY  # 80 bytes, no epoch, no ring
    redis_client.set(run.keys[0], old)  # type: ignore[attr-defined]
    (call,) = ids(1, 3)
    assert run("reserve", 10.0, "1", "", call) == b"1 0 0"
    raw = state(redis_client, run)
    assert raw == head(54.0, 10.0, 7.0) + entry(call, 0)
    assert parse_state(raw) == {
        **dict(zip(("tokens", "updated", "last_id", "epoch"), (54.0, 10.0, 7.0, 0.0), strict=True)),
        **dict(
            zip(
                ("cap", "refill", "overdraft", "min_start", "initial", "idle_ms"),
                struct.unpack("<6d", POLICY),
                strict=True,
            )
        ),
    }


@pytest.mark.parametrize("stored", [0, 5, RING, RING + 8])
def test_a_stored_ring_of_any_length_is_read_and_trimmed_on_the_next_charge(
    redis_client: redis.Redis, run: Callable[..., bytes], stored: int
) -> None:
    calls = ids(stored + 1, 4)
    ring = b"".join(entry(c, 0) for c in calls[:stored])
    redis_client.set(run.keys[0], head(50.0, 10.0, 7.0) + ring)  # type: ignore[attr-defined]
    assert run("sync", 10.0, "50") == b"50 0"  # not a charging call: the ring is kept as it is
    assert state(redis_client, run)[88:] == ring
    for c in calls[:stored]:  # every stored call is found
        assert run("reserve", 10.0, "1", "", c) == b"1 0 0"
    assert parse_state(state(redis_client, run))["tokens"] == 50
    assert run("reserve", 10.0, "1", "", calls[-1]) == b"1 0 0"
    assert state(redis_client, run)[88:] == (ring + entry(calls[-1], 0))[-RING * 16 :]
    assert parse_state(state(redis_client, run))["tokens"] == 49


def test_void_marks_a_call_in_place_or_leaves_a_tombstone(redis_client: redis.Redis, run: Callable[..., bytes]) -> None:
    calls = ids(RING + 1, 5)
    ring = b"".join(entry(c, 0) for c in calls[:RING])
    redis_client.set(run.keys[0], head(50.0, 10.0, 7.0) + ring)  # type: ignore[attr-defined]
    assert run("void", 10.0, calls[3], "2") == b"2"  # it ran: its tokens come back, once
    taken = ring[: 3 * 16] + entry(calls[3], -2) + ring[4 * 16 :]
    assert state(redis_client, run) == head(52.0, 10.0, 7.0) + taken
    assert run("void", 10.0, calls[3], "2") == b"0"
    assert run("reserve", 10.0, "1", "", calls[3]) == b"void"
    assert run("void", 10.0, calls[RING], "2") == b"0"  # never seen: a tombstone, the oldest leaves
    assert state(redis_client, run) == head(52.0, 10.0, 7.0) + taken[16:] + entry(calls[RING], -1)
    assert run("reserve", 10.0, "1", "", calls[RING]) == b"void"
    assert parse_state(state(redis_client, run))["tokens"] == 52


def test_settle_is_remembered(redis_client: redis.Redis, run: Callable[..., bytes]) -> None:
    first, call = ids(2, 6)
    assert run("reserve", 10.0, "1", "", first) == b"1 0 0"
    assert run("settle", 10.0, "3", call) == b"96 0"
    assert run("settle", 10.0, "3", call) == b"96 0"  # the retry: answered, not charged again
    assert state(redis_client, run)[88:] == entry(first, 0) + entry(call, 0)


def test_reserve_all_keeps_each_ring_as_the_prelude_does(redis_client: redis.Redis) -> None:
    tag = uuid.uuid4().hex
    old, new = (f"{{ring-{tag}}}:{part}:" for part in ("old", "new"))
    keys = [name + kind for name in (old, new) for kind in ("bucket", "queue", "costs")]
    calls = ids(RING + 2, 7)
    ring = b"".join(entry(c, 0) for c in calls[:RING])
    redis_client.set(keys[0], head(50.0, 10.0, 7.0) + ring)  # 88 bytes and a full ring
    redis_client.set(keys[3], struct.pack("<4d", 50.0, 5.0, 7.0, float("-inf")) + POLICY)  # tokenbucket 0.1
    script = redis_client.register_script(lua_source("reserve_all"))

    def reserve(call: bytes) -> bytes:
        reply: bytes = script(keys, ["10.0", "", call, POLICY, "1", POLICY, "1"])
        return reply

    assert reserve(calls[0]) == b"1 0 0 0"  # in the first ring: a retry, nothing charged
    assert [parse_state(redis_client.get(k))["tokens"] for k in keys[::3]] == [50, 50]  # type: ignore[index]
    assert reserve(calls[RING]) == b"1 0 0 0"
    assert redis_client.get(keys[0]) == head(49.0, 10.0, 7.0) + ring[16:] + entry(calls[RING], 0)
    assert redis_client.get(keys[3]) == head(54.0, 10.0, 7.0) + entry(calls[RING], 0)
    assert reserve(calls[RING]) == b"1 0 0 0"
    assert [parse_state(redis_client.get(k))["tokens"] for k in keys[::3]] == [49, 54]  # type: ignore[index]


def test_a_reserve_for_several_requests_adds_each_to_the_ring_in_order(
    redis_client: redis.Redis, run: Callable[..., bytes]
) -> None:
    before = ids(25, 7)
    for c in before:
        run("reserve", 10.0, "1", "", c)
    batch = ids(12, 8)  # 12 requests in one call: the last is refused (it would wait), 8 + 3 start, 1 waits
    args: list[bytes | str] = []
    for i, c in enumerate(batch):
        args += ["1" if i < 10 else "70", "0" if i == 11 else "", c]
    replies = run("reserve", 10.0, *args).split(b",")
    assert replies[:10] == [b"1 0 0"] * 10
    admitted, delay, rid = replies[10].split()
    assert admitted == b"1"
    assert float(delay) > 0
    assert replies[11].startswith(b"0 ")
    kept = [entry(c, 0) for c in before] + [entry(c, 0) for c in batch[:10]] + [entry(batch[10], float(rid))]
    assert state(redis_client, run)[88:] == b"".join(kept[-RING:])  # the refused one charged nothing: not kept
    # the call retried: each request is answered as it was, and nothing more is charged
    tokens = parse_state(state(redis_client, run))["tokens"]
    again = run("reserve", 10.0, *args).split(b",")
    assert again[:11] == replies[:11]
    assert again[11].startswith(b"0 ")
    assert parse_state(state(redis_client, run))["tokens"] == tokens
