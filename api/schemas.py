"""The shapes of the API's successful answers, for the OpenAPI schema (clients and the fuzz test
check answers against it). Handlers build their JSON directly; these models document it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Links(BaseModel):
    url: str
    events_url: str


class SubmitAnswer(Links):
    run_id: str
    status: str
    agent: str
    thread_id: str | None
    created_at: str


class RunPublic(BaseModel):
    run_id: str
    status: str
    agent: str
    thread_id: str | None
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any]
    cost_usd: float
    attempts: int
    last_seq: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str | None


class RunView(RunPublic, Links):
    pass


class RunList(BaseModel):
    runs: list[RunPublic]
    next_cursor: str | None


class EventsUrl(BaseModel):
    run_id: str
    events_url: str
    expires_at: int


class CancelAnswer(BaseModel):
    run_id: str
    status: str


def documented(status: int, model: type[BaseModel], text: str) -> dict[int | str, Any]:
    return {status: {"model": model, "description": text}}
