"""The naive SSE design longrun is compared with: sse-starlette, and every subscriber runs its
own `XREAD BLOCK` loop on its own pooled Redis connection (so N subscribers hold N connections).

GET /events?stream=KEY[&after=0-0] serves the entries of any event stream as SSE, rendering the
entry's JSON field as `data`; it ends after a terminal event (`done`, `error`, `cancelled`).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

TERMINAL = {"done", "error", "cancelled"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = aioredis.Redis.from_url(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        max_connections=int(os.environ.get("NAIVE_MAX_CONNECTIONS", "10000")),
        client_name="bench-naive-sse",
    )
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


def _render(fields: dict[bytes, bytes]) -> tuple[str, str]:
    """(type, data) of a stream entry, whatever its field names: the JSON field is the data."""
    data = next((v for v in fields.values() if v[:1] == b"{"), b"{}").decode()
    etype = fields.get(b"type", b"").decode() or json.loads(data).get("type", "message")
    return etype, data


async def _follow(r: aioredis.Redis, stream: str, after: str) -> AsyncIterator[ServerSentEvent]:
    last = after
    while True:
        reply = await r.xread({stream: last}, count=100, block=15_000)
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                etype, data = _render(fields)
                yield ServerSentEvent(data=data, event=etype, id=last)
                if etype in TERMINAL:
                    return


@app.get("/events")
async def events(request: Request, stream: str, after: str = "0-0") -> EventSourceResponse:
    return EventSourceResponse(_follow(request.app.state.redis, stream, after), ping=15)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
