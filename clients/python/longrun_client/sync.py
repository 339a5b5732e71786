"""`Client`: the blocking client. It runs an `AsyncClient` on an event loop of its own, in a
daemon thread, so the two share one implementation (retries, resumable streams, waits) rather
than two that could drift apart. Iterators (`runs.stream`, `runs.list`) step the async ones; a
`break` out of a loop closes the stream. Safe to use from one thread at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from longrun_client.aio import AsyncClient, AsyncRuns, AsyncThreads, OnReconnect, RunOptions
from longrun_client.models import (
    Cancellation,
    Event,
    Message,
    Resumption,
    Run,
    RunPage,
    Submission,
)
from longrun_client.schedules import Schedules

T = TypeVar("T")


class _Loop:
    """An event loop in a daemon thread; `run` blocks on one coroutine of it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="longrun-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:  # KeyboardInterrupt included: stop the coroutine too
            future.cancel()
            raise

    def iterate(self, items: AsyncGenerator[T, None]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.run(items.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(items.aclose())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Client:
    """The blocking twin of `AsyncClient`: the same arguments, methods and errors. Use it as a
    context manager, or call `close()`."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, **options: Any
    ) -> None:
        self._async = AsyncClient(base_url, api_key, **options)
        self._loop = _Loop()
        self.base_url = self._async.base_url
        self.runs = Runs(self._async.runs, self._loop)
        self.threads = Threads(self._async.threads, self._loop)
        self.schedules = Schedules(self._async.schedules, self._loop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run(self._async.aclose())
        self._loop.close()


class Runs:
    """`AsyncRuns`, blocking; see there for what each method does."""

    def __init__(self, runs: AsyncRuns, loop: _Loop) -> None:
        self._a = runs
        self._loop = loop

    def create(self, input: str, **options: Unpack[RunOptions]) -> Submission:
        return self._loop.run(self._a.create(input, **options))

    def get(self, run_id: str) -> Run:
        return self._loop.run(self._a.get(run_id))

    def list_page(self, **options: Any) -> RunPage:
        return self._loop.run(self._a.list_page(**options))

    def list(self, **options: Any) -> Iterator[Run]:
        return self._loop.iterate(self._a.list(**options))

    def cancel(self, run_id: str) -> Cancellation:
        return self._loop.run(self._a.cancel(run_id))

    def resume(self, run_id: str, interrupt_id: str, value: Any) -> Resumption:
        return self._loop.run(self._a.resume(run_id, interrupt_id, value))

    def stream(
        self,
        run_id: str,
        last_event_id: str | int | None = None,
        *,
        on_reconnect: OnReconnect | None = None,
    ) -> Iterator[Event]:
        return self._loop.iterate(self._a.stream(run_id, last_event_id, on_reconnect=on_reconnect))

    def create_and_stream(
        self,
        input: str,
        *,
        on_reconnect: OnReconnect | None = None,
        **options: Unpack[RunOptions],
    ) -> Iterator[Event]:
        return self._loop.iterate(
            self._a.create_and_stream(input, on_reconnect=on_reconnect, **options)
        )

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        return self._loop.run(self._a.wait(run_id, timeout))

    def create_and_wait(
        self, input: str, *, timeout: float | None = None, **options: Unpack[RunOptions]
    ) -> Run:
        return self._loop.run(self._a.create_and_wait(input, timeout=timeout, **options))


class Threads:
    def __init__(self, threads: AsyncThreads, loop: _Loop) -> None:
        self._a = threads
        self._loop = loop

    def messages(self, thread_id: str, **options: Any) -> list[Message]:
        return self._loop.run(self._a.messages(thread_id, **options))
