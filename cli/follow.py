"""Following a run's events (`submit --follow`, `runs events`): the SSE stream,
resumed with `Last-Event-ID` when the connection drops, and how its events read on a terminal.

stdout carries the run's transcript (`Transcript`): token texts joined as the agent meant them,
each tool call and notice on a line of its own; with `--json`, one event per line. stderr
carries the lifecycle: reconnects and the final status line. Ctrl-C stops following (the run
goes on) and says how to resume or cancel.

Reconnecting is the SDK's (`longrun_client`, `runs.stream`): a first connection that fails is a
failure at once (exit 2, or the API's 4xx/5xx); once connected, a dropped stream (or a 5xx while
the API restarts) is resumed with backoff for up to the client's `reconnect_for` seconds, from
the last event seen, so nothing is skipped or repeated; each drop is said on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from longrun_client import APIConnectionError, AsyncClient, LongrunError

from cli.api_client import client_for, failure_of
from cli.config import ApiTarget
from cli.exits import Exit, Failure

# The terminal event types and the run status each one means.
TERMINAL = {"done": "succeeded", "error": "failed", "cancelled": "cancelled"}
# Agents whose tokens are whole words without their own spacing (the ticker's "1", "2", ...):
# their tokens are joined with a space. A model's tokens carry their spacing: joined as they are.
WORD_TOKEN_AGENTS = frozenset({"ticker"})


@dataclass
class Transcript:
    """Pure: `feed(type, data)` returns the text to write for one event."""

    word_tokens: bool = False
    at_line_start: bool = True
    after_token: bool = False
    tools: dict[str, str] = field(default_factory=dict)

    def feed(self, etype: str, data: dict[str, Any]) -> str:
        if etype == "start":
            self.word_tokens = data.get("agent") in WORD_TOKEN_AGENTS
            return ""
        if etype == "token":
            text = str(data.get("text", ""))
            if self.word_tokens and self.after_token and text:
                text = " " + text
            return self._text(text)
        line = self._line_for(etype, data)
        if line is None:
            return ""
        return self._line(line)

    def _line_for(self, etype: str, data: dict[str, Any]) -> str | None:
        if etype == "tool_start":
            name = str(data.get("name", "?"))
            self.tools[str(data.get("call_id"))] = name
            return f"[tool {name} {json.dumps(data.get('args'), ensure_ascii=False)}]"
        if etype == "tool_end":
            name = data.get("name") or self.tools.get(str(data.get("call_id")), "?")
            ok = bool(data.get("ok"))
            said = data.get("preview") if ok else data.get("error")
            return f"[tool {name} {'ok' if ok else 'failed'}{f': {said}' if said else ''}]"
        if etype == "resumed":
            return f"[resumed: attempt {data.get('attempt')}]"
        if etype == "interrupt":
            asked = json.dumps(data.get("payload"), ensure_ascii=False)
            return f"[waiting for a person: {asked}]"
        if etype == "notice":
            return f"[notice: {data.get('message') or data.get('code')}]"
        if etype in TERMINAL:
            return ""  # only ends the line; the status line goes to stderr
        return None  # usage and anything new: not part of the transcript

    def _text(self, text: str) -> str:
        if text:
            self.at_line_start = text.endswith("\n")
            self.after_token = True
        return text

    def _line(self, line: str) -> str:
        prefix = "" if self.at_line_start else "\n"
        self.at_line_start = True
        self.after_token = False
        return prefix + (line + "\n" if line else "")


def status_line(run_id: str, etype: str, data: dict[str, Any]) -> str:
    """The last line of a followed run, for stderr."""
    status = TERMINAL[etype]
    line = f"run {run_id} {status}"
    if etype == "error":
        line += f": {data.get('code')}: {data.get('message')}"
    usage = data.get("usage")
    if isinstance(usage, dict) and usage.get("cost_usd"):
        line += f" (cost ${float(usage['cost_usd']):.4f})"
    return line


def exit_code(status: str) -> Exit:
    return Exit.OK if status == "succeeded" else Exit.NOT_SUCCEEDED


def stopped_hint(run_id: str, last_id: str | None) -> str:
    """What Ctrl-C prints: the run goes on; how to pick it up again or stop it."""
    after = f" --after {last_id}" if last_id else ""
    return (
        f"stopped following run {run_id} (it keeps running)\n"
        f"  resume: longrun runs events {run_id}{after}\n"
        f"  cancel: longrun runs cancel {run_id}"
    )


def say(text: str) -> None:
    """A lifecycle line on stderr, after whatever the transcript wrote (flushed first)."""
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


EventSink = Callable[[str, dict[str, Any]], None]


def printer(as_json: bool, agent: str | None = None) -> EventSink:
    """Writes each event to stdout: its JSON line, or its transcript text. `agent` tells how to
    join tokens when the stream starts after the `start` event that names it."""
    transcript = Transcript(word_tokens=agent in WORD_TOKEN_AGENTS)

    def write(etype: str, data: dict[str, Any]) -> None:
        if as_json:
            text = json.dumps(data, ensure_ascii=False) + "\n"
        else:
            text = transcript.feed(etype, data)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()

    return write


@dataclass
class Follower:
    """Streams one run's events into `sink` until its terminal event, through the SDK's
    resumable stream. `last_id` is the last event seen (the resume point), kept up to date for
    the caller's Ctrl-C hint."""

    client: AsyncClient
    run_id: str
    sink: EventSink
    last_id: str | None = None
    # Called with an `interrupt` event's data (a terminal's prompt: `cli.interrupts`).
    on_interrupt: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    async def run(self) -> tuple[str, dict[str, Any]] | None:
        """The terminal event (type, data); None when the stream had already ended at
        `last_id` (the API's 204)."""
        stream = self.client.runs.stream(self.run_id, self.last_id, on_reconnect=self._lost)
        try:
            async for event in stream:
                self.sink(event.type, event.data)
                self.last_id = event.id
                if event.type == "interrupt" and self.on_interrupt is not None:
                    await self.on_interrupt(event.data)
                if event.terminal:
                    return event.type, event.data
        except APIConnectionError as exc:
            if exc.__cause__ is not None:  # never connected
                raise
            raise Failure(
                Exit.UNREACHABLE,
                f"lost the API at {self.client.base_url} for {self.client.reconnect_for:.0f} s; "
                + stopped_hint(self.run_id, self.last_id).splitlines()[1].strip(),
            ) from exc
        return None

    def _lost(self, last_seq: int | None) -> None:
        say(f"[connection lost; resuming after event {last_seq or 0}]")


@dataclass
class Session:
    """What a command's Ctrl-C needs: the follower, once it follows a run."""

    follower: Follower | None = None


def run_command(
    target: ApiTarget, command: Callable[[AsyncClient, Session], Awaitable[int]]
) -> int:
    """One asyncio loop for one API command, on the SDK's client; its errors become one-line
    failures. Ctrl-C while following a run stops following (the run goes on) and prints how to
    resume or cancel it: exit 130."""
    session = Session()

    async def go() -> int:
        async with client_for(target) as client:
            try:
                return await command(client, session)
            except LongrunError as exc:
                raise failure_of(exc, target.url) from exc

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        if session.follower is not None:
            print(file=sys.stdout, flush=True)  # end the transcript's line
            say(stopped_hint(session.follower.run_id, session.follower.last_id))
        return Exit.INTERRUPTED
