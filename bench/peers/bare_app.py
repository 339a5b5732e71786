"""The HTTP floor: a bare FastAPI endpoint that validates a pydantic body like `POST /runs` and
answers 202 with a small JSON body. Served with the same uvicorn settings as longrun's API."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, Field

app = FastAPI()


class Submit(BaseModel):
    input: str = Field(max_length=200_000)
    agent: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


@app.post("/runs", status_code=202)
async def submit(body: Submit) -> ORJSONResponse:
    run_id = str(uuid.uuid4())
    return ORJSONResponse(
        {"run_id": run_id, "status": "queued", "events_url": f"/runs/{run_id}/events"},
        status_code=202,
    )


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
