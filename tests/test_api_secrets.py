"""Secrets stay secret. Canaries are planted where secrets live -- the provider key in the
environment, a credential in an `Authorization` header, a secret in a tool's output -- then
runs take the success, failure and timeout paths. The provider key and the header appear
nowhere (logs, events, error bodies, metrics, Postgres, Redis); the tool output appears only
where the user's own data goes (that run's events and output), never in logs or errors.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared.agents.base import RunContext
from tests.helpers import read_events, wait_status

ENV_CANARY = f"sk-ant-canary-{uuid.uuid4().hex}"
HEADER_CANARY = f"lr_canary_{uuid.uuid4().hex}"
TOOL_CANARY = f"tool-secret-{uuid.uuid4().hex}"


async def canary_agent(ctx: RunContext) -> AsyncIterator[dict[str, Any]]:
    """A tool call whose output holds a secret, then success, a crash or a stall."""
    yield {"type": "tool_start", "name": "vault", "args": {"item": "db"}, "call_id": "c1"}
    yield {"type": "tool_end", "call_id": "c1", "ok": True, "output": TOOL_CANARY}
    mode = ctx.params.get("mode")
    if mode == "crash":
        raise RuntimeError("the vault answered something unparseable")
    if mode == "stall":
        await asyncio.sleep(3600)
    yield {"type": "done", "output": {"summary": "read the vault"}}


async def _postgres_text(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        out = {}
        for t in tables:
            rows = await conn.fetch(f'SELECT * FROM "{t}"')
            out[t] = "\n".join(
                str(
                    {
                        k: bytes(v).decode(errors="replace")
                        if isinstance(v, bytes | memoryview)
                        else v
                        for k, v in dict(r).items()
                    }
                )
                for r in rows
            )
        return out
    finally:
        await conn.close()


async def _redis_text(url: str, prefix: str) -> dict[str, str]:
    r = aioredis.Redis.from_url(url)
    out: dict[str, str] = {}
    try:
        async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            kind = (await r.type(key)).decode()
            if kind == "stream":
                value: Any = await r.xrange(key)
            elif kind == "hash":
                value = await r.hgetall(key)
            elif kind == "string":
                value = await r.get(key)
            elif kind == "zset":
                value = await r.zrange(key, 0, -1)
            else:
                value = kind
            out[key.decode()] = repr(value)
    finally:
        await r.aclose()
    return out


@pytest.fixture
def canary_settings(settings):
    return settings.with_(
        anthropic_api_key=ENV_CANARY,
        anthropic_base_url="http://127.0.0.1:9",  # nothing listens: the provider call fails
        provider_max_retries=0,
        agent_modules=("canary=tests.test_api_secrets:canary_agent",),
    )


async def test_canary_secrets_appear_only_where_the_users_data_goes(
    canary_settings, api_factory, worker_factory, store, capfd, caplog
):
    # Given an API and a worker that hold the provider key, and a user with a key
    srv = await api_factory(canary_settings)
    await worker_factory(canary_settings)
    _, key = await store.users.create_key("alice")
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=20
    ) as c:
        # When runs succeed, crash, time out, and fail at the provider
        bodies = [
            {"agent": "canary", "params": {"mode": "ok"}},
            {"agent": "canary", "params": {"mode": "crash"}},
            {"agent": "canary", "params": {"mode": "stall", "timeout_seconds": 0.5}},
            {"agent": "chat", "params": {}},
        ]
        ids = []
        for body in bodies:
            resp = await c.post("/runs", json={"input": "go", **body})
            answers.append(resp)
            ids.append(resp.json()["run_id"])
        finals = [await wait_status(c, rid, "succeeded", "failed", timeout=30) for rid in ids]
        streams = [await read_events(c, rid) for rid in ids]
        # And a client sends a credential-looking canary in the Authorization header
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as anon:
            for path in ("/runs", f"/runs/{ids[0]}", f"/runs/{ids[0]}/events"):
                answers.append(
                    await anon.get(path, headers={"Authorization": f"Bearer {HEADER_CANARY}"})
                )
        answers.append(await c.get("/metrics"))
        answers.append(await c.post("/runs", json={"input": "x", "nonsense": HEADER_CANARY}))
        answers.append(await c.get(f"/runs/{uuid.uuid4()}"))

    # Then the paths ran as intended
    assert [f["status"] for f in finals] == ["succeeded", "failed", "failed", "failed"]
    assert finals[2]["error"]["code"] == "timeout"
    captured = capfd.readouterr()
    logs = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    logs += "\n".join(str(r.__dict__) for r in caplog.records)
    events_text = "\n".join(str(e) for _, evs in streams for e in evs)
    answer_text = "\n".join(a.text + str(dict(a.headers)) for a in answers)
    finals_text = str(finals)
    pg = await _postgres_text(canary_settings.database_url)
    rd = await _redis_text(canary_settings.redis_url, canary_settings.key_prefix)
    everything = {
        "logs": logs,
        "events": events_text,
        "answers": answer_text,
        "runs": finals_text,
        **{f"postgres:{t}": v for t, v in pg.items()},
        **{f"redis:{k}": v for k, v in rd.items()},
    }
    # The provider key, the header credential and the user's API key: nowhere at all
    for secret in (ENV_CANARY, HEADER_CANARY, key):
        leaks = [where for where, text in everything.items() if secret in text]
        assert leaks == [], (secret[:12], leaks)
    # The tool's secret output: in that user's events and archive only
    allowed = {"events", "postgres:run_events"} | {
        k for k in everything if k.startswith("redis:") and ":events:" in k
    }
    # ... and the archive's partitions (migration 0012), which hold its rows
    allowed |= {k for k in everything if k.startswith("postgres:run_events_")}
    found = {where for where, text in everything.items() if TOOL_CANARY in text}
    assert "events" in found  # the canary really was planted
    assert found <= allowed, found - allowed
