"""Threads: a user's conversation, named by the client (`thread_id`, scoped to the user).

`GET /threads/{id}/messages` returns the history from Postgres (the truth; the Redis cache is
the workers' fast path). `thread_mode` on submit decides what happens when the thread is busy:
`enqueue` (default: run after the runs before it), `reject` (409), `interrupt` (cancel the
running or waiting run, then run).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from api.auth import current_user
from api.errors import ERROR_RESPONSES, ApiError
from api.runs import publish_archived_terminal
from api.schemas import THREAD_ID_PATTERN, valid_thread_id
from api.state import AppState
from shared.errors import NotFound
from shared.redis.client import REDIS_DOWN

router = APIRouter(responses=ERROR_RESPONSES)

ThreadMode = Literal["enqueue", "reject", "interrupt"]


async def apply_thread_mode(state: AppState, user: str, thread_id: str, mode: ThreadMode) -> None:
    """Before a run is added to a busy thread: refuse it, or cancel the running run."""
    if mode == "enqueue":
        return
    active = await state.store.threads.thread_active_runs(user, thread_id)
    if not active:
        return
    if mode == "reject":
        raise ApiError(409, "thread_busy", f"thread {thread_id!r} has a run queued or running")
    for run_id, status in active:
        if status == "waiting":  # no worker holds it: ended here, like a cancel
            done = await state.store.runs.cancel_queued(run_id, user)
            if done is not None:
                await publish_archived_terminal(state, done)
        elif status == "running":
            await state.store.runs.request_cancel(run_id, user)
            # Without Redis the flag in Postgres stands: the worker reads it on its heartbeat.
            with contextlib.suppress(*REDIS_DOWN):
                await state.rio.request_cancel(run_id)


@router.get("/threads/{thread_id}/messages")
async def thread_messages(
    thread_id: Annotated[str, Path(json_schema_extra={"pattern": THREAD_ID_PATTERN})],
    request: Request,
    user: Annotated[str, Depends(current_user)],
    after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Any:
    if not valid_thread_id(thread_id):
        raise ApiError(400, "invalid_thread_id", "thread ids are 1-128 of [A-Za-z0-9._:-]")
    state: AppState = request.app.state.longrun
    messages = await state.store.threads.thread_messages(user, thread_id, after, limit)
    if not messages and after == 0 and not await state.store.threads.thread_exists(user, thread_id):
        raise NotFound("no such thread")
    return {
        "thread_id": thread_id,
        "messages": messages,
        "next_after": messages[-1]["seq"] if len(messages) == limit else None,
    }
