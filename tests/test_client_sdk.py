"""The Python SDK (`longrun_client`) against a live API and worker: every method, typed answers,
errors with code/detail/request_id, 429s retried after their Retry-After, and the blocking
`Client` doing what `AsyncClient` does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from longrun_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    Conflict,
    DoneEvent,
    NotFound,
    RateLimited,
    StartEvent,
    TokenEvent,
    WaitTimeout,
)

from shared.config import Settings
from tests.helpers import wait_status

pytestmark = pytest.mark.timeout(90)

LONG = {"count": 1000, "interval_ms": 50}
FIFTY_KB = "x" * 50_000


@pytest.fixture
async def sdk(api, api_key: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(api.url, api_key) as c:
        yield c


def tokens(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, TokenEvent)]


async def test_create_then_stream_gives_typed_events_each_once_in_order(
    sdk: AsyncClient, worker
) -> None:
    run = await sdk.runs.create(FIFTY_KB, agent="ticker", params={"count": 20, "interval_ms": 5})

    events = [e async for e in sdk.runs.stream(run.run_id)]

    assert run.status == "queued"
    assert run.url.endswith(f"/runs/{run.run_id}")
    assert [e.seq for e in events] == list(range(1, 23))
    assert isinstance(events[0], StartEvent)
    assert events[0].agent == "ticker"
    assert tokens(events) == [str(i) for i in range(1, 21)]
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].output == {"count": 20}
    assert (await sdk.runs.get(run.run_id)).input == FIFTY_KB


async def test_stream_resumes_after_last_event_id_and_ends_at_once_after_the_terminal_one(
    sdk: AsyncClient, worker
) -> None:
    events = [e async for e in sdk.runs.create_and_stream("x", agent="ticker", params={"count": 3})]
    run_id = (await _newest(sdk)).run_id

    after_two = [e async for e in sdk.runs.stream(run_id, last_event_id="2")]
    after_end = [e async for e in sdk.runs.stream(run_id, last_event_id=events[-1].id)]

    assert [e.seq for e in after_two] == [3, 4, 5]
    assert after_end == []  # the API's 204


async def _newest(sdk: AsyncClient) -> Any:
    page = await sdk.runs.list_page(limit=1)
    return page.runs[0]


async def test_wait_and_create_and_wait_answer_the_ended_run(sdk: AsyncClient, worker) -> None:
    run = await sdk.runs.create("x", agent="ticker", params={"count": 5, "interval_ms": 20})

    waited = await sdk.runs.wait(run.run_id, timeout=30)
    made = await sdk.runs.create_and_wait("y", agent="ticker", params={"count": 2}, timeout=30)

    assert (waited.status, waited.output, waited.done) == ("succeeded", {"count": 5}, True)
    assert (made.status, made.input, made.output) == ("succeeded", "y", {"count": 2})


async def test_wait_over_several_long_polls_and_its_timeout_carries_the_run(
    api, api_key: str, worker
) -> None:
    # Given a client whose long polls are short, a run of about two seconds and a long one
    async with AsyncClient(api.url, api_key, wait_poll=0.5) as sdk:
        short = await sdk.runs.create("x", agent="ticker", params={"count": 20, "interval_ms": 100})
        long = await sdk.runs.create("y", agent="ticker", params=LONG)

        # When it waits on both
        done = await sdk.runs.wait(short.run_id)
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as timed_out:
            await sdk.runs.wait(long.run_id, timeout=1.2)
        took = time.monotonic() - started
        await sdk.runs.cancel(long.run_id)

    # Then the short one's end is answered, and the long one's wait gives up in time
    assert done.status == "succeeded"
    assert timed_out.value.run.run_id == long.run_id
    assert not timed_out.value.run.done
    assert 1.2 <= took < 5, took


async def test_list_iterates_every_page_and_cancel_refuses_an_ended_run(
    sdk: AsyncClient, worker, client: httpx.AsyncClient
) -> None:
    made = [(await sdk.runs.create(f"m{i}", agent="ticker", params={"count": 1})) for i in range(5)]
    for run in made:
        await wait_status(client, run.run_id, "succeeded")
    long = await sdk.runs.create("z", agent="ticker", params=LONG)

    listed = [r.run_id async for r in sdk.runs.list(page_size=2)]
    ended = [r.run_id async for r in sdk.runs.list(status="succeeded", page_size=2)]
    cancelled = await sdk.runs.cancel(long.run_id)

    newest_first = list(reversed([r.run_id for r in made]))
    assert listed == [long.run_id, *newest_first]
    assert ended == newest_first
    assert cancelled.status in ("cancelled", "cancelling")
    with pytest.raises(Conflict) as finished:
        await sdk.runs.cancel(made[0].run_id)
    assert finished.value.code == "already_finished"


async def test_a_threads_messages_come_back_whole_across_pages(sdk: AsyncClient, worker) -> None:
    first = await sdk.runs.create_and_wait("my name is Ada", thread_id="conv", timeout=30)
    second = await sdk.runs.create_and_wait("what is 2+2?", thread_id="conv", timeout=30)

    messages = await sdk.threads.messages("conv", page_size=2)

    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert len(messages) > 2
    users = [m for m in messages if m.role == "user"]
    assert "my name is Ada" in str(users[0].content)
    assert users[0].run_id == first.run_id
    assert messages[-1].run_id == second.run_id


async def test_errors_carry_the_apis_code_detail_and_request_id(sdk: AsyncClient, api) -> None:
    with pytest.raises(NotFound) as missing:
        await sdk.runs.get("00000000-0000-4000-8000-000000000000")
    async with AsyncClient(api.url, "lr_not_a_key") as stranger:
        with pytest.raises(AuthenticationError) as refused:
            await stranger.runs.get("00000000-0000-4000-8000-000000000000")

    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.detail
    assert missing.value.request_id
    assert refused.value.status == 401


async def test_a_rate_limited_submit_is_sent_again_after_its_retry_after(
    api_factory, api_key: str, settings: Settings
) -> None:
    # Given an API that lets a user submit one run, then one every half second
    api = await api_factory(settings.with_(submit_rate_per_second=2.0, submit_burst=1))
    seen: list[int] = []

    async def note(response: httpx.Response) -> None:
        seen.append(response.status_code)

    async with (
        httpx.AsyncClient(event_hooks={"response": [note]}) as http,
        AsyncClient(api.url, api_key, http_client=http) as sdk,
    ):
        # When it submits twice at once
        first = await sdk.runs.create("a", agent="ticker")
        started = time.monotonic()
        second = await sdk.runs.create("b", agent="ticker")

    # Then the second was refused (429, Retry-After: 1), waited out, and accepted
    assert seen == [202, 429, 202]
    assert time.monotonic() - started >= 1.0
    assert first.run_id != second.run_id


async def test_retries_are_bounded_and_then_the_429_is_raised(
    api_factory, api_key: str, settings: Settings
) -> None:
    api = await api_factory(settings.with_(submit_rate_per_second=0.01, submit_burst=1))
    async with AsyncClient(api.url, api_key, max_retries=1) as sdk:
        await sdk.runs.create("a", agent="ticker")
        with pytest.raises(RateLimited) as limited:
            await sdk.runs.create("b", agent="ticker")  # Retry-After 100 s: beyond max wait

    assert limited.value.code == "rate_limited"
    assert limited.value.retry_after is not None
    assert limited.value.retry_after > 30


async def test_the_blocking_client_does_what_the_async_one_does(api, api_key: str, worker) -> None:
    def use() -> tuple[list[Any], Any, list[str]]:
        with Client(api.url, api_key) as c:
            events = list(c.runs.create_and_stream("x", agent="ticker", params={"count": 4}))
            waited = c.runs.create_and_wait("y", agent="ticker", params={"count": 2}, timeout=30)
            listed = [r.run_id for r in c.runs.list(page_size=1)]
            # a `break` out of a stream closes it
            for event in c.runs.stream(listed[0]):
                assert event.seq == 1
                break
            return events, waited, listed

    events, waited, listed = await asyncio.to_thread(use)

    assert tokens(events) == ["1", "2", "3", "4"]
    assert isinstance(events[-1], DoneEvent)
    assert waited.status == "succeeded"
    assert len(listed) == 2
