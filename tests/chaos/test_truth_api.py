"""Issue 14, the API's side: an API process killed under its SSE clients, and the replay of runs
Redis has forgotten (served from the Postgres archive), including a request the archive cannot
serve. Every test ends with the three-way check (tests/chaos/truth.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import httpx
import pytest

from tests.chaos.conftest import StackFactory
from tests.chaos.stack import Stack
from tests.sse_frames import aparse_lines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_sse_clients_follow_every_run_across_an_api_killed_mid_stream(
    make_stack: StackFactory,
) -> None:
    # Given 6 runs (3 ticker, 3 attempt_chat) followed over SSE through one API process
    stack = await make_stack(workers=2)
    followers = stack.followers
    assert followers is not None
    await stack.submit_mix(ticker=3, chat=3)
    await followers.each_received(8, timeout=30)

    # When the API is killed outright mid-stream and started again on the same port
    t0 = time.monotonic()
    await stack.api.kill9()
    await stack.api.start()

    # Then every follower reconnects with Last-Event-ID and goes on where it stopped
    await followers.until(
        lambda fs: all(f.ended or f.seen_after(t0) for f in fs.values()), timeout=15
    )
    recovered = time.monotonic() - t0
    totals = await stack.check()
    assert totals["reconnects"] >= 1
    print(
        f"\nAPI SIGKILL: runs={totals['runs']} faults=1 reconnects={totals['reconnects']} "
        f"streams_back_in={recovered:.1f}s"
    )


async def _punch_hole(stack: Stack, run_id: str, seqs: list[int]) -> None:
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.execute(
            "DELETE FROM run_events WHERE run_id = $1 AND seq = ANY($2::int[])",
            uuid.UUID(run_id),
            seqs,
        )
    finally:
        await conn.close()


async def _read_for(client: httpx.AsyncClient, run_id: str, seconds: float) -> dict[str, object]:
    """Read the replay for at most `seconds`: what came, and how it ended."""
    out: dict[str, object] = {"status": None, "ids": [], "error_frame": None, "ended": False}
    ids: list[int] = []

    async def read() -> None:
        async with client.stream("GET", f"/runs/{run_id}/events") as resp:
            out["status"] = resp.status_code
            if resp.status_code != 200:
                out["body"] = (await resp.aread()).decode(errors="replace")
                return
            async for f in aparse_lines(resp.aiter_lines()):
                if f.id is not None:
                    ids.append(int(f.id))
                elif '"error"' in f.data:
                    out["error_frame"] = f.data
        out["ended"] = True

    out["ids"] = ids
    try:
        await asyncio.wait_for(read(), seconds)
    except TimeoutError:
        pass
    else:
        out["ended"] = True
    return out


async def test_a_replay_the_archive_cannot_serve_is_a_clear_error_after_bounded_work(
    make_stack: StackFactory,
) -> None:
    # Given two finished runs that Redis has forgotten, whose archive has a hole (lost rows:
    # at the head of one, as a worker crash left them before, mid-way in the other)
    stack = await make_stack(workers=1)
    followers = stack.followers
    assert followers is not None
    head = await stack.submit("ticker", {"count": 12, "interval_ms": 10})
    middle = await stack.submit("attempt_chat", {"words": 6, "delay_ms": 5})
    totals = await stack.check()  # deletes their Redis keys, replays them whole: all fine
    await _punch_hole(stack, head, [1, 2, 3])
    await _punch_hole(stack, middle, [9])
    await asyncio.sleep(1.2)  # let the statistics of the check's own queries be reported

    # When a client asks for each of them while we watch the API's CPU and Postgres' commits
    cpu0 = stack.api.cpu_seconds()
    xact0 = await stack.cluster.xact_commits(stack.db)
    window = 3.0
    head_read, middle_read = await asyncio.gather(
        _read_for(stack.client, head, window), _read_for(stack.client, middle, window)
    )
    await asyncio.sleep(1.2)  # the API's backends report their statistics about once a second
    cpu = stack.api.cpu_seconds() - cpu0
    xacts = await stack.cluster.xact_commits(stack.db) - xact0 - 2  # our two stats reads

    # Then each ends with a clear error (a 4xx/5xx JSON error, or an id-less error frame that
    # ends the stream) after the events before the hole, and the work stays small
    problems = []
    for name, got, before_hole in (
        ("head", head_read, []),
        ("middle", middle_read, list(range(1, 9))),
    ):
        if not got["ended"]:
            problems.append(f"{name}: the replay did not end within {window}s (ids {got['ids']})")
            continue
        if got["status"] == 200:
            if got["error_frame"] is None:
                problems.append(f"{name}: the stream ended without an error frame")
            if got["ids"] != before_hole:
                problems.append(f"{name}: ids {got['ids']}, expected {before_hole} then the error")
        elif not (400 <= int(str(got["status"])) < 600 and "error" in json.loads(str(got["body"]))):
            problems.append(f"{name}: answered {got['status']} {got.get('body')}")
    if cpu > 0.5:
        problems.append(f"the API used {cpu:.2f} s of CPU in {window}s serving two clients")
    if xacts > 100:
        problems.append(f"Postgres committed {xacts} transactions in {window}s for two clients")
    print(
        f"\narchive hole: runs={totals['runs']} faults=2 api_cpu={cpu:.2f}s "
        f"pg_xacts={xacts} in {window}s"
    )
    assert not problems, "\n".join(problems)
