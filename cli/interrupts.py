"""Runs waiting for a person: `longrun runs waiting`, `longrun runs resume RUN --value JSON`,
and the prompt `submit --follow` shows on a terminal when its run asks.

(`longrun resume`, without `runs`, stays the kill switch's opposite of `longrun pause`.)

Exit codes: the common ones (`cli.exits`); `runs resume` exits 3 (refused) when the run is not
waiting or the interrupt was answered otherwise, 5 when `--value` is not JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from longrun_client import AsyncClient

from cli.config import ApiTarget
from cli.exits import Exit, Failure
from cli.follow import run_command, say

PROMPT = "answer (JSON, or text; empty: leave it waiting)> "


def parse_value(text: str) -> Any:
    """`--value`: a JSON value; a `Failure` (exit 5) otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Failure(Exit.USAGE, f"--value is not JSON: {exc} (a string is '\"yes\"')") from exc


def typed_value(text: str) -> Any:
    """What a person typed at the prompt: JSON when it parses, else the text as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def waiting_table(runs: list[dict[str, Any]]) -> str:
    """`runs waiting` for people: the run, since when, and what it asks."""
    rows = []
    for r in runs:
        asked = (r.get("interrupt") or {}).get("payload")
        rows.append(
            f"{r.get('run_id')}  since {r.get('waiting_since', '')}  "
            f"{json.dumps(asked, ensure_ascii=False)[:120]}"
        )
    return "\n".join(rows) if rows else "no run is waiting"


def resume_hint(run_id: str) -> str:
    return f"  answer later: longrun runs resume {run_id} --value JSON"


async def _waiting(client: AsyncClient, limit: int, as_json: bool) -> int:
    page = await client.runs.list_page(status="waiting", limit=limit)
    runs = [run.raw for run in page.runs]
    print(json.dumps(runs, indent=2, ensure_ascii=False) if as_json else waiting_table(runs))
    return Exit.OK


async def answer(
    client: AsyncClient, run_id: str, interrupt_id: str | None, value: Any
) -> dict[str, Any]:
    """POST the resume; without `interrupt_id`, the run's pending one."""
    if interrupt_id is None:
        run = await client.runs.get(run_id)
        if not run.interrupt:
            raise Failure(Exit.REFUSED, f"run {run_id} is {run.status}, not waiting")
        interrupt_id = str(run.interrupt["interrupt_id"])
    return (await client.runs.resume(run_id, interrupt_id, value)).raw


async def _resume(
    client: AsyncClient, run_id: str, interrupt_id: str | None, value: Any, as_json: bool
) -> int:
    got = await answer(client, run_id, interrupt_id, value)
    print(json.dumps(got, indent=2) if as_json else f"run {run_id} resumed: queued again")
    return Exit.OK


def prompter(client: AsyncClient, run_id: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """`Follower.on_interrupt` for a terminal: show what the run asks, read an answer, send
    it. An empty answer leaves the run waiting (the stream goes on: someone else may answer)."""

    async def ask(data: dict[str, Any]) -> None:
        say(f"run {run_id} asks: {json.dumps(data.get('payload'), ensure_ascii=False)}")
        text = (await asyncio.to_thread(input, PROMPT)).strip()
        if not text:
            say(f"run {run_id} left waiting\n{resume_hint(run_id)}")
            return
        await answer(client, run_id, str(data.get("interrupt_id")), typed_value(text))
        say(f"run {run_id} resumed")

    return ask


def waiting(target: ApiTarget, *, limit: int, as_json: bool) -> int:
    return run_command(target, lambda client, _s: _waiting(client, limit, as_json))


def resume(
    target: ApiTarget, run_id: str, value_text: str, *, interrupt_id: str | None, as_json: bool
) -> int:
    value = parse_value(value_text)  # a malformed --value fails before anything is sent
    return run_command(
        target, lambda client, _s: _resume(client, run_id, interrupt_id, value, as_json)
    )
