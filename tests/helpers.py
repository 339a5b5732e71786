"""Test helpers: reading SSE streams, submitting runs, waiting on conditions (without sleeps
where an event exists; polling with a deadline where the only signal is stored state)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from shared.redis.keys import Keys
from shared.store import NewRun, Store, Submitted
from tests.sse_frames import aparse_lines


@dataclass(frozen=True)
class Got:
    id: str | None
    event: str
    data: dict[str, Any]


async def read_events(
    client: httpx.AsyncClient,
    run_id: str,
    *,
    last_event_id: str | None = None,
    limit: int | None = None,
    via_query: bool = False,
) -> tuple[int, list[Got]]:
    """Read a run's SSE stream until it closes (or `limit` events). Returns (status, events)."""
    headers = {}
    params = {}
    if last_event_id is not None:
        if via_query:
            params["last_event_id"] = last_event_id
        else:
            headers["Last-Event-ID"] = last_event_id
    out: list[Got] = []
    async with client.stream(
        "GET", f"/runs/{run_id}/events", headers=headers, params=params
    ) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return resp.status_code, out
        async for f in aparse_lines(resp.aiter_lines()):
            out.append(Got(f.id, f.event, json.loads(f.data)))
            if limit is not None and len(out) >= limit:
                break
    return 200, out


async def queued_run(store: Store, thread_id: str | None = None) -> Submitted:
    """A queued run of user `u`, inserted as a submit inserts it (without its queue entry)."""
    new = NewRun("u", "ticker", "x", {}, {}, thread_id=thread_id)
    return await store.submits.insert_run(new, max_in_flight=1_000_000)


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    body.setdefault("input", "test")
    resp = await client.post("/runs", json=body)
    assert resp.status_code == 202, resp.text
    run_id: str = resp.json()["run_id"]
    return run_id


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_status(
    client: httpx.AsyncClient, run_id: str, *statuses: str, timeout: float = 20.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        resp = await client.get(f"/runs/{run_id}")
        body: dict[str, Any] = resp.json()
        return body if body.get("status") in statuses else None

    result: dict[str, Any] = await wait_for(check, timeout)
    return result


def assert_gapless_ticker(events: list[Got], count: int) -> None:
    seqs = [e.data["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    assert [e.id for e in events] == [str(s) for s in seqs]
    tokens = [e.data["text"] for e in events if e.event == "token"]
    assert tokens == [str(i) for i in range(1, count + 1)], tokens
    terminal = [e for e in events if e.event in ("done", "error", "cancelled")]
    assert [t.event for t in terminal] == ["done"]
    assert events[-1].event == "done"


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


async def queue_backlog(r: Any, keys: Keys) -> int:
    """The backlog as autoscaling counts it: XLEN of every shard's ready and held streams."""
    total = 0
    for shard in range(keys.shards):
        total += int(await r.xlen(keys.shard_queue(shard))) + int(await r.xlen(keys.held(shard)))
    return total


async def queue_run_ids(r: Any, keys: Keys) -> list[str]:
    """The run ids of every queue entry, ready or held, on every shard."""
    out = []
    for shard in range(keys.shards):
        for stream in (keys.shard_queue(shard), keys.held(shard)):
            out += [fields[b"run"].decode() for _, fields in await r.xrange(stream)]
    return out
