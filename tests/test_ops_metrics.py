"""`GET /metrics` and `/health` move as the cluster does: a scripted scenario (queue 50, drain
them, one dead letter, one cancel) read through the Prometheus text of the API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import api.metrics as api_metrics
from shared.llm.breaker import BreakerState, BreakerStatus
from shared.llm.breaker_store import RedisBreakerStore
from shared.models import Transition, encode_event
from shared.redis.group import GroupIO
from shared.redis.keys import Keys
from shared.store import Finishing
from tests.helpers import read_events, submit, wait_for, wait_status


async def flaky_model_agent(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    """Two failed model calls that the loop retries, then a third that ends the run."""
    for n in (1, 2):
        yield {"type": "notice", "code": "provider_retry", "message": "overloaded", "retry": n}
    yield {"type": "error", "code": "provider_error", "message": "overloaded"}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def fast_cache(api: Any) -> None:
    """Tests read fresh figures: no 10 s Postgres cache."""
    cluster = api.server.config.app.state.metrics.cluster
    cluster.postgres.ttl = 0.0
    cluster.redis.ttl = 0.0


async def test_metrics_follow_a_queue_a_drain_a_dead_letter_and_a_cancel(
    settings, api, client, store, redis_client, worker_factory
):
    fast_cache(api)
    keys = Keys.from_settings(settings)
    # Given 50 runs submitted while no worker runs
    run_ids = [
        await submit(client, agent="ticker", params={"count": 3, "interval_ms": 1})
        for _ in range(50)
    ]
    m = await scrape(client)
    # Then the backlog, the waiting entries and their age show, and no worker is live
    assert value(m, "longrun_queue_depth") == 50
    assert value(m, "longrun_queue_waiting") == 50
    assert value(m, "longrun_group_pending") == 0
    assert (value(m, "longrun_queue_oldest_waiting_age_seconds") or 0) > 0
    assert value(m, "longrun_workers_live") == 0
    assert value(m, "longrun_runs_active", status="queued") == 50
    assert value(m, "longrun_submit_duration_seconds_count", code="202") == 50
    assert value(m, "longrun_metrics_source_up", source="redis") == 1
    assert value(m, "longrun_metrics_source_up", source="postgres") == 1

    # When one run's entry goes to a consumer that vanishes, and a worker with max_attempts=1
    # drains the queue
    group = GroupIO(redis_client, keys)
    await group.ensure()
    ghost, _ = await group.pull(0, "ghost", 1)
    dead_run = ghost[0].run_id
    w = await worker_factory(max_attempts=1, lease_seconds=0.5)
    for rid in run_ids:
        await wait_status(client, rid, "succeeded", "failed")

    async def drained() -> Samples | None:
        got = await scrape(client)
        done = value(got, "longrun_runs_finished_total", status="succeeded") == 49
        # The worker publishes its free slots when its load changes, at most every
        # IN_FLIGHT_PUBLISH_SECONDS: the last run's slot may show freed a moment after it ends.
        free = value(got, "longrun_worker_free_slots", worker=w.name) == settings.concurrency
        return got if done and free and value(got, "longrun_queue_depth") == 0 else None

    m = await wait_for(drained)
    # Then 49 succeeded, the ghost's run was re-claimed and dead-lettered, the queue is empty
    assert value(m, "longrun_runs_finished_total", status="failed") == 1
    assert value(m, "longrun_dead_letters") == 1
    assert value(m, "longrun_dead_letters_unacknowledged") == 1
    assert (value(m, "longrun_reclaims_total") or 0) >= 1
    assert value(m, "longrun_runs_active", status="queued") == 0
    assert (await client.get(f"/runs/{dead_run}")).json()["status"] == "failed"
    # And the worker is live with all its slots free
    assert value(m, "longrun_workers_live") == 1
    assert value(m, "longrun_worker_free_slots", worker=w.name) == settings.concurrency
    assert value(m, "longrun_worker_runs_in_flight", worker=w.name) == 0

    # When a long run is followed over SSE and then cancelled
    long_run = await submit(client, agent="ticker", params={"count": 10000, "interval_ms": 20})
    await wait_status(client, long_run, "running")
    # (followed to its end: a reader that stopped after N events could be gone, caught up at
    # once from a run already N events in, before the figures below were read)
    reader = asyncio.create_task(read_events(client, long_run))

    async def streaming() -> Samples | None:
        got = await scrape(client)
        live = value(got, "longrun_sse_subscribers") == 1
        return got if live and value(got, "longrun_runs_in_flight") == 1 else None

    m = await wait_for(streaming)
    assert value(m, "longrun_worker_runs_in_flight", worker=w.name) == 1
    health = (await client.get("/health")).json()
    assert health["sse_subscribers"] == 1
    assert health["runs_in_flight"] == 1
    assert (await client.post(f"/runs/{long_run}/cancel")).status_code == 202
    _, followed = await reader
    assert followed[-1].event == "cancelled"
    await wait_status(client, long_run, "cancelled")

    async def cancelled() -> Samples | None:
        got = await scrape(client)
        return got if value(got, "longrun_runs_finished_total", status="cancelled") == 1 else None

    m = await wait_for(cancelled)
    # Then the cancel is counted, the stream's events were timed, and nobody streams any more
    assert value(m, "longrun_sse_subscribers") == 0
    assert (value(m, "longrun_event_delivery_lag_seconds_count") or 0) > 0
    assert value(m, "longrun_event_delivery_lag_seconds_bucket", le="+Inf") == value(
        m, "longrun_event_delivery_lag_seconds_count"
    )


async def test_cost_counters_and_breakers_are_read_from_where_workers_keep_them(
    settings, api, client, store, redis_client
):
    fast_cache(api)
    keys = Keys.from_settings(settings)
    # Given a run a worker ended having spent something, counters workers raised, and an open
    # breaker
    run_id = await submit(client, agent="ticker")
    run = await store.runs.claim(run_id, reclaim=False)
    done = encode_event(run.last_seq + 1, {"type": "done"})
    ending = Finishing(run_id, run.attempt, Transition.SUCCEED, [done], cost_usd=0.25)
    assert await store.batches.finish_many([ending]) == [None]
    await redis_client.hincrby(keys.counters, "lease_losses", 2)
    await redis_client.hincrby(keys.counters, "handoffs", 3)
    await redis_client.hincrby(keys.counters, "provider_errors", 4)
    breakers = RedisBreakerStore(redis_client, keys)
    assert await breakers.compare_and_set("model-a", 0, BreakerState(status=BreakerStatus.OPEN))
    # When scraped
    m = await scrape(client)
    # Then each shows under its conventional name
    assert value(m, "longrun_cost_usd_total") == 0.25
    assert value(m, "longrun_lease_losses_total") == 2
    assert value(m, "longrun_handoffs_total") == 3
    assert value(m, "longrun_provider_errors_total") == 4
    assert value(m, "longrun_reclaims_total") == 0
    assert value(m, "longrun_breaker_state", model="model-a", state="open") == 1
    assert value(m, "longrun_breaker_state", model="model-a", state="closed") == 0


async def test_failed_model_calls_are_counted_as_provider_errors(
    settings, api_factory, worker_factory, store
):
    s = settings.with_(agent_modules=("flaky=tests.test_ops_metrics:flaky_model_agent",))
    api = await api_factory(s)
    fast_cache(api)
    await worker_factory(s)
    _, key = await store.users.create_key("bob")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        # Given a run whose model fails twice (retried) and then for good
        run_id = await submit(client, agent="flaky")
        body = await wait_status(client, run_id, "failed")
        assert body["error"]["code"] == "provider_error"
        # Then the three failed calls are counted cluster-wide
        m = await scrape(client)
        assert value(m, "longrun_provider_errors_total") == 3


async def test_a_scrape_storm_reads_the_stores_once_per_cache_period(api, monkeypatch, client):
    app = api.server.config.app
    cluster = app.state.metrics.cluster
    cluster.redis.ttl = cluster.postgres.ttl = cluster.schedules.ttl = 60.0
    store = app.state.longrun.store
    # Every read of the stores the scrape makes, counted where it is made (the Redis server is
    # shared with tests running alongside, so its own command count cannot tell)
    reads: list[str] = []

    def counted(name: str, read: Any) -> Any:
        async def wrapper(*args: Any) -> Any:
            reads.append(name)
            return await read(*args)

        return wrapper

    monkeypatch.setattr("api.metrics.cluster_redis", counted("redis", api_metrics.cluster_redis))
    monkeypatch.setattr(store.ops, "run_figures", counted("runs", store.ops.run_figures))
    monkeypatch.setattr(store.schedules, "figures", counted("schedules", store.schedules.figures))
    # When one scrape fills the cache and fifty come at once within its period
    first = await scrape(client)
    assert sorted(reads) == ["redis", "runs", "schedules"]
    await asyncio.gather(*(scrape(client) for _ in range(50)))
    # Then none of them read a store again
    assert sorted(reads) == ["redis", "runs", "schedules"]
    assert value(first, "longrun_queue_depth") == 0


async def test_metrics_report_a_store_that_does_not_answer_instead_of_failing(
    api, client, monkeypatch
):
    fast_cache(api)
    state = api.server.config.app.state.longrun

    async def down(*_: Any, **__: Any) -> None:
        raise ConnectionError("redis is away")

    monkeypatch.setattr(state.redis, "xlen", down)
    m = await scrape(client)
    assert value(m, "longrun_metrics_source_up", source="redis") == 0
    assert value(m, "longrun_metrics_source_up", source="postgres") == 1
    assert value(m, "longrun_queue_depth") is None
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["runs_in_flight"] is None


async def test_ready_fails_as_soon_as_shutdown_begins(api, client):
    from api.shutdown import begin_shutdown

    assert (await client.get("/ready")).status_code == 200
    app = api.server.config.app
    begin_shutdown(app)
    try:
        resp = await client.get("/ready")
        assert resp.status_code == 503
        assert resp.json()["checks"]["shutdown"] == "in progress"
        assert (await client.get("/health")).json()["shutting_down"] is True
    finally:
        from sse_starlette.sse import AppStatus

        AppStatus.should_exit = False  # process-global: do not end other tests' streams
