"""`longrun submit TEXT`: submit a run; print its id, or with `--follow` its events as they
arrive (`cli.follow`), ending with its status. Following on a terminal, a run that asks a person
(an `interrupt` event) gets its answer typed at a prompt.

Exit codes: 0 submitted (with `--follow`: the run succeeded), 1 it ended failed or cancelled,
and the common ones of `cli.exits` (the API unreachable, a refusal, ...). The API's URL and key
come from the caller (`cli.config.api_target`); this module reads no environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from longrun_client import AsyncClient

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
from cli.interrupts import prompter


@dataclass(frozen=True)
class SubmitRequest:
    text: str
    agent: str | None = None
    params: str | None = None  # JSON text, as typed
    thread: str | None = None
    follow: bool = False
    as_json: bool = False
    prompt: bool = False  # on a terminal: ask the person when the run asks (`cli.interrupts`)
    start_after: str | None = None  # a duration as typed: 30s, 5m, 2h, 1d, or plain seconds
    start_at: str | None = None  # an RFC 3339 time, as typed
    priority: str | None = None


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(raw: str) -> float:
    """A duration as typed (`30s`, `1.5m`, `2h`, `1d`, or plain seconds); a `Failure`
    (exit 5) for anything else or a duration that is not positive."""
    text = raw.strip().lower()
    unit = DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise Failure(Exit.USAGE, f"--start-after: a duration like 30s, 5m, 2h or 1d, not {raw!r}")
    return value


def body(req: SubmitRequest) -> dict[str, Any]:
    """The POST /runs body; a `Failure` (exit 5) when --params is not a JSON object or
    --start-after not a duration (the server judges --start-at and --priority)."""
    out: dict[str, Any] = {"input": req.text}
    if req.agent:
        out["agent"] = req.agent
    if req.thread:
        out["thread_id"] = req.thread
    if req.start_after is not None:
        out["start_after"] = seconds_of(req.start_after)
    if req.start_at is not None:
        out["start_at"] = req.start_at
    if req.priority is not None:
        out["priority"] = req.priority
    if req.params:
        try:
            params = json.loads(req.params)
        except json.JSONDecodeError as exc:
            raise Failure(Exit.USAGE, f"--params is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise Failure(Exit.USAGE, "--params must be a JSON object, like '{\"count\": 5}'")
        out["params"] = params
    return out


async def _submit(client: AsyncClient, session: Session, req: SubmitRequest) -> int:
    run = await client.runs.create(**body(req))
    run_id = run.run_id
    if not req.follow:
        print(json.dumps(run.raw, indent=2) if req.as_json else run_id)
    say(f"run {run_id} queued" + (f", to start at {run.start_at}" if run.start_at else ""))
    if not req.follow:
        return Exit.OK
    session.follower = Follower(client, run_id, printer(req.as_json, req.agent))
    if req.prompt and not req.as_json:
        session.follower.on_interrupt = prompter(client, run_id)
    end = await session.follower.run()
    if end is None:  # a 204: only after a Last-Event-ID, which a first stream does not send
        return Exit.OK
    say(status_line(run_id, *end))
    return exit_code(TERMINAL[end[0]])


def run(target: ApiTarget, req: SubmitRequest) -> int:
    body(req)  # a malformed --params fails before anything is sent
    return run_command(target, lambda client, session: _submit(client, session, req))
