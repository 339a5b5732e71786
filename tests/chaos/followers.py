"""SSE followers: clients we did not write (`httpx-sse`) that follow a run's
`GET /runs/{id}/events` the way a browser's EventSource does. On any drop or error (connection
refused or reset, a non-200 answer, a read timeout, a stream that ends without the terminal
event) they reconnect after a short retry with `Last-Event-ID` set to the last id received, and
they stop at the terminal event or a 204. Every event received is recorded in order, with the
time it arrived, whatever it is (duplicates and regressions included: the checker judges)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from httpx_sse import aconnect_sse

TERMINAL = frozenset({"done", "error", "cancelled"})
RETRY_SECONDS = 0.1


@dataclass(frozen=True)
class Received:
    id: str
    event: str
    data: str  # the data line exactly as received
    at: float  # time.monotonic()

    @property
    def seq(self) -> int | None:
        try:
            value = json.loads(self.data).get("seq")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, int) else None


@dataclass
class Follower:
    run_id: str
    received: list[Received] = field(default_factory=list)
    connects: int = 0
    drops: list[str] = field(default_factory=list)  # why each connection ended early
    ended: str | None = None  # "terminal" or "204"
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> str | None:
        return self.received[-1].id if self.received else None

    def seen_after(self, t: float) -> list[Received]:
        return [r for r in self.received if r.at >= t]

    async def follow(self, client: httpx.AsyncClient) -> None:
        """Until the terminal event or a 204 (cancel the task to give up)."""
        while self.ended is None:
            headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
            self.connects += 1
            try:
                await self._one_connection(client, headers)
            except Exception as exc:  # any drop or error: reconnect, as a browser does
                self.drops.append(type(exc).__name__)
            if self.ended is None:
                await asyncio.sleep(RETRY_SECONDS)  # EventSource's reconnection time

    async def _one_connection(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        async with aconnect_sse(
            client, "GET", f"/runs/{self.run_id}/events", headers=headers
        ) as source:
            status = source.response.status_code
            if status == 204:
                self.ended = "204"
                self._changed.set()
                return
            if status != 200:
                await source.response.aread()
                self.drops.append(f"status {status}")
                return
            async for sse in source.aiter_sse():
                if not sse.data:  # a keep-alive after an event (the decoder repeats the id)
                    continue
                self.received.append(Received(sse.id, sse.event, sse.data, time.monotonic()))
                self._changed.set()
                if sse.event in TERMINAL:
                    self.ended = "terminal"
                    return
            self.drops.append("stream ended")


class Followers:
    """One follower per run, each its own task on one shared HTTP client."""

    def __init__(self, base_url: str, api_key: str) -> None:
        # The read timeout turns a silent server (the API stalled or gone without a FIN) into a
        # reconnect, as a browser's EventSource does on a dead connection; pings come every
        # 0.5 s in the suite.
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(5.0, connect=2.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self.by_run: dict[str, Follower] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.changed = asyncio.Event()

    def follow(self, run_id: str) -> Follower:
        f = Follower(run_id, _changed=self.changed)
        self.by_run[run_id] = f
        self.tasks[run_id] = asyncio.create_task(f.follow(self.client), name=f"follow-{run_id}")
        return f

    async def until(self, predicate: Callable[[dict[str, Follower]], bool], timeout: float) -> None:
        """Wait (woken by each event received) until `predicate(by_run)` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.by_run):
            left = deadline - time.monotonic()
            if left <= 0:
                counts = {r[:8]: len(f.received) for r, f in self.by_run.items()}
                raise AssertionError(f"followers: condition not met within {timeout}s: {counts}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    async def each_received(self, n: int, timeout: float) -> None:
        """Until every follower received at least `n` events (or ended)."""
        await self.until(
            lambda fs: all(len(f.received) >= n or f.ended for f in fs.values()), timeout
        )

    def snapshot(self) -> dict[str, int]:
        """How many events each follower has received so far."""
        return {r: len(f.received) for r, f in self.by_run.items()}

    async def progressed(self, since: dict[str, int], timeout: float, events: int = 1) -> float:
        """Wait until every run that had not ended got `events` more events than at `since`
        (or ended); returns the seconds it took."""
        t0 = time.monotonic()
        await self.until(
            lambda fs: all(
                f.ended or len(f.received) >= since.get(r, 0) + events for r, f in fs.items()
            ),
            timeout,
        )
        return time.monotonic() - t0

    async def finish(self, timeout: float) -> list[str]:
        """Wait for every follower to end; returns the runs whose follower did not (they are
        stopped)."""
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        late = [r for r, t in self.tasks.items() if not t.done()]
        await self.close()
        return late

    async def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        for t in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.client.aclose()
