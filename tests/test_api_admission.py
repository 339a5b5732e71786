"""Admission: idempotent submits, per-user rate and in-flight caps, the global backlog limit,
the kill switch, and the per-user cap on open event streams. All shared through Redis and
Postgres, so they hold across API processes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from api.admission import submit_refusal
from shared.redis.admission import AdmissionIO
from shared.redis.keys import Keys
from tests.helpers import queue_backlog, submit, wait_for

BODY = {"input": "hello", "agent": "ticker", "params": {"count": 1}}


async def _client(srv, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


async def _runs(store, user: str = "alice") -> list[str]:
    return [r.run_id for r in await store.runs.list_runs(user, limit=100)]


async def test_a_retry_with_the_same_key_and_body_returns_the_same_run(client, store, settings):
    first = await client.post("/runs", json=BODY, headers={"Idempotency-Key": "k-1"})
    reordered = dict(reversed(BODY.items()))  # the same body, keys in another order
    again = await client.post("/runs", json=reordered, headers={"Idempotency-Key": "k-1"})

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert await _runs(store) == [first.json()["run_id"]]
    # one queue entry: no second execution
    assert await _xlen(settings) == 1


async def _xlen(settings) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        return await queue_backlog(r, Keys.from_settings(settings))
    finally:
        await r.aclose()


async def test_the_same_key_with_a_different_body_is_a_422(client, store):
    first = await client.post("/runs", json=BODY, headers={"Idempotency-Key": "k-2"})
    other = await client.post(
        "/runs", json={**BODY, "input": "something else"}, headers={"Idempotency-Key": "k-2"}
    )

    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"
    assert await _runs(store) == [first.json()["run_id"]]


async def test_identical_submits_racing_through_two_api_processes_make_one_run(
    client, api_factory, api_key, store, settings
):
    # When eight identical submits with one key arrive at once, at two API processes
    other = await api_factory()
    async with await _client(other, api_key) as second:
        answers = await asyncio.gather(
            *(
                c.post("/runs", json=BODY, headers={"Idempotency-Key": "race"})
                for c in (client, second) * 4
            )
        )

    # Then all succeed with the same run, and exactly one run and one queue entry exist
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert len(await _runs(store)) == 1
    assert await _xlen(settings) == 1


async def test_idempotency_keys_expire(client, store):
    first = await client.post("/runs", json=BODY, headers={"Idempotency-Key": "k-3"})
    # Given the key's time is up (moved into the past rather than waited for)
    async with store.db.conn() as c:
        await c.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")

    later = await client.post("/runs", json=BODY, headers={"Idempotency-Key": "k-3"})

    assert later.status_code == 202
    assert later.json()["run_id"] != first.json()["run_id"]
    assert "idempotent-replayed" not in later.headers


async def test_an_unusable_idempotency_key_is_a_422(client):
    resp = await client.post("/runs", json=BODY, headers={"Idempotency-Key": "x" * 300})
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_idempotency_key"


async def test_the_submit_rate_is_limited_per_user_with_retry_after(
    api_factory, settings, api_key, store
):
    srv = await api_factory(settings.with_(submit_rate_per_second=0.2, submit_burst=2))
    _, bob_key = await store.users.create_key("bob")
    async with await _client(srv, api_key) as alice, await _client(srv, bob_key) as bob:
        answers = [await alice.post("/runs", json=BODY) for _ in range(3)]
        bobs = await bob.post("/runs", json=BODY)

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[2].json()["error"] == "rate_limited"
    assert 1 <= int(answers[2].headers["retry-after"]) <= 5
    assert bobs.status_code == 202  # another user has a bucket of their own
    assert len(await _runs(store)) == 2


async def test_the_rate_limit_is_shared_by_api_processes(api_factory, settings, api_key):
    s = settings.with_(submit_rate_per_second=0.2, submit_burst=2)
    one, two = await api_factory(s), await api_factory(s)
    async with await _client(one, api_key) as a, await _client(two, api_key) as b:
        codes = [(await c.post("/runs", json=BODY)).status_code for c in (a, b, a, b)]
    assert codes == [202, 202, 429, 429]


async def test_a_user_at_the_in_flight_cap_gets_429_until_a_run_ends(
    api_factory, settings, api_key
):
    srv = await api_factory(settings.with_(max_runs_in_flight_per_user=2))
    async with await _client(srv, api_key) as c:
        first = await submit(c, **BODY)
        await submit(c, **BODY)
        refused = await c.post("/runs", json=BODY)
        # When one of the two ends, there is room again
        await c.post(f"/runs/{first}/cancel")
        admitted = await c.post("/runs", json=BODY)

    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_runs_in_flight"
    assert refused.headers["retry-after"]
    assert admitted.status_code == 202


async def test_concurrent_submits_never_exceed_the_in_flight_cap(
    api_factory, settings, api_key, store
):
    one = await api_factory(settings.with_(max_runs_in_flight_per_user=3))
    two = await api_factory(settings.with_(max_runs_in_flight_per_user=3))
    async with await _client(one, api_key) as a, await _client(two, api_key) as b:
        answers = await asyncio.gather(*(c.post("/runs", json=BODY) for c in (a, b) * 5))

    assert sorted(a.status_code for a in answers) == [202] * 3 + [429] * 7
    assert len(await _runs(store)) == 3


async def test_past_the_backlog_limit_submits_are_503_with_retry_after(
    api_factory, settings, api_key, store
):
    srv = await api_factory(settings.with_(max_backlog=2))
    async with await _client(srv, api_key) as c:
        codes = [(await c.post("/runs", json=BODY)) for _ in range(3)]

    assert [r.status_code for r in codes] == [202, 202, 503]
    assert codes[2].json()["error"] == "backlog_full"
    assert codes[2].headers["retry-after"]
    assert len(await _runs(store)) == 2


async def test_pause_and_resume_switch_submits_off_and_on(client, settings, redis_client, store):
    keys = Keys.from_settings(settings)
    running = await submit(client, **BODY)

    await AdmissionIO(redis_client, keys).set_paused("maintenance")
    paused = await client.post("/runs", json=BODY)
    still_readable = await client.get(f"/runs/{running}")
    await AdmissionIO(redis_client, keys).set_paused(None)
    resumed = await client.post("/runs", json=BODY)

    assert paused.status_code == 503
    assert paused.json()["error"] == "paused"
    assert int(paused.headers["retry-after"]) > 0
    assert still_readable.status_code == 200
    assert resumed.status_code == 202
    assert len(await _runs(store)) == 2


async def test_accept_runs_false_refuses_submits(api_factory, settings, api_key):
    srv = await api_factory(settings.with_(accept_runs=False))
    async with await _client(srv, api_key) as c:
        resp = await c.post("/runs", json=BODY)
        listed = await c.get("/runs")
    assert resp.status_code == 503
    assert resp.json()["error"] == "paused"
    assert resp.headers["retry-after"]
    assert listed.status_code == 200


def test_the_admission_decision_orders_switch_then_backlog_then_rate():
    base = {
        "accept_runs": True,
        "paused": False,
        "backlog": 0,
        "max_backlog": 10,
        "rate_allowed": True,
        "rate_wait": 0.0,
    }
    assert submit_refusal(**base) is None
    everything = {**base, "paused": True, "backlog": 10, "rate_allowed": False, "rate_wait": 2.5}
    assert submit_refusal(**everything).code == "paused"
    assert submit_refusal(**{**everything, "paused": False}).code == "backlog_full"
    rate = submit_refusal(**{**base, "rate_allowed": False, "rate_wait": 2.5})
    assert (rate.status, rate.code, rate.retry_after) == (429, "rate_limited", 3)


@pytest.mark.parametrize("via", ["bearer", "token"])
async def test_open_event_streams_are_capped_per_user_and_released_on_disconnect(
    api_factory, settings, api_key, redis_client, via
):
    srv = await api_factory(settings.with_(max_sse_per_user=2))
    state = srv.server.config.app.state
    async with await _client(srv, api_key) as c:
        answer = (await c.post("/runs", json=BODY)).json()  # no worker: it stays queued
        url = answer["events_url"] if via == "token" else f"/runs/{answer['run_id']}/events"
        streams = [c.stream("GET", url) for _ in range(2)]
        opened = [await s.__aenter__() for s in streams]
        assert [o.status_code for o in opened] == [200, 200]

        third = await c.get(url)
        assert third.status_code == 429
        assert third.json()["error"] == "too_many_streams"
        assert third.headers["retry-after"]

        # When a client goes away, its slot comes back
        await streams[0].__aexit__(None, None, None)

        async def slots() -> bool:
            return await state.security.admission.open_sse_slots("alice", time.time()) == 1

        await wait_for(slots, timeout=5)
        async with c.stream("GET", url) as fourth:
            assert fourth.status_code == 200
        await streams[1].__aexit__(None, None, None)
    await wait_for(lambda: _no_slots(state), timeout=5)


@pytest.mark.parametrize("path", ["grouped", "alone"])
async def test_a_submit_and_stream_past_the_stream_cap_is_refused_and_takes_nothing(
    api_factory, settings, api_key, store, redis_client, path
):
    # Given alice with one event stream allowed, a burst of two submits (no refill to speak
    # of), and one stream open on a queued run (no worker), which took one token
    s = settings.with_(max_sse_per_user=1, submit_burst=2, submit_rate_per_second=0.001)
    srv = await api_factory(s)
    bucket = Keys.from_settings(s).submit_bucket("alice")
    async with await _client(srv, api_key) as c:
        run_id = await submit(c, **BODY)
        async with c.stream("GET", f"/runs/{run_id}/events") as held:
            assert held.status_code == 200
            # When she submits-and-streams (in a submit group, or alone: a thread's submit)
            extra = {"thread_id": "t-1"} if path == "alone" else {}
            refused = await c.post("/runs/stream", json={**BODY, **extra})
            # Then 429 too_many_streams, nothing written
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"] == "too_many_streams"
            assert refused.headers["retry-after"]
            assert await _runs(store) == [run_id]
            assert await _xlen(s) == 1

            # and her second token is still there (a token the group took for it comes back)
            async def token_back() -> bool:
                return float(await redis_client.hget(bucket, "tokens") or 0) >= 1

            await wait_for(token_back, timeout=5)
            assert (await c.post("/runs", json=BODY)).status_code == 202
            # (the bucket is in force: the third submit is refused)
            third = await c.post("/runs", json=BODY)
            assert third.status_code == 429
            assert third.json()["error"] == "rate_limited"


async def _no_slots(state) -> bool:
    return await state.security.admission.open_sse_slots("alice", time.time()) == 0


async def test_a_crashed_processes_stream_slots_expire(
    api_factory, settings, api_key, redis_client
):
    srv = await api_factory(settings.with_(max_sse_per_user=1))
    keys = Keys.from_settings(settings)
    # Given a slot left behind by a process that died (never refreshed: its expiry passed)
    await redis_client.zadd(keys.sse_slots("alice"), {"dead-process-slot": time.time() - 1})
    async with await _client(srv, api_key) as c:
        run_id = await submit(c, **{**BODY, "params": {"count": 0}})
        await c.post(f"/runs/{run_id}/cancel")
        resp = await c.get(f"/runs/{run_id}/events")
    # Then it does not count against the user
    assert resp.status_code == 200


async def test_longrun_pause_and_resume_commands_flip_every_api_process(
    api_factory, settings, api_key
):
    import sys

    from tests.procs import ROOT, settings_env

    async def longrun(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            *args,
            env=settings_env(settings),
            cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out
        return out.decode()

    one, two = await api_factory(), await api_factory()
    async with await _client(one, api_key) as a, await _client(two, api_key) as b:
        await longrun("pause", "--reason", "deploy")
        paused = [(await c.post("/runs", json=BODY)).status_code for c in (a, b)]
        await longrun("resume")
        resumed = [(await c.post("/runs", json=BODY)).status_code for c in (a, b)]
    assert paused == [503, 503]
    assert resumed == [202, 202]
