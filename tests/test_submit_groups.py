"""Grouped submits (`api.submit_batch`) and the lean submit lane (`api.submit_lane`): concurrent
submits share round trips, yet every guarantee of a lone submit holds for each of them."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from api.admission import Admission
from api.submit.groups import SubmitGroups
from cli.admin import revoke_key
from shared.batching import Coalescer
from shared.errors import Unavailable
from shared.redis.keys import Keys
from shared.store import NewRun
from tests.helpers import queue_backlog, queue_run_ids

pytestmark = pytest.mark.timeout(60)

BODY = {"input": "hi", "agent": "ticker", "params": {"count": 1, "interval_ms": 0}}


# -- the coalescer ---------------------------------------------------------------------------
async def test_concurrent_calls_share_flushes_and_get_their_own_results():
    seen: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        seen.append(items)
        await asyncio.sleep(0)  # a round trip: the other callers queue up meanwhile
        return [ValueError(i) if i % 5 == 0 else i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(flush)
    results = await asyncio.gather(*(c.call(i) for i in range(1, 41)), return_exceptions=True)

    for i, r in enumerate(results, start=1):
        if i % 5 == 0:
            assert isinstance(r, ValueError)
            assert r.args == (i,)
        else:
            assert r == i * 10
    assert sorted(x for batch in seen for x in batch) == list(range(1, 41))
    assert len(seen) < 40  # grouped: the first alone, the rest together
    assert c.flushes == len(seen)
    assert c.items == 40


async def test_a_failed_flush_fails_its_batch_only():
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("down")
        return items

    c: Coalescer[int, int] = Coalescer(flush)
    first = asyncio.ensure_future(c.call(1))
    await asyncio.sleep(0)  # the first flush is out
    later = [asyncio.ensure_future(c.call(i)) for i in (2, 3)]
    with pytest.raises(ConnectionError):
        await first
    assert await asyncio.gather(*later) == [2, 3]


async def test_a_caller_that_goes_away_does_not_stop_its_batch():
    committed: list[int] = []
    release = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        await release.wait()
        committed.extend(items)
        return items

    c: Coalescer[int, int] = Coalescer(flush)
    gone = asyncio.ensure_future(c.call(1))
    await asyncio.sleep(0)
    gone.cancel()
    stay = asyncio.ensure_future(c.call(2))
    release.set()
    assert await stay == 2
    assert committed == [1, 2]
    # and the coalescer keeps working after its runner ended
    assert await c.call(3) == 3


async def test_at_most_the_configured_flushes_are_in_flight():
    in_flight = peak = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return items

    c: Coalescer[int, int] = Coalescer(flush, concurrency=2, max_batch=4)
    assert await asyncio.gather(*(c.call(i) for i in range(50))) == list(range(50))
    assert peak == 2


# -- submits through the API ----------------------------------------------------------------
def _groups(api) -> SubmitGroups:
    groups = api.server.config.app.state.longrun.submits
    assert groups is not None
    return groups


async def test_concurrent_submits_are_committed_in_groups_each_durable_and_queued(
    api, client, store, redis_client, settings
):
    assert (await client.post("/runs", json=BODY)).status_code == 202  # caches the key
    groups = _groups(api)
    before = groups.coalescer.flushes

    answers = await asyncio.gather(*(client.post("/runs", json=BODY) for _ in range(40)))

    assert [a.status_code for a in answers] == [202] * 40
    ids = {a.json()["run_id"] for a in answers}
    assert len(ids) == 40
    assert groups.coalescer.flushes - before < 40  # they shared round trips
    for a in answers:
        run = await store.runs.get_run(a.json()["run_id"])
        assert run is not None
        assert run.status == "queued"
        assert a.headers["location"] == f"/runs/{a.json()['run_id']}"
        assert a.headers["x-request-id"]
    keys = Keys.from_settings(settings)
    queued = set(await queue_run_ids(redis_client, keys))
    assert ids <= queued
    assert await queue_backlog(redis_client, keys) == 41


async def test_the_lane_answers_like_the_route(api, client):
    await client.post("/runs", json=BODY)  # caches the key
    flushes = _groups(api).coalescer.flushes
    lane = await client.post("/runs", json=BODY, headers={"X-Request-ID": "req-lane-1"})
    assert _groups(api).coalescer.flushes == flushes + 1
    # a thread makes the route answer it
    route = await client.post(
        "/runs", json={**BODY, "thread_id": "t-1"}, headers={"X-Request-ID": "req-route-1"}
    )
    assert lane.status_code == route.status_code == 202
    assert list(lane.json()) == list(route.json())
    assert lane.headers["x-request-id"] == "req-lane-1"
    assert route.headers["x-request-id"] == "req-route-1"
    assert lane.headers["content-type"] == route.headers["content-type"]
    assert lane.json()["events_url"].startswith(f"{api.url}/runs/{lane.json()['run_id']}/events?")
    assert lane.json()["url"] == f"{api.url}/runs/{lane.json()['run_id']}"
    # and the links work
    assert (await client.get(lane.json()["url"])).json()["status"] in ("queued", "running")


async def test_bad_bodies_still_get_the_routes_errors(api, client):
    await client.post("/runs", json=BODY)
    bad = await client.post(
        "/runs", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "malformed_json"
    assert "request_id" in bad.json()
    extra = await client.post("/runs", json={**BODY, "surprise": 1})
    assert extra.status_code == 422
    unknown = await client.post("/runs", json={**BODY, "agent": "nope"})
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_agent"


async def test_a_key_revoked_while_cached_is_refused_by_the_next_submit(client, store, settings):
    key_id, key = await store.users.create_key("carol")
    async with httpx.AsyncClient(
        base_url=str(client.base_url), headers={"Authorization": f"Bearer {key}"}
    ) as carol:
        assert (await carol.post("/runs", json=BODY)).status_code == 202  # now cached
        assert await revoke_key(settings, key_id)
        refused = await asyncio.gather(*(carol.post("/runs", json=BODY) for _ in range(5)))
    assert [r.status_code for r in refused] == [401] * 5
    listed = await store.runs.list_runs("carol", limit=10)
    assert len(listed) == 1
    assert (await client.post("/runs", json=BODY)).status_code == 202  # others unaffected


async def test_the_rate_limit_holds_for_a_group(api_factory, settings, api_key, store):
    srv = await api_factory(settings.with_(submit_rate_per_second=0.01, submit_burst=3))
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        first = await c.get("/runs")  # caches the key without spending a token
        assert first.status_code == 200
        answers = await asyncio.gather(*(c.post("/runs", json=BODY) for _ in range(8)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 3 + [429] * 5
    for a in answers:
        if a.status_code == 429:
            assert a.json()["error"] == "rate_limited"
            assert int(a.headers["retry-after"]) >= 1
    assert len(await store.runs.list_runs("alice", limit=20)) == 3


async def test_the_in_flight_cap_is_exact_under_concurrent_submits(
    api_factory, settings, api_key, store
):
    srv = await api_factory(settings.with_(max_runs_in_flight_per_user=5))
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        assert (await c.get("/runs")).status_code == 200
        answers = await asyncio.gather(*(c.post("/runs", json=BODY) for _ in range(12)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 5 + [429] * 7
    assert {a.json()["error"] for a in answers if a.status_code == 429} == {
        "too_many_runs_in_flight"
    }
    assert len(await store.runs.list_runs("alice", limit=20)) == 5


async def test_redis_refusing_the_group_is_a_503_that_writes_nothing(
    client, store, redis_client, settings
):
    await client.post("/runs", json=BODY)
    queue = Keys.from_settings(settings).held(0)
    await redis_client.delete(queue)
    await redis_client.set(queue, "not a stream")  # XLEN and XADD now fail (WRONGTYPE)
    try:
        answers = await asyncio.gather(*(client.post("/runs", json=BODY) for _ in range(6)))
    finally:
        await redis_client.delete(queue)
    assert [a.status_code for a in answers] == [503] * 6
    assert all(a.json()["error"] == "unavailable" and "request_id" in a.json() for a in answers)
    assert len(await store.runs.list_runs("alice", limit=20)) == 1


async def test_entries_redis_did_not_take_remove_their_rows(store, settings):
    # A Redis that is not there: the rows are inserted, the XADDs fail, the rows go again.
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    keys = Keys.from_settings(settings)
    groups = SubmitGroups(store, dead, keys, Admission(dead, keys, settings), settings)
    news = [NewRun("erin", "ticker", f"r{i}", {}, {}) for i in range(3)]
    try:
        outcomes = await groups._commit(news)
    finally:
        await dead.aclose()
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert await store.runs.list_runs("erin", limit=10) == []


async def test_keyed_submits_are_grouped_and_each_key_keeps_its_run(api, client, store):
    await client.post("/runs", json=BODY)  # caches the key
    before = _groups(api).coalescer.flushes
    first = await asyncio.gather(
        *(client.post("/runs", json=BODY, headers={"Idempotency-Key": f"g-{i}"}) for i in range(20))
    )
    assert [a.status_code for a in first] == [202] * 20
    assert _groups(api).coalescer.flushes - before < 20
    assert all("idempotent-replayed" not in a.headers for a in first)
    # Retried all at once, with the same bodies: the same runs, replayed, nothing new
    again = await asyncio.gather(
        *(client.post("/runs", json=BODY, headers={"Idempotency-Key": f"g-{i}"}) for i in range(20))
    )
    assert [a.json()["run_id"] for a in again] == [a.json()["run_id"] for a in first]
    assert all(a.headers["idempotent-replayed"] == "true" for a in again)
    assert len(await store.runs.list_runs("alice", limit=50)) == 21
    async with store.db.conn() as c:
        keyed = await c.fetchval("SELECT count(*) FROM idempotency_keys WHERE user_id = 'alice'")
    assert keyed == 20


async def test_one_key_sent_many_times_at_once_makes_one_run(client, store):
    await client.post("/runs", json=BODY)
    answers = await asyncio.gather(
        *(client.post("/runs", json=BODY, headers={"Idempotency-Key": "same"}) for _ in range(10))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
    assert len(await store.runs.list_runs("alice", limit=50)) == 2


async def test_a_keyed_retry_is_replayed_even_when_the_rate_limit_is_spent(
    api_factory, settings, api_key
):
    srv = await api_factory(settings.with_(submit_rate_per_second=0.01, submit_burst=1))
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        assert (await c.get("/runs")).status_code == 200
        first = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "once"})
        retry = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "once"})
        fresh = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "new"})
    assert first.status_code == 202
    assert retry.status_code == 202
    assert retry.json()["run_id"] == first.json()["run_id"]
    assert fresh.status_code == 429
