"""`AsyncClient`: the client itself, on httpx's async client. (`Client` runs this one on a
private event loop, so both behave the same by construction.)

    runs.create ─────────── POST /runs (an Idempotency-Key of its own: safe to send again)
    runs.stream ─────────── GET /runs/{id}/events, resumed with Last-Event-ID on any drop
    runs.create_and_stream  create, then stream
    runs.wait ───────────── GET /runs/{id}/wait, long polls until the run ends or `timeout`
    runs.create_and_wait ── POST /runs/wait, then runs.wait
    runs.get / list / cancel, threads.messages

Requests that were refused without effect (429, 503) are sent again after their Retry-After,
at most `max_retries` times; requests safe to repeat (reads, and submits, which carry an
Idempotency-Key) also after a connection failure. Streams and waits ride out an API that goes
away (a restart, a cut connection) for up to `reconnect_for` seconds.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, aconnect_sse

from longrun_client._policy import (
    Cursor,
    Deadline,
    Reconnect,
    backoff,
    reopen_delay,
    retry_delay,
)
from longrun_client._version import __version__
from longrun_client.errors import APIConnectionError, WaitTimeout, error_from
from longrun_client.models import (
    Cancellation,
    Event,
    Message,
    Resumption,
    Run,
    RunPage,
    Submission,
)
from longrun_client.schedules import AsyncSchedules

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_POLL = 30.0  # seconds one wait request asks for: under common proxies' idle timeouts
WAIT_MAX = 300.0  # the most the API accepts
READ_MARGIN = 15.0  # a wait request's read timeout: what it asked for, plus this
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)  # the API sends a keep-alive every 15 s
OnReconnect = Callable[[int | None], None]


class AsyncClient:
    """`AsyncClient(base_url, api_key)`; each defaults to `$LONGRUN_URL` (else
    http://127.0.0.1:8000) and `$LONGRUN_API_KEY`. Use it as an async context manager, or call
    `aclose()`. `http_client` lets you bring your own httpx client (proxies, TLS, transports);
    closing it stays yours."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        reconnect_for: float = 60.0,
        wait_poll: float = WAIT_POLL,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        url = (base_url or os.environ.get("LONGRUN_URL") or DEFAULT_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://: {url!r}")
        key = api_key or os.environ.get("LONGRUN_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key or set LONGRUN_API_KEY")
        if not 0 < wait_poll <= WAIT_MAX:
            raise ValueError(f"wait_poll must be in (0, {WAIT_MAX:g}]")
        self.base_url = url
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.reconnect_for = reconnect_for
        self.wait_poll = wait_poll
        self.http = http_client or httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))
        self._owns_http = http_client is None  # one passed in is the caller's to close
        self.headers = {
            "Authorization": f"Bearer {key}",
            "User-Agent": f"longrun-client/{__version__}",
        }
        self.runs = AsyncRuns(self)
        self.threads = AsyncThreads(self)
        self.schedules = AsyncSchedules(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    def unreachable(self, exc: BaseException) -> APIConnectionError:
        return APIConnectionError(f"cannot reach the API at {self.base_url}: {exc!r}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        repeatable: bool,
        timeout: httpx.Timeout | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """The 2xx answer, or the error it ended with (`errors`). `repeatable`: the request may
        be sent again after a connection failure (it changes nothing, or carries a key)."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        attempt = 0
        while True:
            try:
                resp = await self.http.request(
                    method,
                    self.base_url + path,
                    headers=headers,
                    timeout=timeout or httpx.USE_CLIENT_DEFAULT,
                    **kwargs,
                )
            except httpx.TransportError as exc:
                if not repeatable or attempt >= self.max_retries:
                    raise self.unreachable(exc) from exc
                await asyncio.sleep(backoff(attempt))
            else:
                if resp.status_code < 400:
                    return resp
                error = error_from(resp.status_code, resp.content, resp.headers)
                delay = retry_delay(error, attempt, self.max_retries, self.max_retry_wait)
                if delay is None:
                    raise error
                await asyncio.sleep(delay)
            attempt += 1


def _run_path(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


class RunOptions(TypedDict, total=False):
    """What a submit may say besides its input (`POST /runs`'s body, and its Idempotency-Key)."""

    agent: str | None
    params: dict[str, Any] | None
    thread_id: str | None
    thread_mode: str | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    # A delayed start (one of the two): seconds from now, or a time (an aware datetime, or an
    # RFC 3339 string with its offset). The run is queued, not started, until then.
    start_after: float | None
    start_at: datetime | str | None
    priority: str | None  # "high", "normal" or "low", where the server has priorities


def _start_at(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("start_at needs a timezone (e.g. datetime.now(timezone.utc) + ...)")
    return value.isoformat()


def _submission(input: str, options: RunOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of a submit. Without an `idempotency_key` the client makes one,
    so that sending it again after a lost answer cannot make a second run."""
    fields = {k: v for k, v in options.items() if k != "idempotency_key" and v is not None}
    start_at = options.get("start_at")
    if start_at is not None:
        fields["start_at"] = _start_at(start_at)
    key = options.get("idempotency_key") or uuid.uuid4().hex
    return {"input": input, **fields}, {"Idempotency-Key": key}


class AsyncRuns:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, input: str, **options: Unpack[RunOptions]) -> Submission:
        """Submit a run (`POST /runs`): `agent`, `params`, `thread_id`, `thread_mode`,
        `metadata`, `start_after` (seconds) or `start_at` (an aware datetime or RFC 3339
        text), `priority`, `idempotency_key` (one of the client's own when absent: a submit
        sent again after a lost answer never makes a second run)."""
        body, headers = _submission(input, options)
        resp = await self._c.request("POST", "/runs", repeatable=True, json=body, headers=headers)
        replayed = resp.headers.get("idempotent-replayed") == "true"
        return Submission.from_json(resp.json(), replayed)

    async def get(self, run_id: str) -> Run:
        resp = await self._c.request("GET", _run_path(run_id), repeatable=True)
        return Run.from_json(resp.json())

    async def list_page(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        status: str | None = None,
        thread_id: str | None = None,
    ) -> RunPage:
        """One page of your runs, newest first (`GET /runs`); `next_cursor` asks for the next."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("cursor", cursor), ("status", status), ("thread_id", thread_id)):
            if value is not None:
                params[name] = value
        page = (await self._c.request("GET", "/runs", repeatable=True, params=params)).json()
        return RunPage([Run.from_json(r) for r in page["runs"]], page.get("next_cursor"))

    async def list(
        self, *, status: str | None = None, thread_id: str | None = None, page_size: int = 100
    ) -> AsyncGenerator[Run, None]:
        """Every one of your runs (matching `status` / `thread_id`), newest first, page by page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(
                limit=page_size, cursor=cursor, status=status, thread_id=thread_id
            )
            for run in page.runs:
                yield run
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, run_id: str) -> Cancellation:
        """`POST /runs/{id}/cancel`. A run that has already ended raises `Conflict`
        (`already_finished`)."""
        resp = await self._c.request("POST", _run_path(run_id) + "/cancel", repeatable=True)
        answer = resp.json()
        return Cancellation(answer["run_id"], answer["status"])

    async def resume(self, run_id: str, interrupt_id: str, value: Any) -> Resumption:
        """Answer a waiting run's question (`POST /runs/{id}/resume`): `interrupt_id` is the
        pending one (`Run.interrupt["interrupt_id"]`, or the `interrupt` event's). Sending the
        same answer again is harmless (`replayed`); another interrupt's id, or a run that is not
        waiting, raises `Conflict`."""
        body = {"interrupt_id": interrupt_id, "value": value}
        resp = await self._c.request(
            "POST", _run_path(run_id) + "/resume", repeatable=True, json=body
        )
        answer = resp.json()
        return Resumption(
            run_id=str(answer["run_id"]),
            interrupt_id=str(answer.get("interrupt_id", interrupt_id)),
            status=str(answer.get("status", "queued")),
            replayed=resp.headers.get("idempotent-replayed") == "true",
            raw=answer,
        )

    async def stream(
        self,
        run_id: str,
        last_event_id: str | int | None = None,
        *,
        on_reconnect: OnReconnect | None = None,
    ) -> AsyncGenerator[Event, None]:
        """The run's events after `last_event_id` (from the first without), each once and in
        order, until the terminal one (`done`, `error`, `cancelled`); nothing when the run had
        ended at `last_event_id` already (the API's 204). Any drop (a cut connection, an API
        restart, a 5xx between) is resumed with Last-Event-ID after a jittered backoff or the
        server's `retry:` hint; `on_reconnect(last_seq)` is told each time. A stream that stays
        lost for `reconnect_for` seconds raises `APIConnectionError`; an error answer before
        the first event, or a 4xx at any time, raises it (`errors`)."""
        c = self._c
        cursor = Cursor(None if last_event_id in (None, "") else int(last_event_id))
        url = c.base_url + _run_path(run_id) + "/events"
        connected = False
        attempt = 0  # reconnects since the last event
        lost_since: float | None = None
        while True:
            delay: float | None = None
            try:
                headers = {**c.headers, **cursor.headers()}
                async with aconnect_sse(
                    c.http, "GET", url, headers=headers, timeout=STREAM_TIMEOUT
                ) as source:
                    resp = source.response
                    if resp.status_code == 204:
                        return
                    if resp.status_code >= 400:
                        error = error_from(resp.status_code, await resp.aread(), resp.headers)
                        delay = reopen_delay(
                            error, connected, attempt, cursor.hint, c.max_retries, c.max_retry_wait
                        )
                        if delay is None:
                            raise error
                    else:
                        connected = True
                        async for sse in source.aiter_sse():
                            event = cursor.take(sse)
                            if event is None:
                                continue
                            attempt, lost_since = 0, None
                            yield event
                            if event.terminal:
                                return
            except (httpx.TransportError, Reconnect, SSEError) as exc:
                if not connected:
                    raise c.unreachable(exc) from exc
            now = time.monotonic()
            lost_since = lost_since or now
            if now - lost_since > c.reconnect_for:
                raise APIConnectionError(
                    f"lost the event stream of run {run_id} for {c.reconnect_for:g} s "
                    f"(last event {cursor.last or 0})"
                )
            if on_reconnect is not None:
                on_reconnect(cursor.last)
            await asyncio.sleep(delay if delay is not None else backoff(attempt, cursor.hint))
            attempt += 1

    async def create_and_stream(
        self,
        input: str,
        *,
        on_reconnect: OnReconnect | None = None,
        **options: Unpack[RunOptions],
    ) -> AsyncGenerator[Event, None]:
        """`create`, then `stream` from the first event."""
        run = await self.create(input, **options)
        async for event in self.stream(run.run_id, on_reconnect=on_reconnect):
            yield event

    async def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """The run once it has ended (`GET /runs/{id}/wait`, long polls of `wait_poll` s). After
        `timeout` seconds (None: no limit) raises `WaitTimeout`, whose `.run` is the run as it
        stands."""
        return await self._wait(run_id, Deadline(timeout))

    async def _wait(self, run_id: str, deadline: Deadline) -> Run:
        path = _run_path(run_id) + "/wait"
        return await self._poll(lambda s: self._c.request("GET", path, **_wait_args(s)), deadline)

    async def create_and_wait(
        self, input: str, *, timeout: float | None = None, **options: Unpack[RunOptions]
    ) -> Run:
        """Submit and wait in one request (`POST /runs/wait`), then `wait` while the run goes
        on; `timeout` as for `wait`, the options as for `create`."""
        deadline = Deadline(timeout)
        body, key = _submission(input, options)

        def submit(seconds: float) -> Awaitable[httpx.Response]:
            args = _wait_args(seconds)
            return self._c.request("POST", "/runs/wait", json=body, headers=key, **args)

        run = await self._poll(submit, deadline, once=True)
        return run if run.done else await self._wait(run.run_id, deadline)

    async def _poll(
        self,
        send: Callable[[float], Awaitable[httpx.Response]],
        deadline: Deadline,
        once: bool = False,
    ) -> Run:
        """Long polls `send(seconds)` until it answers an ended run (or, with `once`, any run);
        once the API was reached, connection failures (an API restarting) are ridden out for
        `reconnect_for` seconds; `WaitTimeout` past the deadline."""
        c = self._c
        reached = False  # the API answered, or took a request before the connection dropped
        lost_since: float | None = None
        attempt = 0
        while True:
            asked = deadline.poll(c.wait_poll)
            started = time.monotonic()
            try:
                resp = await send(asked)
            except APIConnectionError as exc:
                reached = reached or not isinstance(exc.__cause__, httpx.ConnectError)
                if not reached:  # the API was never there: say so at once
                    raise
                lost_since = lost_since or started
                if time.monotonic() - lost_since > c.reconnect_for:
                    raise
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            reached, lost_since, attempt = True, None, 0
            run = Run.from_json(resp.json())
            if run.done or once:
                return run
            if deadline.expired():
                raise WaitTimeout(run, deadline.total or 0.0)
            if time.monotonic() - started < asked / 2:  # answered early: the server's pace
                retry_after = float(resp.headers.get("retry-after") or 1)
                await asyncio.sleep(min(retry_after, deadline.poll(retry_after)))


def _wait_args(seconds: float) -> dict[str, Any]:
    # Not `repeatable`: `_poll` rides out connection failures itself, and must see the first.
    return {
        "repeatable": False,
        "params": {"timeout": f"{seconds:.3f}"},
        "timeout": httpx.Timeout(10.0, read=seconds + READ_MARGIN),
    }


class AsyncThreads:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def messages(self, thread_id: str, *, page_size: int = 200) -> list[Message]:
        """The thread's whole conversation (`GET /threads/{id}/messages`, every page)."""
        out: list[Message] = []
        after = 0
        path = f"/threads/{quote(thread_id, safe='')}/messages"
        while True:
            params = {"after": after, "limit": page_size}
            page = (await self._c.request("GET", path, repeatable=True, params=params)).json()
            out.extend(Message.from_json(m) for m in page["messages"])
            if page.get("next_after") is None:
                return out
            after = int(page["next_after"])
