"""A worker's hold on its runs after Redis faults: which attempts a heartbeat stops because
their lease may have run out while Redis was away (`worker.liveness`, on a fake Redis), and
what becomes of a run's entry that Redis faults delivered too often (a real stack)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shared.config import Settings
from shared.models import QueuedRun, RunStatus
from shared.redis.codec import QueueEntry
from shared.redis.group import GroupIO
from shared.redis.keys import Keys
from shared.store.rows import NewRun
from tests.helpers import wait_for
from worker.attempt import AttemptState
from worker.liveness import Liveness, Slot

pytestmark = pytest.mark.timeout(60)

LEASE = 2.0


class _Group:
    spans_nodes = False

    async def beat(self, name: str, figures: dict[str, Any], ttl: int) -> None:
        pass


class _Redis:
    """Renews every entry it is asked to; records what it was asked."""

    def __init__(self) -> None:
        self.group = _Group()
        self.renewed: list[list[str]] = []

    async def renew(self, name: str, ids: list[str]) -> tuple[list[str], list[str]]:
        self.renewed.append(ids)
        return [], []

    async def count(self, name: str) -> None:
        pass


async def _slot(entry_id: str, leased_at: float) -> Slot:
    attempt = AttemptState(
        QueueEntry(entry_id, f"run-{entry_id}"), reclaimed=True, poison=False, leased_at=leased_at
    )
    return Slot(attempt, asyncio.create_task(asyncio.sleep(0)))


def _liveness(rio: _Redis, slots: dict[str, Slot], renewed_ago: float) -> Liveness:
    """A worker's liveness over `slots`, on a fake Redis, last renewed `renewed_ago` s ago."""
    live = Liveness(
        Settings(lease_seconds=LEASE),
        "w",
        slots,
        asyncio.Event(),
        lambda: rio,  # type: ignore[arg-type,return-value]  (a fake RedisIO)
        lambda: None,  # type: ignore[arg-type,return-value]
    )
    live.last_renewal = time.monotonic() - renewed_ago
    return live


async def test_a_run_taken_after_an_outage_keeps_its_lease_where_older_runs_lose_theirs() -> None:
    # Given a worker whose last renewal is older than most of a lease (Redis was away), holding
    # one run it had before the outage and one it re-claimed the moment Redis came back
    rio = _Redis()
    slots: dict[str, Slot] = {}
    live = _liveness(rio, slots, renewed_ago=LEASE)
    now = time.monotonic()
    slots["1-0"] = await _slot("1-0", leased_at=now - LEASE * 2)
    slots["2-0"] = await _slot("2-0", leased_at=now)

    # When the first beat after the outage runs
    await live.beat()

    # Then the older run stops (another worker may hold it by now), the re-claimed one goes on
    # and is renewed with the rest
    assert slots["1-0"].attempt.signals.lost.is_set()
    assert not slots["2-0"].attempt.signals.lost.is_set()
    assert rio.renewed == [["1-0", "2-0"]]


async def test_runs_renewed_within_the_lease_are_kept() -> None:
    rio = _Redis()
    slots: dict[str, Slot] = {}
    live = _liveness(rio, slots, renewed_ago=LEASE * 0.5)
    now = time.monotonic()
    slots["1-0"] = await _slot("1-0", leased_at=now - LEASE * 5)
    await live.beat()
    assert not slots["1-0"].attempt.signals.lost.is_set()


async def test_a_run_that_ended_is_not_dead_lettered_when_its_entry_comes_back_too_often(
    settings, store, redis_client, worker_factory
) -> None:
    # Given a run that succeeded
    keys = Keys.from_settings(settings)
    new = NewRun("u", "ticker", "x", {"count": 2, "interval_ms": 1}, {})
    run_id = (await store.submits.insert_run(new, max_in_flight=1_000_000)).run_id
    first = await worker_factory()
    await first.rio.enqueue(QueuedRun(run_id, "u"))

    async def succeeded() -> bool:
        run = await store.runs.get_run(run_id)
        return run is not None and run.status is RunStatus.SUCCEEDED

    await wait_for(succeeded, timeout=20, interval=0.02)
    await first.close()
    # And an entry of it still in the queue (as a failover can leave one), delivered to a
    # consumer that vanished
    await first.rio.enqueue(QueuedRun(run_id, "u"))
    ghost, _ = await GroupIO(redis_client, keys).pull(0, "ghost", 1)
    assert [e.run_id for e in ghost] == [run_id]

    # When a worker re-claims it past its allowed deliveries
    await worker_factory(max_attempts=1, lease_seconds=0.5)

    async def drained() -> bool:
        return int(await redis_client.xlen(keys.shard_queue(0))) == 0

    await wait_for(drained, timeout=20, interval=0.05)

    # Then the entry is dropped, and the run, which ended well, is neither dead-lettered nor
    # failed
    assert await redis_client.xlen(keys.dead_letters) == 0
    run = await store.runs.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.SUCCEEDED
