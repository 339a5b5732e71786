"""The in-process design `POST /runs/stream` is compared with: the way an app streams an agent
when it has no queue. The agent runs inside the API process, in the request's own task, under
an `asyncio.Semaphore` that bounds the runs in flight, and its events go straight to the
response as SSE. No database, no Redis, nothing survives the process: the floor any durable
design pays on top of.

POST /runs/stream {"input", "agent": "ticker", "params"} streams the `ticker` agent longrun's
workers run (the same function), its events stamped with seq 1, 2, ... as longrun stamps them:
`start`, the tokens, `done`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from shared.agents.base import RunContext
from shared.agents.ticker import ticker
from shared.config import Settings

SETTINGS = Settings()
RUNS = asyncio.Semaphore(int(os.environ.get("INPROCESS_MAX_RUNS", "1000")))

app = FastAPI()


def frame(seq: int, body: dict[str, Any]) -> bytes:
    data = orjson.dumps({"seq": seq, **body})
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (seq, body["type"].encode(), data)


async def run(body: dict[str, Any]) -> AsyncIterator[bytes]:
    run_id = str(uuid.uuid4())
    ctx = RunContext(
        run_id=run_id,
        user_id="bench",
        input=str(body.get("input", "")),
        params=dict(body.get("params") or {}),
        settings=SETTINGS,
    )
    async with RUNS:
        yield frame(1, {"type": "start", "agent": "ticker", "run_id": run_id})
        seq = 1
        async for event in ticker(ctx):
            seq += 1
            yield frame(seq, event)


@app.post("/runs/stream")
async def submit_and_stream(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())
    return StreamingResponse(
        run(body), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
