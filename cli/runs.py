"""`longrun runs get|list|cancel|events|wait`: one run (or the caller's runs) through the HTTP
API, as text for people or `--json` for scripts.

Every call goes through the SDK (`longrun_client`): `wait` is its `runs.wait` (long polls of
`GET /runs/{id}/wait`), `events` its resumable `runs.stream`.

Exit codes beyond the common ones (`cli.exits`): `events` and `wait` exit 0 when the run
succeeded and 1 when it ended failed or cancelled; `wait --timeout` exits 6 when the run is still
going; `get`, `list` and `cancel` exit 0 whenever the API answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from longrun_client import AsyncClient, Conflict, WaitTimeout

from cli.config import ApiTarget
from cli.exits import Exit, Failure
from cli.follow import (
    TERMINAL,
    Follower,
    Session,
    exit_code,
    printer,
    run_command,
    say,
    status_line,
)


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


# ---- rendering (pure)


def describe(run: dict[str, Any]) -> str:
    """`runs get` for people."""
    lines = [
        f"run {run.get('run_id')}: {run.get('status')} (agent {run.get('agent')}, "
        f"attempt {run.get('attempts')})"
    ]
    if run.get("thread_id"):
        lines.append(f"thread    {run['thread_id']}")
    for stamp in ("created_at", "started_at", "finished_at"):
        if run.get(stamp):
            lines.append(f"{stamp.removesuffix('_at'):<9} {run[stamp]}")
    if run.get("output") is not None:
        output = run["output"]
        lines.append(f"output    {output if isinstance(output, str) else json.dumps(output)}")
    if run.get("error"):
        err = run["error"]
        lines.append(f"error     {err.get('code')}: {err.get('message')}")
    if run.get("usage"):
        lines.append(f"usage     {json.dumps(run['usage'])}")
    if run.get("cost_usd"):
        lines.append(f"cost      ${float(run['cost_usd']):.4f}")
    lines.append(f"events    {run.get('last_seq')} (longrun runs events {run.get('run_id')})")
    return "\n".join(lines)


def table(runs: list[dict[str, Any]]) -> str:
    """`runs list` for people: one line per run, newest first."""
    rows = [
        f"{r.get('run_id')}  {r.get('status', ''):<10} {r.get('agent', ''):<10} "
        f"{r.get('created_at', '')}" + (f"  thread {r['thread_id']}" if r.get("thread_id") else "")
        for r in runs
    ]
    return "\n".join(rows) if rows else "no runs"


def cancel_answer(run_id: str, status: str) -> str:
    if status == "cancelled":
        return f"run {run_id} cancelled"
    if status == "cancelling":
        return f"run {run_id} cancelling (it stops within about a second)"
    return f"run {run_id} already {status}: nothing to cancel"


# ---- the commands


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    thread: str | None = None
    limit: int = 20
    cursor: str | None = None


async def _get(client: AsyncClient, run_id: str, as_json: bool) -> int:
    run = (await client.runs.get(run_id)).raw
    print(_dump(run) if as_json else describe(run))
    return Exit.OK


async def _list(client: AsyncClient, query: ListQuery, as_json: bool) -> int:
    page = await client.runs.list_page(
        limit=query.limit,
        cursor=query.cursor or None,
        status=query.status or None,
        thread_id=query.thread or None,
    )
    runs = [r.raw for r in page.runs]
    print(_dump({"runs": runs, "next_cursor": page.next_cursor}) if as_json else table(runs))
    if page.next_cursor and not as_json:
        say(f"more: longrun runs list --cursor '{page.next_cursor}'")
    return Exit.OK


async def _cancel(client: AsyncClient, run_id: str, as_json: bool) -> int:
    """Cancel a run; one that has already ended is nothing to cancel (the API answers 409
    `already_finished`): said, with the run, and exit 0."""
    try:
        done = await client.runs.cancel(run_id)
        answer: dict[str, Any] = {"run_id": done.run_id, "status": done.status}
    except Conflict:
        run = await client.runs.get(run_id)
        if not run.done:
            raise
        answer = run.raw
    print(_dump(answer) if as_json else cancel_answer(run_id, str(answer.get("status"))))
    return Exit.OK


async def _events(
    client: AsyncClient, session: Session, run_id: str, after: int | None, as_json: bool
) -> int:
    """The run first (a clean 404, and its agent to join tokens when resuming mid-way), then
    its events until the terminal one; its status line on stderr."""
    run = await client.runs.get(run_id)
    sink = printer(as_json, run.agent)
    follower = Follower(client, run_id, sink, None if after is None else str(after))
    session.follower = follower
    end = await follower.run()
    if end is not None:
        say(status_line(run_id, *end))
        return exit_code(TERMINAL[end[0]])
    run = await client.runs.get(run_id)  # 204: it had ended at `after`
    say(f"run {run_id} {run.status}")
    return exit_code(run.status)


async def _wait(client: AsyncClient, run_id: str, patience: float | None, as_json: bool) -> int:
    """Waits for the run's end (the SDK's long polls), then prints the finished run."""
    try:
        run = await client.runs.wait(run_id, patience)
    except WaitTimeout:
        raise Failure(Exit.TIMEOUT, f"run {run_id} has not ended after {patience:g} s") from None
    print(_dump(run.raw) if as_json else f"run {run_id} {run.status}")
    return exit_code(run.status)


def get(target: ApiTarget, run_id: str, *, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _get(client, run_id, as_json))


def list_runs(target: ApiTarget, query: ListQuery, *, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _list(client, query, as_json))


def cancel(target: ApiTarget, run_id: str, *, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _cancel(client, run_id, as_json))


def events(target: ApiTarget, run_id: str, *, after: int | None, as_json: bool) -> int:
    return run_command(target, lambda client, s: _events(client, s, run_id, after, as_json))


def wait(target: ApiTarget, run_id: str, *, timeout: float | None, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _wait(client, run_id, timeout, as_json))
