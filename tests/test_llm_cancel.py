"""`shared.llm.cancel`: waits raced against a run's cancel flag leave nothing behind, whoever
stops them (the flag, or the worker cancelling the run's task)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from shared.config import Settings
from shared.errors import RunCancelled
from shared.llm.cancel import race, until_cancelled
from shared.store import Store
from tests.conftest import ApiServer
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.helpers import read_events, submit, wait_status
from worker.main import Worker

DESTROYED = "Task was destroyed but it is pending!"


@contextlib.contextmanager
def loop_complaints() -> Iterator[list[dict[str, Any]]]:
    """What the running loop reports to its exception handler meanwhile (a pending task
    garbage-collected, an exception never retrieved)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)


def messages(complaints: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("message")) for c in complaints]


async def one_then_forever() -> AsyncIterator[int]:
    yield 1
    await asyncio.Event().wait()
    yield 2


async def test_a_stream_whose_task_is_cancelled_while_it_waits_leaves_no_task_pending() -> None:
    with loop_complaints() as complaints:
        # Given a consumer waiting for the next item of a stream (the worker's drive task)
        got_first = asyncio.Event()

        async def consume() -> None:
            stream = until_cancelled(one_then_forever(), asyncio.Event())
            async with contextlib.aclosing(stream) as items:
                async for _ in items:
                    got_first.set()

        task = asyncio.create_task(consume())
        await got_first.wait()

        # When its task is cancelled from outside (a cancel, a hand-over, a time limit)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        gc.collect()
        await asyncio.sleep(0)

        # Then no task it started is left pending for the collector to destroy
        assert DESTROYED not in messages(complaints)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_stream_stopped_by_the_cancel_flag_leaves_no_task_pending() -> None:
    with loop_complaints() as complaints:
        cancelled = asyncio.Event()
        got_first = asyncio.Event()

        async def consume() -> None:
            async for _ in until_cancelled(one_then_forever(), cancelled):
                got_first.set()

        task = asyncio.create_task(consume())
        await got_first.wait()
        cancelled.set()
        with pytest.raises(RunCancelled):
            await task
        del task
        gc.collect()
        await asyncio.sleep(0)

        assert DESTROYED not in messages(complaints)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_race_whose_task_is_cancelled_leaves_no_task_pending() -> None:
    with loop_complaints() as complaints:
        started = asyncio.Event()

        async def wait() -> None:
            started.set()
            await race(asyncio.Event().wait(), asyncio.Event())

        task = asyncio.create_task(wait())
        await started.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        gc.collect()
        await asyncio.sleep(0)

        assert DESTROYED not in messages(complaints)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


# -- through a real worker ------------------------------------------------------------------------

STALL_MODEL = "claude-stall-1"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


async def test_many_chat_runs_some_cancelled_mid_stream_leave_no_task_for_the_collector(
    settings: Settings,
    fake: FakeAnthropic,
    api_factory: Callable[..., Awaitable[ApiServer]],
    worker_factory: Callable[..., Awaitable[Worker]],
    store: Store,
) -> None:
    with loop_complaints() as complaints:
        # Given a worker whose chat runs use the real SDK against the fake Messages API
        s = settings.with_(anthropic_api_key="test-key", anthropic_base_url=fake.url)
        api = await api_factory(s)
        await worker_factory(s)
        _, key = await store.users.create_key("alice")
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api.url, headers=auth, timeout=10) as client:
            # And runs whose model stalls after its first word, beside runs that finish
            stalls, finishes = 12, 12
            fake.script(*[Reply(text="one two three", hang_after=4)] * stalls, model=STALL_MODEL)
            fake.script(*[Reply(text="All done.")] * finishes)
            stalled = [
                await submit(client, input=f"stall {i}", params={"model": STALL_MODEL})
                for i in range(stalls)
            ]
            finished = [await submit(client, input=f"finish {i}") for i in range(finishes)]
            for run_id in stalled:  # each one is mid-stream: its first token is out
                _, first = await read_events(client, run_id, limit=2)
                assert [e.event for e in first] == ["start", "token"]

            # When the stalled runs are cancelled
            for run_id in stalled:
                assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
            for run_id in stalled:
                await wait_status(client, run_id, "cancelled")
            for run_id in finished:
                await wait_status(client, run_id, "succeeded")

        # Then no task of theirs is left pending, for the collector to destroy with an error
        gc.collect()
        await asyncio.sleep(0)
        assert DESTROYED not in messages(complaints)
        leftover = [t for t in asyncio.all_tasks() if "Queue.get" in repr(t)]
        assert leftover == []
