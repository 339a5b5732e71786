"""Human in the loop (issue 16): a run that asks a person waits released (no slot, no lease, no
queue entry), shows its interrupt, and resumes with the answer exactly where it stopped; the
resume endpoint's refusals; deadlines; cancels; a waiting run's thread and stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.redis.keys import Keys
from shared.store import Store
from tests.helpers import (
    Got,
    queue_backlog,
    read_events,
    submit,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.timeout(90)

ASKER = (
    "asker=tests.agents:asker",
    "pauser=tests.agents:pauser",
    "cancelled_then_asks=tests.agents:cancelled_then_asks",
)


@pytest.fixture
async def hitl(settings, store: Store, api_factory, worker_factory, api_key):
    """An API and a worker that know the `asker` agent, and the side-effect table it writes."""
    # A thousand submits in a few seconds are not refused by the per-user rate.
    s = settings.with_(agent_modules=ASKER, submit_rate_per_second=5000.0, submit_burst=2000)
    async with store.db.conn() as c:
        await c.execute(
            "CREATE TABLE side_effects (key text PRIMARY KEY, run_id text, step int, "
            "duplicates int NOT NULL DEFAULT 0)"
        )
    srv = await api_factory(s)
    w = await worker_factory(s)
    return s, srv, w


@pytest.fixture
async def alice(hitl, api_key) -> AsyncIterator[httpx.AsyncClient]:
    _, srv, _ = hitl
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        yield c


async def waiting_run(
    client: httpx.AsyncClient, agent: str = "asker", **body: Any
) -> dict[str, Any]:
    params = body.pop("params", {})
    rid = await submit(client, agent=agent, params=params, **body)
    return await wait_status(client, rid, "waiting")


async def queue_figures(settings, redis_client) -> tuple[int, int]:
    keys = Keys.from_settings(settings)
    xlen = await queue_backlog(redis_client, keys)
    try:
        pending = await redis_client.xpending(keys.queue, keys.group)
    except Exception:  # no group yet
        return xlen, 0
    return xlen, int(pending["pending"])


async def side_effects(store: Store) -> list[tuple[int, int]]:
    async with store.db.conn() as c:
        rows = await c.fetch("SELECT step, duplicates FROM side_effects ORDER BY step")
    return [(r["step"], r["duplicates"]) for r in rows]


def assert_once(events: list[Got], steps: int) -> None:
    """Gapless ids, one terminal event last, each tool call and each step's token once."""
    seqs = [e.data["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    assert [e.id for e in events] == [str(s) for s in seqs]
    calls = [e.data["call_id"] for e in events if e.event == "tool_start"]
    assert len(calls) == len(set(calls)) == steps
    steps_said = [e.data["text"] for e in events if e.event == "token" and e.data["text"].isdigit()]
    assert steps_said == [str(i) for i in range(1, steps + 1)]
    assert [e.event for e in events if e.event in ("done", "error", "cancelled")] == ["done"]
    assert events[-1].event == "done"


async def test_a_run_that_asks_waits_released_and_resumes_with_the_answer_exactly_once(
    hitl, alice, store, redis_client
):
    settings, _, worker = hitl
    # Given a run that asks a person before its third step
    run = await waiting_run(alice, params={"steps": 4, "ask_at": 3})
    rid = run["run_id"]
    # Then it shows its interrupt and holds nothing: no slot, no queue entry, no lease
    pending = run["interrupt"]
    assert pending["payload"] == {"question": "go on?", "step": 3}
    assert pending["deadline"] is None
    assert run["waiting_since"] is not None
    await wait_for(lambda: _true(not worker.slots and not worker.acking))
    assert await queue_figures(settings, redis_client) == (0, 0)
    assert await side_effects(store) == [(1, 0), (2, 0)]
    _, before = await read_events(alice, rid, limit=8)
    asked = before[-1]
    assert asked.event == "interrupt"
    assert asked.data["interrupt_id"] == pending["interrupt_id"]
    assert asked.data["payload"] == pending["payload"]

    # When its owner answers
    resp = await alice.post(
        f"/runs/{rid}/resume", json={"interrupt_id": pending["interrupt_id"], "value": "yes"}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json() == {
        "run_id": rid,
        "interrupt_id": pending["interrupt_id"],
        "status": "queued",
    }

    # Then the run goes on from its checkpoint: every step and tool call exactly once
    done = await wait_status(alice, rid, "succeeded")
    assert done["output"] == {"answer": "yes"}
    assert done["interrupt"] is None
    assert done["attempts"] == 2
    _, events = await read_events(alice, rid)
    assert events[: len(before)] == before
    assert_once(events, 4)
    after = [e.event for e in events[len(before) :]]
    assert after[0] == "resumed"
    assert [e.data["text"] for e in events if e.event == "token"][2] == "answer:yes"
    assert await side_effects(store) == [(1, 0), (2, 0), (3, 0), (4, 0)]
    assert await queue_figures(settings, redis_client) == (0, 0)


async def _true(value: bool) -> bool:
    return value


async def resume(client: httpx.AsyncClient, rid: str, **body: Any) -> httpx.Response:
    return await client.post(f"/runs/{rid}/resume", json=body)


async def interrupt_rows(store: Store) -> list[tuple[str | None, Any]]:
    async with store.db.conn() as c:
        rows = await c.fetch("SELECT outcome, value FROM run_interrupts ORDER BY asked_at")
    return [(r["outcome"], r["value"]) for r in rows]


async def test_a_repeated_resume_gets_the_same_answer_and_queues_no_second_run(
    hitl, alice, store, redis_client
):
    settings, _, _ = hitl
    run = await waiting_run(alice, "pauser")
    rid, iid = run["run_id"], run["interrupt"]["interrupt_id"]
    # When the same answer is sent twice (a client retrying after a lost reply)
    first = await resume(alice, rid, interrupt_id=iid, value={"pick": 2})
    await wait_status(alice, rid, "succeeded")
    again = await resume(alice, rid, interrupt_id=iid, value={"pick": 2})
    # Then both get the same answer, the second is marked a replay and queues nothing
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await queue_figures(settings, redis_client) == (0, 0)
    done = (await alice.get(f"/runs/{rid}")).json()
    assert done["attempts"] == 2
    assert done["output"] == {"answer": {"pick": 2}}
    # And another value for a closed interrupt is a conflict
    other = await resume(alice, rid, interrupt_id=iid, value={"pick": 3})
    assert other.status_code == 409
    assert other.json()["error"] == "interrupt_answered"


async def test_a_run_may_ask_again_after_an_answer_and_an_old_interrupt_id_is_then_stale(
    hitl, alice
):
    first = await waiting_run(alice, "pauser", params={"asks": 2})
    rid, iid1 = first["run_id"], first["interrupt"]["interrupt_id"]
    assert (await resume(alice, rid, interrupt_id=iid1, value="a")).status_code == 202

    async def asks_again() -> dict[str, Any] | None:
        run: dict[str, Any] = (await alice.get(f"/runs/{rid}")).json()
        pending = run.get("interrupt")
        return run if pending and pending["interrupt_id"] != iid1 else None

    second = await wait_for(asks_again)
    assert second["interrupt"]["payload"] == {"again": 1}
    stale = await resume(alice, rid, interrupt_id=iid1, value="other")
    assert stale.status_code == 409
    ok = await resume(alice, rid, interrupt_id=second["interrupt"]["interrupt_id"], value="b")
    assert ok.status_code == 202
    done = await wait_status(alice, rid, "succeeded")
    assert done["output"] == {"answer": ["a", "b"]}
    assert done["attempts"] == 3
    _, events = await read_events(alice, rid)
    assert [e.event for e in events] == [
        "start", "token", "interrupt", "resumed", "interrupt", "resumed", "done"
    ]  # fmt: skip
    assert [e.data["seq"] for e in events] == list(range(1, 8))


async def test_a_stale_or_unknown_interrupt_id_is_a_409_and_writes_nothing(hitl, alice, store):
    run = await waiting_run(alice, "pauser")
    rid = run["run_id"]
    resp = await resume(alice, rid, interrupt_id="0" * 32, value=True)
    assert resp.status_code == 409
    body = resp.json()
    assert body["error"] == "interrupt_mismatch"
    assert set(body) == {"error", "detail", "request_id"}
    assert (await alice.get(f"/runs/{rid}")).json()["status"] == "waiting"
    assert await interrupt_rows(store) == [(None, None)]


async def test_another_users_resume_is_a_404_like_a_run_that_does_not_exist(
    hitl, alice, store, bob
):
    _, srv, _ = hitl
    run = await waiting_run(alice, "pauser")
    rid, iid = run["run_id"], run["interrupt"]["interrupt_id"]
    async with httpx.AsyncClient(base_url=srv.url, headers=bob.headers, timeout=10) as b:
        theirs = await resume(b, rid, interrupt_id=iid, value=True)
        missing = await resume(b, "00000000-0000-4000-8000-000000000000", interrupt_id=iid, value=1)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == missing.json()["error"]
    assert (await alice.get(f"/runs/{rid}")).json()["status"] == "waiting"
    assert await interrupt_rows(store) == [(None, None)]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"value": 1}, 422),  # no interrupt_id
        ({"interrupt_id": "IID"}, 422),  # no value
        ({"interrupt_id": "nope", "value": 1}, 422),
        ({"interrupt_id": "IID", "value": 1, "extra": 1}, 422),
        ({"interrupt_id": "IID", "value": "x" * 70_000}, 422),  # over LONGRUN_MAX_INTERRUPT_BYTES
        ({"interrupt_id": "IID", "value": {"a": "\u0000"}}, 422),
        ([1, 2], 422),
    ],
)
async def test_a_bad_resume_body_is_a_4xx_and_writes_nothing(hitl, alice, store, body, status):
    run = await waiting_run(alice, "pauser")
    rid, iid = run["run_id"], run["interrupt"]["interrupt_id"]
    if isinstance(body, dict) and body.get("interrupt_id") == "IID":
        body = {**body, "interrupt_id": iid}
    if isinstance(body, dict) and body.get("value") == {"a": "\\u0000"}:
        body = {**body, "value": {"a": "\x00"}}
    resp = await alice.post(f"/runs/{rid}/resume", json=body)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error", "detail", "request_id"}
    assert (await alice.get(f"/runs/{rid}")).json()["status"] == "waiting"
    assert await interrupt_rows(store) == [(None, None)]
    # A body that is not JSON at all, with curl-like raw bytes
    raw = await alice.post(
        f"/runs/{rid}/resume", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert 400 <= raw.status_code < 500


async def test_a_deadline_with_no_default_ends_the_run_interrupt_timeout(hitl, alice, store):
    run = await waiting_run(alice, "pauser", params={"timeout_seconds": 1})
    rid = run["run_id"]
    assert run["interrupt"]["deadline"] is not None
    done = await wait_status(alice, rid, "failed", timeout=30)
    assert done["error"]["code"] == "interrupt_timeout"
    _, events = await read_events(alice, rid)
    assert [e.event for e in events] == ["start", "token", "interrupt", "error"]
    assert events[-1].data["code"] == "interrupt_timeout"
    assert events[2].data["on_timeout"] == "error"
    # A resume after the deadline finds the interrupt closed
    late = await resume(alice, rid, interrupt_id=run["interrupt"]["interrupt_id"], value=1)
    assert late.status_code == 409
    assert await interrupt_rows(store) == [("timed_out", None)]


async def test_a_deadline_with_a_default_resumes_the_run_with_the_default(hitl, alice, store):
    run = await waiting_run(alice, "pauser", params={"timeout_seconds": 1, "default": "no"})
    rid = run["run_id"]
    done = await wait_status(alice, rid, "succeeded", timeout=30)
    assert done["output"] == {"answer": "no"}
    _, events = await read_events(alice, rid)
    assert [e.event for e in events] == ["start", "token", "interrupt", "resumed", "done"]
    assert await interrupt_rows(store) == [("default", "no")]


async def test_a_waiting_run_can_be_cancelled_and_then_not_resumed(hitl, alice, store):
    run = await waiting_run(alice, "pauser")
    rid = run["run_id"]
    resp = await alice.post(f"/runs/{rid}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "cancelled"
    done = (await alice.get(f"/runs/{rid}")).json()
    assert done["status"] == "cancelled"
    assert done["interrupt"] is None
    _, events = await read_events(alice, rid)
    assert [e.event for e in events] == ["start", "token", "interrupt", "cancelled"]
    late = await resume(alice, rid, interrupt_id=run["interrupt"]["interrupt_id"], value=1)
    assert late.status_code == 409
    assert late.json()["error"] == "not_waiting"


async def test_a_cancel_asked_before_the_interrupt_ends_the_run_cancelled_not_waiting(
    hitl, alice, store
):
    rid = await submit(alice, agent="cancelled_then_asks")
    done = await wait_status(alice, rid, "cancelled")
    assert done["interrupt"] is None
    _, events = await read_events(alice, rid)
    assert [e.event for e in events] == ["start", "token", "cancelled"]
    assert await interrupt_rows(store) == []


async def test_the_stream_of_a_waiting_run_stays_open_with_keep_alives_then_ends(hitl, alice):
    run = await waiting_run(alice, "pauser")
    rid, iid = run["run_id"], run["interrupt"]["interrupt_id"]
    lines: list[str] = []
    async with alice.stream("GET", f"/runs/{rid}/events") as stream:
        it = stream.aiter_lines()
        # Given a follower that has read up to the interrupt
        while not any(line.startswith("event: interrupt") for line in lines):
            lines.append(await anext(it))
        # Then keep-alive comments (no id) follow while the run waits
        pings = 0
        while pings < 2:
            line = await anext(it)
            lines.append(line)
            pings += line.startswith(":")
        # And once answered, the same stream carries the rest to the end
        assert (await resume(alice, rid, interrupt_id=iid, value=7)).status_code == 202
        async for line in it:
            lines.append(line)
    events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    assert events == ["start", "token", "interrupt", "resumed", "done"]
    # A client coming back later with its Last-Event-ID gets the rest, same ids
    _, rest = await read_events(alice, rid, last_event_id="3")
    assert [(e.id, e.event) for e in rest] == [("4", "resumed"), ("5", "done")]


async def test_a_waiting_run_holds_its_threads_turn_and_interrupt_mode_cancels_it(hitl, alice):
    first = await waiting_run(alice, "pauser", thread_id="t-1")
    # Given a later run on the same thread: it queues behind the waiting one
    later = await submit(alice, agent="pauser", thread_id="t-1", params={"payload": "second"})
    await asyncio.sleep(1.0)  # nothing to await: the claim must not happen
    assert (await alice.get(f"/runs/{later}")).json()["status"] == "queued"
    # When the first is answered, it finishes, then the later one runs (and asks in turn)
    iid = first["interrupt"]["interrupt_id"]
    assert (await resume(alice, first["run_id"], interrupt_id=iid, value=1)).status_code == 202
    await wait_status(alice, first["run_id"], "succeeded")
    asked = await wait_status(alice, later, "waiting")
    assert asked["interrupt"]["payload"] == "second"
    # And `interrupt` thread mode cancels a waiting run like a running one
    third = await submit(alice, agent="pauser", thread_id="t-1", thread_mode="interrupt")
    assert (await wait_status(alice, later, "cancelled"))["status"] == "cancelled"
    await wait_status(alice, third, "waiting")


@pytest.mark.timeout(300)  # a loaded machine: 2,000 requests and 2,000 attempts
async def test_a_thousand_waiting_runs_hold_no_worker_slot_and_no_queue_entry(
    hitl, store, redis_client, alice
):
    settings, _, worker = hitl
    n = 1000
    start = time.monotonic()
    sem = asyncio.Semaphore(32)

    async def one() -> str:
        async with sem:
            return await submit(alice, agent="pauser")

    rids = await asyncio.gather(*(one() for _ in range(n)))

    async def all_waiting() -> bool:
        async with store.db.conn() as c:
            count = await c.fetchval("SELECT count(*) FROM runs WHERE status = 'waiting'")
        return bool(count == n)

    await wait_for(all_waiting, timeout=120, interval=0.5)
    took = time.monotonic() - start
    # Then no slot, no entry, no lease is held for any of them
    assert not worker.slots
    assert await queue_figures(settings, redis_client) == (0, 0)
    metrics = (await alice.get("/metrics")).text
    assert 'longrun_runs_active{status="waiting"} 1000.0' in metrics
    assert "longrun_oldest_wait_seconds" in metrics
    # And a new run still gets a slot at once
    rid = await submit(alice, agent="pauser")
    await wait_status(alice, rid, "waiting")
    assert len(set(rids)) == n

    # When all of them are answered at once, every one finishes, each resumed once
    async with store.db.conn() as c:
        asked = await c.fetch(
            "SELECT run_id::text, interrupt->>'interrupt_id' AS iid FROM runs "
            "WHERE status = 'waiting' AND run_id = ANY($1::uuid[])",
            rids,
        )
    start = time.monotonic()

    async def answer(row: Any) -> None:
        async with sem:
            resp = await resume(alice, row["run_id"], interrupt_id=row["iid"], value=1)
            assert resp.status_code == 202, resp.text

    await asyncio.gather(*(answer(r) for r in asked))

    async def all_done() -> bool:
        async with store.db.conn() as c:
            count = await c.fetchval(
                "SELECT count(*) FROM runs WHERE status = 'succeeded' AND attempt = 2"
            )
        return bool(count == n)

    await wait_for(all_done, timeout=120, interval=0.5)
    resumed = time.monotonic() - start
    assert await queue_figures(settings, redis_client) == (0, 0)
    print(f"1000 runs to waiting in {took:.1f} s; all answered and finished in {resumed:.1f} s")
