"""CPU per `POST /runs`, in-process: the ASGI app driven directly (no uvicorn, no sockets), many
submits in flight at once, the process's CPU time divided by the submits.

What it measures is the API's own work per submit (the lane or the route, the group, the
clients of Redis and Postgres), not the servers'. It needs Redis and Postgres as the tests do
(`LONGRUN_TEST_ADMIN_DSN`, `LONGRUN_TEST_REDIS_URL`); it creates a database and key prefix and
removes them. Not part of `python -m bench`: a quick check for changes to the submit path.

    .venv/bin/python -m bench.submit_cpu [--submits N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import uvloop

from api.app import create_app
from shared.config import Settings
from shared.migrate import migrate
from shared.store import Store, connect

ADMIN_DSN = os.environ.get(
    "LONGRUN_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LONGRUN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = json.dumps(
    {"input": "bench", "agent": "ticker", "params": {"count": 1, "interval_ms": 0}}
).encode()


def _scope(key: str, idempotency_key: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    if idempotency_key is not None:
        headers.append((b"idempotency-key", idempotency_key.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/runs",
        "raw_path": b"/runs",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def _post(app: Any, key: str, idempotency_key: str | None) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # never: the answer comes first
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(key, idempotency_key), receive, send)
    return status


async def _round(app: Any, key: str, submits: int, concurrency: int, keyed: bool) -> float:
    """CPU microseconds per submit over `submits` submits, `concurrency` at a time."""
    left = iter(range(submits))
    codes: dict[int, int] = {}

    async def client() -> None:
        for _ in left:
            code = await _post(app, key, uuid.uuid4().hex if keyed else None)
            codes[code] = codes.get(code, 0) + 1

    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    used = time.process_time() - cpu
    assert codes == {202: submits}, codes
    return used / submits * 1e6


async def main(submits: int, concurrency: int, rounds: int) -> None:
    tag = uuid.uuid4().hex[:10]
    db, prefix = f"longrun_bench_{tag}", f"lrbench-{tag}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    settings = Settings.from_env(
        {
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + f"/{db}",
            "LONGRUN_KEY_PREFIX": prefix,
            "LONGRUN_SUBMIT_RATE_PER_SECOND": "1000000",
            "LONGRUN_SUBMIT_BURST": "1000000",
            "LONGRUN_MAX_BACKLOG": "100000000",
            "LONGRUN_MAX_RUNS_IN_FLIGHT_PER_USER": "100000000",
        }
    )
    try:
        conn = await connect(settings, "bench")
        await migrate(conn)
        await conn.close()
        store = await Store.open(settings, "bench")
        _, key = await store.users.create_key("bench")
        await store.close()
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await _round(app, key, 200, concurrency, keyed=False)  # warm-up, caches the key
            for keyed in (False, True):
                figures = [
                    await _round(app, key, submits, concurrency, keyed) for _ in range(rounds)
                ]
                print(
                    f"{'keyed' if keyed else 'plain'}: CPU per submit "
                    f"median {statistics.median(figures):.0f} us "
                    f"({', '.join(f'{f:.0f}' for f in figures)})"
                )
    finally:
        r = aioredis.Redis.from_url(REDIS_URL)
        async for k in r.scan_iter(match=f"{prefix}:*", count=1000):
            await r.delete(k)
        await r.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--submits", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    # uvloop: what `longrun api` runs on
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(a.submits, a.concurrency, a.rounds))
