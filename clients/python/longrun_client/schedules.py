"""Schedules: cron schedules, each making one run per tick (`/schedules`).

    client.schedules.create("0 9 * * 1-5", "the morning report", timezone="Europe/Paris")
    for s in client.schedules.list(): ...
    client.schedules.get(schedule_id); client.schedules.delete(schedule_id)
    client.schedules.runs(schedule_id)        # the runs it made, newest tick first

`AsyncSchedules` is the implementation (`AsyncClient.schedules`), `Schedules` its blocking twin
(`Client.schedules`). A create is sent once (no retry after a lost answer: it could make a
second schedule); reads and deletes are retried as the client's other calls are.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from longrun_client.models import Run, RunPage

if TYPE_CHECKING:
    from longrun_client.aio import AsyncClient
    from longrun_client.sync import _Loop


@dataclass(frozen=True)
class Schedule:
    """A schedule as `GET /schedules/{id}` shows it."""

    schedule_id: str
    cron: str
    timezone: str
    agent: str
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    thread_id: str | None
    next_run_at: str  # the next tick, RFC 3339 (UTC)
    last_run_at: str | None
    runs_made: int
    created_at: str
    url: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schedule:
        return cls(
            schedule_id=d["schedule_id"],
            cron=d.get("cron", ""),
            timezone=d.get("timezone", ""),
            agent=d.get("agent", ""),
            input=d.get("input", ""),
            params=d.get("params") or {},
            metadata=d.get("metadata") or {},
            thread_id=d.get("thread_id"),
            next_run_at=d.get("next_run_at", ""),
            last_run_at=d.get("last_run_at"),
            runs_made=int(d.get("runs_made") or 0),
            created_at=d.get("created_at", ""),
            url=d.get("url"),
            raw=d,
        )


@dataclass(frozen=True)
class SchedulePage:
    schedules: list[Schedule]
    next_cursor: str | None


def _path(schedule_id: str) -> str:
    return f"/schedules/{quote(schedule_id, safe='')}"


class AsyncSchedules:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        cron: str,
        input: str,
        *,
        timezone: str = "UTC",
        agent: str | None = None,
        params: dict[str, Any] | None = None,
        thread_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Schedule:
        """`POST /schedules`: `cron` (5 fields, 6 with seconds first, or `@daily`-style) in
        `timezone` (IANA), and the run each tick makes, as `runs.create` takes it. A bad
        expression, zone or run raises `BadRequest` (422); too many schedules `Conflict`."""
        body: dict[str, Any] = {"cron": cron, "timezone": timezone, "input": input}
        for name, value in (
            ("agent", agent),
            ("params", params),
            ("thread_id", thread_id),
            ("metadata", metadata),
        ):
            if value is not None:
                body[name] = value
        resp = await self._c.request("POST", "/schedules", repeatable=False, json=body)
        return Schedule.from_json(resp.json())

    async def get(self, schedule_id: str) -> Schedule:
        resp = await self._c.request("GET", _path(schedule_id), repeatable=True)
        return Schedule.from_json(resp.json())

    async def list_page(self, *, limit: int = 50, cursor: str | None = None) -> SchedulePage:
        """One page of your schedules, newest first; `next_cursor` asks for the next."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await self._c.request("GET", "/schedules", repeatable=True, params=params)).json()
        return SchedulePage(
            [Schedule.from_json(s) for s in page["schedules"]], page.get("next_cursor")
        )

    async def list(self, *, page_size: int = 100) -> AsyncGenerator[Schedule, None]:
        """Every one of your schedules, newest first, page by page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(limit=page_size, cursor=cursor)
            for schedule in page.schedules:
                yield schedule
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete(self, schedule_id: str) -> None:
        """`DELETE /schedules/{id}`: it ticks no more (the runs it made stay). One that is not
        yours, or was deleted already, raises `NotFound`."""
        await self._c.request("DELETE", _path(schedule_id), repeatable=True)

    async def runs(
        self, schedule_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """A page of the runs the schedule made, newest tick first (each run's `raw` has its
        `tick_at`)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        resp = await self._c.request(
            "GET", _path(schedule_id) + "/runs", repeatable=True, params=params
        )
        page = resp.json()
        return RunPage([Run.from_json(r) for r in page["runs"]], page.get("next_cursor"))


class Schedules:
    """`AsyncSchedules`, blocking; see there for what each method does."""

    def __init__(self, schedules: AsyncSchedules, loop: _Loop) -> None:
        self._a = schedules
        self._loop = loop

    def create(self, cron: str, input: str, **options: Any) -> Schedule:
        return self._loop.run(self._a.create(cron, input, **options))

    def get(self, schedule_id: str) -> Schedule:
        return self._loop.run(self._a.get(schedule_id))

    def list_page(self, **options: Any) -> SchedulePage:
        return self._loop.run(self._a.list_page(**options))

    def list(self, **options: Any) -> Iterator[Schedule]:
        return self._loop.iterate(self._a.list(**options))

    def delete(self, schedule_id: str) -> None:
        self._loop.run(self._a.delete(schedule_id))

    def runs(self, schedule_id: str, **options: Any) -> RunPage:
        return self._loop.run(self._a.runs(schedule_id, **options))
