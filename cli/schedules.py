"""`longrun schedules create|list|get|delete|runs`: your cron schedules through the HTTP API (the
SDK's `schedules`), as text for people or `--json` for scripts. Exit 0 whenever the API answered
yes; its refusals (a bad cron expression, a schedule that is not yours) exit as the other API
commands' do (`cli.exits`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from longrun_client import AsyncClient, Schedule

from cli.config import ApiTarget
from cli.exits import Exit, Failure
from cli.follow import run_command, say
from cli.runs import table as runs_table


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


# ---- rendering (pure)


def describe(s: dict[str, Any]) -> str:
    """`schedules get` (and `create`) for people."""
    lines = [
        f"schedule {s.get('schedule_id')}: {s.get('cron')} ({s.get('timezone')})",
        f"run       agent {s.get('agent')}, input {json.dumps(s.get('input'))}",
    ]
    if s.get("params"):
        lines.append(f"params    {json.dumps(s['params'])}")
    if s.get("thread_id"):
        lines.append(f"thread    {s['thread_id']}")
    lines.append(f"next      {s.get('next_run_at')}")
    if s.get("last_run_at"):
        lines.append(f"last      {s['last_run_at']}")
    lines.append(f"runs made {s.get('runs_made')}")
    return "\n".join(lines)


def table(schedules: list[dict[str, Any]]) -> str:
    """`schedules list` for people: one line per schedule, newest first."""
    rows = [
        f"{s.get('schedule_id')}  {s.get('cron', ''):<20} {s.get('timezone', ''):<18} "
        f"next {s.get('next_run_at', '')}  ({s.get('agent', '')})"
        for s in schedules
    ]
    return "\n".join(rows) if rows else "no schedules"


# ---- the commands


@dataclass(frozen=True)
class NewSchedule:
    cron: str
    input: str
    timezone: str = "UTC"
    agent: str | None = None
    params: str | None = None  # JSON, as typed
    thread: str | None = None


def _params(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Failure(Exit.USAGE, f"--params is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise Failure(Exit.USAGE, "--params must be a JSON object")
    return value


async def _create(client: AsyncClient, new: NewSchedule, as_json: bool) -> int:
    made = await client.schedules.create(
        new.cron,
        new.input,
        timezone=new.timezone,
        agent=new.agent,
        params=_params(new.params),
        thread_id=new.thread,
    )
    if as_json:
        print(_dump(made.raw))
    else:
        print(made.schedule_id)
        say(f"schedule {made.schedule_id} created: next run at {made.next_run_at}")
    return Exit.OK


async def _list(client: AsyncClient, limit: int, cursor: str | None, as_json: bool) -> int:
    page = await client.schedules.list_page(limit=limit, cursor=cursor or None)
    found = [s.raw for s in page.schedules]
    print(_dump({"schedules": found, "next_cursor": page.next_cursor}) if as_json else table(found))
    if page.next_cursor and not as_json:
        say(f"more: longrun schedules list --cursor '{page.next_cursor}'")
    return Exit.OK


async def _get(client: AsyncClient, schedule_id: str, as_json: bool) -> int:
    found: Schedule = await client.schedules.get(schedule_id)
    print(_dump(found.raw) if as_json else describe(found.raw))
    return Exit.OK


async def _delete(client: AsyncClient, schedule_id: str, as_json: bool) -> int:
    await client.schedules.delete(schedule_id)
    answer = {"schedule_id": schedule_id, "deleted": True}
    print(_dump(answer) if as_json else f"schedule {schedule_id} deleted")
    return Exit.OK


async def _runs(client: AsyncClient, schedule_id: str, limit: int, as_json: bool) -> int:
    page = await client.schedules.runs(schedule_id, limit=limit)
    runs = [r.raw for r in page.runs]
    print(_dump({"runs": runs, "next_cursor": page.next_cursor}) if as_json else runs_table(runs))
    return Exit.OK


def create(target: ApiTarget, new: NewSchedule, *, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _create(client, new, as_json))


def list_schedules(target: ApiTarget, *, limit: int, cursor: str | None, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _list(client, limit, cursor, as_json))


def get(target: ApiTarget, schedule_id: str, *, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _get(client, schedule_id, as_json))


def delete(target: ApiTarget, schedule_id: str, *, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _delete(client, schedule_id, as_json))


def runs(target: ApiTarget, schedule_id: str, *, limit: int, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _runs(client, schedule_id, limit, as_json))
