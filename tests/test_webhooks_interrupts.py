"""Webhooks of runs that wait for a person (issues 15 and 16 together): the move to waiting is
POSTed as `run.waiting`, with the run as `GET /runs/{id}` showed it then (its pending interrupt),
even when the sender gets to it only after the run has moved on; and the ends a wait brings (a
deadline that fails the run, a cancel of the waiting run) are POSTed like any other end. A real
receiver verifies every request with the `standardwebhooks` library."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.config import Settings
from shared.store import Store
from tests.helpers import submit, wait_for, wait_status
from tests.webhook_receiver import Received, Receiver, fast_webhooks

pytestmark = pytest.mark.timeout(90)

LINKS = ("url", "events_url")


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Fast webhooks, and `pauser`, which asks a person at once."""
    return fast_webhooks(settings, agent_modules=("pauser=tests.agents:pauser",))


@pytest.fixture
async def alice(
    api_factory: Any, hook_settings: Settings, store: Store, secret: str
) -> AsyncIterator[httpx.AsyncClient]:
    """Alice's client on an API that knows `pauser`, her key signing with the receiver's
    secret."""
    api = await api_factory(hook_settings)
    _, key = await store.users.create_key("alice", webhook_secret=secret)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        yield c


def _as_shown(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in LINKS}


async def _by_type(receiver: Receiver, n: int) -> dict[str, Received]:
    """The next `n` requests, by event type (deliveries are not ordered), each verified."""
    got = [await receiver.next(timeout=60) for _ in range(n)]
    assert all(g.verified for g in got), [g.headers for g in got]
    by_type = {g.payload["type"]: g for g in got}
    assert len(by_type) == n, [g.payload["type"] for g in got]
    return by_type


async def test_a_waiting_run_is_posted_as_it_waited_even_when_sent_after_it_finished(
    alice, hook_settings, receiver, store, worker_factory
):
    # Given a worker that runs agents but sends no webhooks, and a run that asks a person
    await worker_factory(hook_settings, webhook_concurrency=0)
    rid = await submit(alice, agent="pauser", input="x" * 50_000, webhook=receiver.url)
    waiting = await wait_status(alice, rid, "waiting")
    assert waiting["interrupt"] is not None

    # Then its wait recorded a `run.waiting` delivery, due, with the wait's commit
    listed = (await alice.get(f"/runs/{rid}/webhooks")).json()["deliveries"]
    assert [(d["type"], d["state"]) for d in listed] == [("run.waiting", "pending")]

    # When its owner answers and the run finishes, and only then a worker sends webhooks
    resp = await alice.post(
        f"/runs/{rid}/resume",
        json={"interrupt_id": waiting["interrupt"]["interrupt_id"], "value": "yes"},
    )
    assert resp.status_code == 202, resp.text
    done = await wait_status(alice, rid, "succeeded")
    await worker_factory(hook_settings)

    # Then the receiver gets both, signed: `run.waiting` with the run exactly as it was shown
    # while it waited (its interrupt pending), `run.succeeded` with the run as it ended
    got = await _by_type(receiver, 2)
    assert got["run.waiting"].payload["data"] == _as_shown(waiting)
    assert got["run.waiting"].payload["timestamp"] == waiting["waiting_since"]
    assert got["run.succeeded"].payload["data"] == _as_shown(done)
    assert done["output"] == {"answer": "yes"}
    assert got["run.waiting"].webhook_id != got["run.succeeded"].webhook_id

    # And both deliveries are listed delivered, oldest first
    async def both_delivered() -> list[tuple[str, str]] | None:
        ds = (await alice.get(f"/runs/{rid}/webhooks")).json()["deliveries"]
        pairs = [(d["type"], d["state"]) for d in ds]
        return pairs if all(s == "delivered" for _, s in pairs) else None

    assert await wait_for(both_delivered, timeout=30) == [
        ("run.waiting", "delivered"),
        ("run.succeeded", "delivered"),
    ]


async def test_a_deadline_that_fails_a_waiting_run_posts_run_failed(
    alice, hook_settings, receiver, worker_factory
):
    # Given a run that asks a person with a one-second deadline and no default
    await worker_factory(hook_settings)
    rid = await submit(alice, agent="pauser", params={"timeout_seconds": 1}, webhook=receiver.url)

    # When nobody answers, the reconciler fails it; then both its wait and its end are POSTed
    got = await _by_type(receiver, 2)
    failed = await wait_status(alice, rid, "failed")
    assert failed["error"]["code"] == "interrupt_timeout"
    assert got["run.waiting"].payload["data"]["status"] == "waiting"
    assert got["run.waiting"].payload["data"]["interrupt"]["deadline"] is not None
    assert got["run.failed"].payload["data"] == _as_shown(failed)
    assert got["run.failed"].payload["timestamp"] == failed["finished_at"]
    # And nothing more arrives: one delivery per state
    with pytest.raises(TimeoutError):
        await receiver.next(timeout=1.0)


async def test_a_cancelled_waiting_run_posts_run_cancelled(
    alice, hook_settings, receiver, worker_factory
):
    await worker_factory(hook_settings)
    rid = await submit(alice, agent="pauser", webhook=receiver.url)
    first = await receiver.next(timeout=60)
    assert first.payload["type"] == "run.waiting"

    resp = await alice.post(f"/runs/{rid}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "cancelled"

    second = await receiver.next(timeout=60)
    assert second.verified
    assert second.payload["type"] == "run.cancelled"
    assert second.payload["data"] == _as_shown((await alice.get(f"/runs/{rid}")).json())
