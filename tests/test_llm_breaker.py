"""The circuit breaker: its pure state machine, then the same breaker on a real Redis shared by
several "workers"."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.llm.breaker import (
    Admission,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
    MemoryBreakerStore,
    Tally,
    admit,
    after_call,
    should_open,
    window_tally,
)
from shared.llm.breaker_store import RedisBreakerStore
from shared.redis.keys import Keys

REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY = BreakerPolicy(window_seconds=60, min_calls=4, error_rate=0.5, open_seconds=30)
CLOSED = BreakerState()
OPEN = BreakerState(status=BreakerStatus.OPEN, opened_at=1000.0, version=3)


# -- the pure machine ---------------------------------------------------------------------------


def test_a_closed_breaker_lets_calls_through() -> None:
    assert admit(CLOSED, 5.0, POLICY) == (Admission.ALLOW, None)


def test_it_opens_when_enough_calls_failed_often_enough() -> None:
    assert should_open(Tally(calls=4, failures=2), POLICY)
    assert not should_open(Tally(calls=4, failures=1), POLICY)
    assert not should_open(Tally(calls=3, failures=3), POLICY)  # too few calls to judge
    new = after_call(CLOSED, False, Tally(calls=4, failures=2), 1000.0, POLICY)
    assert new == BreakerState(status=BreakerStatus.OPEN, opened_at=1000.0)


def test_a_success_never_opens_it() -> None:
    assert after_call(CLOSED, True, Tally(calls=10, failures=9), 1000.0, POLICY) is None


def test_an_open_breaker_fails_fast_until_its_time_is_up_then_sends_one_probe() -> None:
    assert admit(OPEN, 1029.9, POLICY) == (Admission.REJECT, None)
    admission, new = admit(OPEN, 1030.0, POLICY)
    assert admission is Admission.PROBE
    assert new is not None
    assert (new.status, new.probe_at) == (BreakerStatus.HALF_OPEN, 1030.0)


def test_while_the_probe_is_out_other_calls_are_rejected_but_a_lost_probe_is_replaced() -> None:
    half = BreakerState(status=BreakerStatus.HALF_OPEN, opened_at=1000.0, probe_at=1030.0)
    assert admit(half, 1040.0, POLICY) == (Admission.REJECT, None)
    admission, new = admit(half, 1060.0, POLICY)
    assert admission is Admission.PROBE
    assert new is not None
    assert new.probe_at == 1060.0


def test_the_probes_result_closes_or_reopens_it() -> None:
    half = BreakerState(status=BreakerStatus.HALF_OPEN, epoch=2, opened_at=1000.0, probe_at=1030)
    closed = after_call(half, True, Tally(), 1031.0, POLICY)
    assert closed == BreakerState(status=BreakerStatus.CLOSED, epoch=3)
    reopened = after_call(half, False, Tally(), 1031.0, POLICY)
    assert reopened is not None
    assert (reopened.status, reopened.opened_at) == (BreakerStatus.OPEN, 1031.0)


def test_the_window_slides_over_two_buckets() -> None:
    previous, current = Tally(calls=10, failures=10), Tally(calls=2, failures=0)
    # A quarter into the current bucket, three quarters of the previous one still count.
    tally = window_tally(previous, current, now=60 * 100 + 15, window_seconds=60)
    assert tally == Tally(calls=2 + 7.5, failures=7.5)


async def test_a_breaker_goes_round_the_whole_cycle() -> None:
    now = [1000.0]
    breaker = CircuitBreaker(MemoryBreakerStore(), POLICY, clock=lambda: now[0])
    # Given four calls, two failed
    for ok in (True, True, False, False):
        assert await breaker.allow("m")
        await breaker.record("m", ok)
    # Then it is open and fails fast
    assert not await breaker.allow("m")
    # When its time is up one probe goes, and nobody else
    now[0] += 30
    assert await breaker.allow("m")
    assert not await breaker.allow("m")
    # And the probe's success closes it, with a clean slate
    await breaker.record("m", True)
    assert await breaker.allow("m")
    await breaker.record("m", False)
    assert await breaker.allow("m")
    # Other models are unaffected throughout
    assert await breaker.allow("other")


# -- shared through Redis -----------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[RedisBreakerStore]:
    prefix = f"lrtest-breaker-{uuid.uuid4().hex[:8]}"
    r = aioredis.Redis.from_url(REDIS_URL)
    keys = Keys(prefix=prefix, queue=f"{prefix}:runs", group="workers")
    try:
        yield RedisBreakerStore(r, keys)
    finally:
        async for key in r.scan_iter(match=keys.all_pattern()):
            await r.delete(key)
        await r.aclose()


async def test_workers_sharing_redis_see_one_breaker_per_model(store: RedisBreakerStore) -> None:
    now = [1000.0]
    a = CircuitBreaker(store, POLICY, clock=lambda: now[0])
    b = CircuitBreaker(store, POLICY, clock=lambda: now[0])
    # Given failures recorded by two different workers
    await a.record("m", False)
    await b.record("m", False)
    await a.record("m", True)
    assert await b.allow("m")
    await b.record("m", False)
    # Then both see it open
    assert not await a.allow("m")
    assert not await b.allow("m")
    state = await store.load("m")
    assert state.status is BreakerStatus.OPEN
    # And its keys live under the deployment's prefix, with bounded lifetimes
    r, named = store.io.r, store.io.keys
    keys = [k.decode() async for k in r.scan_iter(match=f"{named.prefix}:breaker:*")]
    assert named.breaker_state("m") in keys
    for key in keys:
        assert await r.ttl(key) > 0


async def test_when_two_workers_race_for_the_probe_only_one_gets_it(
    store: RedisBreakerStore,
) -> None:
    now = [1000.0]
    workers = [CircuitBreaker(store, POLICY, clock=lambda: now[0]) for _ in range(5)]
    for _ in range(4):
        await workers[0].record("m", False)
    now[0] += 31

    allowed = await asyncio.gather(*(w.allow("m") for w in workers))

    assert sorted(allowed) == [False, False, False, False, True]


async def test_compare_and_set_refuses_a_stale_version(store: RedisBreakerStore) -> None:
    assert await store.compare_and_set("m", 0, OPEN)
    assert not await store.compare_and_set("m", 0, CLOSED)
    state = await store.load("m")
    assert (state.status, state.version, state.opened_at) == (BreakerStatus.OPEN, 1, 1000.0)


async def test_a_breaker_whose_redis_is_down_lets_calls_through() -> None:
    r = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        keys = Keys(prefix="lrtest-down", queue="q", group="g")
        breaker = CircuitBreaker(RedisBreakerStore(r, keys), POLICY)
        await breaker.record("m", False)
        assert await breaker.allow("m")
    finally:
        await r.aclose()
