"""The SDK's stream and wait through real faults: a TCP proxy that cuts every connection every
fifth of a second, and an API process killed (SIGKILL) and stopped (SIGTERM) and started again
mid-stream. Every event arrives once, in order, and the waits still answer the ended run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from longrun_client import AsyncClient, Client, DoneEvent, Event, TokenEvent

from shared.config import Settings
from tests.conftest import ApiServer, free_port
from tests.procs import ApiProc
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CUT_EVERY = 0.2


def assert_every_event_once_in_order(events: list[Event], count: int) -> None:
    assert [e.seq for e in events] == list(range(1, count + 3))
    assert [e.text for e in events if isinstance(e, TokenEvent)] == [
        str(i) for i in range(1, count + 1)
    ]
    assert isinstance(events[-1], DoneEvent)


@contextlib.asynccontextmanager
async def cutting_proxy(api: ApiServer) -> AsyncIterator[TcpProxy]:
    """A proxy to the API that drops every connection every CUT_EVERY seconds."""
    proxy = await TcpProxy("127.0.0.1", api.port).start()

    async def cut_forever() -> None:
        while True:
            await asyncio.sleep(CUT_EVERY)
            proxy.cut()
            proxy.restore()

    cutter = asyncio.create_task(cut_forever())
    try:
        yield proxy
    finally:
        cutter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cutter
        await proxy.stop()


async def test_a_stream_cut_every_fifth_of_a_second_gets_every_event_once_in_order(
    api: ApiServer, api_key: str, worker
) -> None:
    # Given a run of about four seconds followed through a link cut every 0.2 s
    drops: list[int | None] = []
    async with (
        cutting_proxy(api) as proxy,
        AsyncClient(proxy.url_for(api.url), api_key, reconnect_for=30) as sdk,
    ):
        params = {"count": 200, "interval_ms": 20}
        # When it is streamed to its end
        events = [
            e
            async for e in sdk.runs.create_and_stream(
                "x", agent="ticker", params=params, on_reconnect=drops.append
            )
        ]
        # And another run is waited on through the same link
        waited = await sdk.runs.create_and_wait("y", agent="ticker", params=params, timeout=60)

    # Then every event came once, in order, across many reconnects; the wait got the end
    assert_every_event_once_in_order(events, 200)
    assert len(drops) >= 5, drops
    assert drops == sorted(drops, key=lambda d: d or 0)  # each resume from further on
    assert waited.status == "succeeded"


async def test_the_blocking_client_rides_out_the_same_cuts(
    api: ApiServer, api_key: str, worker
) -> None:
    async with cutting_proxy(api) as proxy:

        def follow() -> list[Event]:
            with Client(proxy.url_for(api.url), api_key, reconnect_for=30) as c:
                run = c.runs.create("x", agent="ticker", params={"count": 100, "interval_ms": 20})
                return list(c.runs.stream(run.run_id))

        events = await asyncio.to_thread(follow)

    assert_every_event_once_in_order(events, 100)


@pytest.fixture
async def restartable_api(settings: Settings, tmp_path: Path) -> AsyncIterator[ApiProc]:
    api = ApiProc(
        settings,
        tmp_path,
        free_port(),
        LONGRUN_STREAM_TOKEN_SECRET="shared-between-instances-" + "x" * 32,
    )
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_a_stream_and_a_wait_ride_out_the_api_restarting_twice(
    restartable_api: ApiProc, api_key: str, worker
) -> None:
    api = restartable_api
    async with AsyncClient(api.url, api_key, reconnect_for=60) as sdk:
        # Given a run of about six seconds, streamed, and waited on by another request
        run = await sdk.runs.create("x", agent="ticker", params={"count": 200, "interval_ms": 30})
        events: list[Event] = []
        drops: list[int | None] = []
        reached = {20: asyncio.Event(), 80: asyncio.Event()}

        async def follow() -> None:
            async for e in sdk.runs.stream(run.run_id, on_reconnect=drops.append):
                events.append(e)
                if len(events) in reached:
                    reached[len(events)].set()

        following = asyncio.create_task(follow())
        waiting = asyncio.create_task(sdk.runs.wait(run.run_id, timeout=90))

        # When the API process is killed outright, started again, then stopped and started
        await asyncio.wait_for(reached[20].wait(), 30)
        await api.kill9()
        await api.start()
        await asyncio.wait_for(reached[80].wait(), 30)
        await api.stop()
        await api.start()
        await asyncio.wait_for(following, 60)
        waited = await asyncio.wait_for(waiting, 60)

    # Then the stream got every event once and in order, and the wait the ended run
    assert_every_event_once_in_order(events, 200)
    assert len(drops) >= 2, drops
    assert waited.status == "succeeded"
    assert waited.output == {"count": 200}
