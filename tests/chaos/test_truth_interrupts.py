"""Issue 16 under faults: a run waiting for a person survives its worker killed (SIGKILL, a
real process) and Redis restarted empty while it waits; resumed afterwards, it finishes with its
tokens, tool calls and side effects exactly once, and what clients read equals the archive."""

from __future__ import annotations

import json
import signal
from typing import Any

import asyncpg
import httpx
import pytest

from tests.chaos.conftest import StackFactory
from tests.helpers import Got, read_events, wait_for, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

AGENTS = "asker=tests.agents:asker"


async def _submit(client: httpx.AsyncClient, **body: Any) -> str:
    resp = await client.post("/runs", json=body)
    assert resp.status_code == 202, resp.text
    rid: str = resp.json()["run_id"]
    return rid


async def _resume(client: httpx.AsyncClient, run: dict[str, Any], value: Any) -> None:
    """Resume, retrying while the API finds its Redis again (503)."""

    async def once() -> bool:
        resp = await client.post(
            f"/runs/{run['run_id']}/resume",
            json={"interrupt_id": run["interrupt"]["interrupt_id"], "value": value},
        )
        assert resp.status_code in (202, 503), resp.text
        return resp.status_code == 202

    await wait_for(once, timeout=30, interval=0.2)


async def _archive(dsn: str, rid: str) -> list[tuple[int, str, bytes]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT seq, type, data FROM run_events WHERE run_id = $1 ORDER BY seq", rid
        )
    finally:
        await conn.close()
    return [(r["seq"], r["type"], bytes(r["data"])) for r in rows]


def _once(events: list[Got]) -> None:
    seqs = [e.data["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    calls = [e.data["call_id"] for e in events if e.event == "tool_start"]
    assert len(calls) == len(set(calls))
    assert [e.event for e in events].count("interrupt") == 1
    assert [e.event for e in events if e.event in ("done", "error", "cancelled")] == ["done"]


async def test_a_waiting_run_survives_its_worker_killed_and_redis_emptied_then_finishes_once(
    make_stack: StackFactory,
) -> None:
    # Given two runs waiting for a person on one worker process: a chat run whose calculator
    # call needs approval, and an agent that wrote two side effects before asking
    stack = await make_stack(workers=1, LONGRUN_AGENTS=AGENTS)
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.execute(
            "CREATE TABLE side_effects (key text PRIMARY KEY, run_id text, step int, "
            "duplicates int NOT NULL DEFAULT 0)"
        )
    finally:
        await conn.close()
    c = stack.client
    chat = await _submit(
        c,
        agent="chat",
        input="what is 6*7",
        params={"tools": ["calculator"], "require_approval": ["calculator"]},
    )
    asker = await _submit(c, agent="asker", input="t", params={"steps": 4, "ask_at": 3})
    waiting = {rid: await wait_status(c, rid, "waiting", timeout=30) for rid in (chat, asker)}
    before = {
        rid: (await read_events(c, rid, limit=run["last_seq"]))[1] for rid, run in waiting.items()
    }
    assert all(evs[-1].event == "interrupt" for evs in before.values())

    # When its worker is killed outright and Redis comes back empty while they wait
    worker = stack.workers[0]
    worker.signal(signal.SIGKILL)
    await worker.wait(10)
    await stack.redis.restart_empty()
    for rid in (chat, asker):  # Postgres still says they wait, and for what
        again = await wait_status(c, rid, "waiting", timeout=30)
        assert again["interrupt"] == waiting[rid]["interrupt"]
    await stack.add_worker("after")
    await stack.workers_ready()
    await _resume(c, waiting[chat], True)
    await _resume(c, waiting[asker], "yes")

    # Then both finish, each event, token, tool call and side effect exactly once, and what a
    # client reads is what the archive holds
    done_chat = await wait_status(c, chat, "succeeded", timeout=60)
    done_asker = await wait_status(c, asker, "succeeded", timeout=60)
    assert "6*7 = 42" in done_chat["output"]
    assert done_asker["output"] == {"answer": "yes"}
    for rid in (chat, asker):
        _, events = await read_events(c, rid)
        assert events[: len(before[rid])] == before[rid]
        _once(events)
        archive = await _archive(stack.dsn, rid)
        assert [(e.data["seq"], e.event) for e in events] == [(s, t) for s, t, _ in archive]
        for e, (_, _, data) in zip(events, archive, strict=True):
            assert e.data == json.loads(data)
    _, chat_events = await read_events(c, chat)
    assert [e.event for e in chat_events].count("usage") == 2  # two model turns, each once
    assert [e.event for e in chat_events].count("tool_start") == 1
    conn = await asyncpg.connect(stack.dsn)
    try:
        rows = await conn.fetch("SELECT step, duplicates FROM side_effects ORDER BY step")
    finally:
        await conn.close()
    assert [(r["step"], r["duplicates"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 0)]
