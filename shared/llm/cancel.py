"""Waiting on something while a run's cancel flag may go up.

`race` awaits one awaitable unless `cancelled` is set first; then the awaitable's task is
cancelled and `RunCancelled` raised, so a cancel stops a model stream, a backoff sleep or a tool
within one scheduling round. The abandoned task gets a short grace to unwind; a task that
ignores cancellation is left behind rather than allowed to hold the run. `until_cancelled` does
the same for a whole stream. However they end (a result, the flag, a time limit, or their own
task cancelled from outside), they leave no helper task pending: one that is dropped while
pending is destroyed by the collector with an error-level "Task was destroyed" log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from shared.errors import RunCancelled

T = TypeVar("T")
GRACE_SECONDS = 0.2


def _observe(task: asyncio.Task[object]) -> None:
    # Mark an abandoned task's outcome as seen, so it is not reported as never retrieved.
    if not task.cancelled():
        task.exception()


async def abandon(task: asyncio.Task[T], grace: float = GRACE_SECONDS) -> None:
    """Cancel `task` and give it `grace` seconds to finish unwinding."""
    task.cancel()
    task.add_done_callback(_observe)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({task}, timeout=grace)


async def race(aw: Awaitable[T], cancelled: asyncio.Event, time_limit: float | None = None) -> T:
    """The result of `aw`; RunCancelled if `cancelled` is set first; TimeoutError after
    `time_limit` seconds (the awaitable is abandoned either way)."""
    task: asyncio.Task[T] = asyncio.ensure_future(aw)
    if cancelled.is_set():
        await abandon(task)
        raise RunCancelled("the run was cancelled")
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:
        waiter.cancel()
        await abandon(task)
        raise
    waiter.cancel()
    if task in done:
        return task.result()
    await abandon(task)
    if waiter in done:
        raise RunCancelled("the run was cancelled")
    raise TimeoutError


_END = object()


async def _pump(source: AsyncIterator[T], queue: asyncio.Queue[object]) -> None:
    try:
        async for item in source:
            await queue.put(item)
    except Exception as exc:
        await queue.put(_Failure(exc))
    else:
        await queue.put(_END)


class _Failure:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


async def until_cancelled(
    source: AsyncIterator[T], cancelled: asyncio.Event
) -> AsyncGenerator[T, None]:
    """Re-yield `source`, which is consumed whole inside one task of its own (an HTTP stream's
    cancel scopes must not hop between tasks); RunCancelled as soon as `cancelled` is set."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=256)
    pump = asyncio.create_task(_pump(source, queue))
    waiter = asyncio.ensure_future(cancelled.wait())
    get: asyncio.Future[object] | None = None
    try:
        while True:
            if queue.empty():
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    raise RunCancelled("the run was cancelled")
                item = get.result()
            else:
                item = queue.get_nowait()
            if cancelled.is_set():
                raise RunCancelled("the run was cancelled")
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        # Also when this generator's task is cancelled while it waits for the next item.
        await _settle(get, waiter)
        if not pump.done():
            await abandon(pump)


async def _settle(*helpers: asyncio.Future[Any] | None) -> None:
    """Cancel the helpers still pending and let them finish: one left waiting (on a queue that
    nobody feeds any more) would stay pending until the collector destroys it."""
    pending = {h for h in helpers if h is not None and not h.done()}
    for helper in pending:
        helper.cancel()
    if pending:
        await asyncio.wait(pending, timeout=GRACE_SECONDS)
