"""`longrun runs get|list|cancel|events|wait`: one run (or the caller's runs) through the HTTP
API, as text for people or `--json` for scripts.

Exit codes beyond the common ones (`cli.exits`): `events` and `wait` exit 0 when the run
succeeded and 1 when it ended failed or cancelled; `wait --timeout` exits 6 when the run is still
going; `get`, `list` and `cancel` exit 0 whenever the API answered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cli.api_client import Api
from cli.config import ApiTarget
from cli.exits import Exit, Failure
from cli.follow import (
    TERMINAL,
    Follower,
    Session,
    exit_code,
    ignore,
    printer,
    run_command,
    say,
    status_line,
)

FINISHED = frozenset(TERMINAL.values())


def _path(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


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


# Statuses a run ends with.
ENDED = frozenset({"succeeded", "failed", "cancelled"})

# ---- the commands


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    thread: str | None = None
    limit: int = 20
    cursor: str | None = None


async def _get(api: Api, run_id: str, as_json: bool) -> int:
    run = await api.call("GET", _path(run_id))
    print(_dump(run) if as_json else describe(run))
    return Exit.OK


async def _list(api: Api, query: ListQuery, as_json: bool) -> int:
    params: dict[str, str | int] = {"limit": query.limit}
    for name, value in (("status", query.status), ("thread_id", query.thread)):
        if value:
            params[name] = value
    if query.cursor:
        params["cursor"] = query.cursor
    page = await api.call("GET", "/runs", params=params)
    print(_dump(page) if as_json else table(page.get("runs", [])))
    if page.get("next_cursor") and not as_json:
        say(f"more: longrun runs list --cursor '{page['next_cursor']}'")
    return Exit.OK


async def _cancel(api: Api, run_id: str, as_json: bool) -> int:
    """Cancel a run; one that has already ended is nothing to cancel (the API answers 409
    `already_finished`): said, with the run, and exit 0."""
    try:
        answer = await api.call("POST", _path(run_id) + "/cancel")
    except Failure as exc:
        if exc.code != Exit.REFUSED:
            raise
        answer = await api.call("GET", _path(run_id))
        if answer.get("status") not in ENDED:
            raise
    print(_dump(answer) if as_json else cancel_answer(run_id, str(answer.get("status"))))
    return Exit.OK


async def _events(api: Api, session: Session, run_id: str, after: int | None, as_json: bool) -> int:
    """The run first (a clean 404, and its agent to join tokens when resuming mid-way), then
    its events until the terminal one; its status line on stderr."""
    run = await api.call("GET", _path(run_id))
    sink = printer(as_json, str(run.get("agent")))
    follower = Follower(api, run_id, sink, None if after is None else str(after))
    session.follower = follower
    end = await follower.run()
    if end is not None:
        say(status_line(run_id, *end))
        return exit_code(TERMINAL[end[0]])
    run = await api.call("GET", _path(run_id))  # 204: it had ended at `after`
    say(f"run {run_id} {run.get('status')}")
    return exit_code(str(run.get("status")))


async def _wait(
    api: Api, session: Session, run_id: str, patience: float | None, as_json: bool
) -> int:
    """Waits on the event stream from the run's last event on (no replay), then prints the
    finished run."""
    run = await api.call("GET", _path(run_id))
    if run.get("status") not in FINISHED:
        last = str(run["last_seq"]) if run.get("last_seq") else None
        session.follower = Follower(api, run_id, ignore, last)
        try:
            await asyncio.wait_for(session.follower.run(), patience)
        except TimeoutError:
            raise Failure(
                Exit.TIMEOUT, f"run {run_id} has not ended after {patience:g} s"
            ) from None
        run = await api.call("GET", _path(run_id))
    status = str(run.get("status"))
    print(_dump(run) if as_json else f"run {run_id} {status}")
    return exit_code(status)


def get(target: ApiTarget, run_id: str, *, as_json: bool) -> int:
    return run_command(target, lambda api, _s: _get(api, run_id, as_json))


def list_runs(target: ApiTarget, query: ListQuery, *, as_json: bool) -> int:
    return run_command(target, lambda api, _s: _list(api, query, as_json))


def cancel(target: ApiTarget, run_id: str, *, as_json: bool) -> int:
    return run_command(target, lambda api, _s: _cancel(api, run_id, as_json))


def events(target: ApiTarget, run_id: str, *, after: int | None, as_json: bool) -> int:
    return run_command(target, lambda api, s: _events(api, s, run_id, after, as_json))


def wait(target: ApiTarget, run_id: str, *, timeout: float | None, as_json: bool) -> int:
    return run_command(target, lambda api, s: _wait(api, s, run_id, timeout, as_json))
