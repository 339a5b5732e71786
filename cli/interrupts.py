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
from urllib.parse import quote

from cli.api_client import Api
from cli.config import ApiTarget
from cli.exits import Exit, Failure
from cli.follow import run_command, say

PROMPT = "answer (JSON, or text; empty: leave it waiting)> "


def _path(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


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


async def _waiting(api: Api, limit: int, as_json: bool) -> int:
    page = await api.call("GET", "/runs", params={"status": "waiting", "limit": limit})
    runs = page.get("runs", [])
    print(json.dumps(runs, indent=2, ensure_ascii=False) if as_json else waiting_table(runs))
    return Exit.OK


async def answer(api: Api, run_id: str, interrupt_id: str | None, value: Any) -> dict[str, Any]:
    """POST the resume; without `interrupt_id`, the run's pending one."""
    if interrupt_id is None:
        run = await api.call("GET", _path(run_id))
        pending = run.get("interrupt")
        if not pending:
            raise Failure(Exit.REFUSED, f"run {run_id} is {run.get('status')}, not waiting")
        interrupt_id = str(pending["interrupt_id"])
    body = {"interrupt_id": interrupt_id, "value": value}
    result: dict[str, Any] = await api.call("POST", _path(run_id) + "/resume", json=body)
    return result


async def _resume(
    api: Api, run_id: str, interrupt_id: str | None, value: Any, as_json: bool
) -> int:
    got = await answer(api, run_id, interrupt_id, value)
    print(json.dumps(got, indent=2) if as_json else f"run {run_id} resumed: queued again")
    return Exit.OK


def prompter(api: Api, run_id: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """`Follower.on_interrupt` for a terminal: show what the run asks, read an answer, send
    it. An empty answer leaves the run waiting (the stream goes on: someone else may answer)."""

    async def ask(data: dict[str, Any]) -> None:
        say(f"run {run_id} asks: {json.dumps(data.get('payload'), ensure_ascii=False)}")
        text = (await asyncio.to_thread(input, PROMPT)).strip()
        if not text:
            say(f"run {run_id} left waiting\n{resume_hint(run_id)}")
            return
        await answer(api, run_id, str(data.get("interrupt_id")), typed_value(text))
        say(f"run {run_id} resumed")

    return ask


def waiting(target: ApiTarget, *, limit: int, as_json: bool) -> int:
    return run_command(target, lambda api, _s: _waiting(api, limit, as_json))


def resume(
    target: ApiTarget, run_id: str, value_text: str, *, interrupt_id: str | None, as_json: bool
) -> int:
    value = parse_value(value_text)  # a malformed --value fails before anything is sent
    return run_command(target, lambda api, _s: _resume(api, run_id, interrupt_id, value, as_json))
