"""The interrupt statements on a real Postgres (`shared.store.interrupts`): the wait is fenced
like every write of an attempt, gives way to a cancel asked first, counts a retry whose reply
was lost as committed; a deadline answers or fails; a retried failed run may ask again."""

from __future__ import annotations

from typing import Any

import pytest

from shared.agents.base import Interrupt, interrupt_problem
from shared.config import Settings
from shared.errors import LeaseLost
from shared.models import encode_event
from shared.store import Asking, Store
from tests.helpers import queued_run

pytestmark = pytest.mark.timeout(30)


async def running(store: Store) -> str:
    sub = await queued_run(store)
    run = await store.runs.claim(sub.run_id, reclaim=False)
    assert run is not None
    return sub.run_id


def asking(run_id: str, attempt: int = 1, first_seq: int = 1, **kw: Any) -> Asking:
    body = {"type": "interrupt", "interrupt_id": kw.get("iid", "a" * 32), "payload": {"q": 1}}
    return Asking(
        run_id,
        attempt,
        kw.get("iid", "a" * 32),
        kw.get("key", "k:1"),
        {"q": 1},
        kw.get("timeout"),
        "default" in kw,
        kw.get("default"),
        [encode_event(first_seq, body)],
    )


async def status_of(store: Store, run_id: str) -> tuple[str, int]:
    run = await store.runs.get_run(run_id)
    assert run is not None
    return str(run.status), run.last_seq


async def test_a_wait_is_fenced_on_the_attempt_and_a_retry_after_a_lost_reply_is_committed(
    store: Store,
) -> None:
    rid = await running(store)
    with pytest.raises(LeaseLost):
        await store.interrupts.wait(asking(rid, attempt=2))
    with pytest.raises(LeaseLost):  # a hole before its event: not where the attempt left it
        await store.interrupts.wait(asking(rid, first_seq=3))
    assert await status_of(store, rid) == ("running", 0)
    assert await store.interrupts.wait(asking(rid)) == "waiting"
    assert await store.interrupts.wait(asking(rid)) == "waiting"  # the same write, again
    assert await status_of(store, rid) == ("waiting", 1)


async def test_a_cancel_asked_before_the_wait_wins_and_nothing_is_written(store: Store) -> None:
    rid = await running(store)
    assert await store.runs.request_cancel(rid, "u") is not None
    assert await store.interrupts.wait(asking(rid)) == "cancel"
    assert await status_of(store, rid) == ("running", 0)
    assert await store.runs.events_after(rid, 0) == []


async def test_a_deadline_fails_the_run_and_a_retried_run_may_ask_again(store: Store) -> None:
    # Given a run that waited past its deadline, with no default
    rid = await running(store)
    await store.interrupts.wait(asking(rid, timeout=0.001))
    (due,) = await store.interrupts.due(10)
    expired = await store.interrupts.expire(*due)
    assert expired is not None
    assert not expired.resumed
    assert expired.ended is not None
    assert expired.ended.payload()["code"] == "interrupt_timeout"
    assert await status_of(store, rid) == ("failed", 2)
    assert await store.interrupts.expire(*due) is None  # once
    # When an operator re-runs it and it asks the same question again
    assert await store.ops.retry_failed(rid)
    again = await store.runs.claim(rid, reclaim=False)
    assert again is not None
    assert again.attempt == 2
    # Then the interrupt is open again, under a new id
    ask = asking(rid, attempt=2, first_seq=2, iid="b" * 32)
    assert await store.interrupts.wait(ask) == "waiting"
    assert await store.interrupts.answers(rid) == {}


async def test_a_deadline_with_a_default_answers_with_it(store: Store) -> None:
    rid = await running(store)
    await store.interrupts.wait(asking(rid, timeout=0.001, default={"go": False}))
    (due,) = await store.interrupts.due(10)
    expired = await store.interrupts.expire(*due)
    assert expired is not None
    assert expired.resumed
    assert await status_of(store, rid) == ("queued", 1)
    assert await store.interrupts.answers(rid) == {"k:1": {"go": False}}


@pytest.mark.parametrize(
    ("ask", "problem"),
    [
        (Interrupt({"q": 1}, None, False, None), None),
        (Interrupt({"q": 1}, 60, True, None), None),
        (Interrupt({1, 2}, None, False, None), "payload is not JSON"),
        (Interrupt("x" * 70_000, None, False, None), "payload is larger"),
        (Interrupt(1, None, True, object()), "default is not JSON"),
        (Interrupt(1, 0, False, None), "timeout_seconds"),
        (Interrupt(1, float("inf"), False, None), "timeout_seconds"),
        (Interrupt(1, True, False, None), "timeout_seconds"),
        (Interrupt(1, 10**9, False, None), "timeout_seconds"),
    ],
)
def test_an_interrupt_the_agent_cannot_ask_is_refused_with_the_reason(
    ask: Interrupt, problem: str | None
) -> None:
    got = interrupt_problem(Settings(), ask)
    if problem is None:
        assert got is None
    else:
        assert got is not None
        assert problem in got
