"""A webhook survives its worker: a real `longrun worker` process SIGKILLed while its attempt is
held open by the receiver. The delivery is still made (by another worker, once the attempt's
lease ends), as the same message (`webhook-id`), and each attempt id arrives once."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.store import Store
from shared.webhooks.signing import new_secret
from tests.helpers import submit, wait_for
from tests.procs import WorkerProc, start_worker, stop_all
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WEBHOOK_ENV = {
    "LONGRUN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    "LONGRUN_WEBHOOK_TIMEOUT_SECONDS": "3",
    "LONGRUN_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "LONGRUN_WEBHOOK_POLL_SECONDS": "0.05",
}


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    try:
        yield started
    finally:
        await stop_all(started)


async def test_a_worker_killed_mid_delivery_the_webhook_still_arrives_once_per_attempt(
    api_factory, settings, store: Store, tmp_path, workers
):
    # Given a receiver that holds the first request open, and one worker process
    secret = new_secret()
    receiver = Receiver(secret, hold_next=1)
    await receiver.start()
    try:
        api = await api_factory(settings.with_(webhook_allow_hosts=("127.0.0.1",)))
        _, key = await store.users.create_key("alice", webhook_secret=secret)
        async with httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as c:
            workers.append(await start_worker(settings, "w1", tmp_path, **WEBHOOK_ENV))
            rid = await submit(
                c, agent="ticker", params={"count": 3, "interval_ms": 0}, webhook=receiver.url
            )

            # When its attempt is in the receiver's hands, the worker is killed outright
            first = await receiver.next(timeout=60)
            workers[0].signal(signal.SIGKILL)
            assert await workers[0].wait(10) == -signal.SIGKILL
            workers.append(await start_worker(settings, "w2", tmp_path, **WEBHOOK_ENV))

            # Then another worker delivers the same message, a new attempt, signed
            second = await receiver.next(timeout=60)
            assert first.verified
            assert second.verified
            assert second.webhook_id == first.webhook_id
            assert second.body == first.body
            assert second.attempt_id != first.attempt_id

            # And the attempts say so: the first left `sending` by its dead worker
            async def delivered() -> list[dict[str, object]] | None:
                body = (await c.get(f"/runs/{rid}/webhooks")).json()
                (d,) = body["deliveries"]
                return d["attempts"] if d["state"] == "delivered" else None

            attempts = await wait_for(delivered, timeout=30)
            assert [(a["id"], a["status"]) for a in attempts] == [
                (first.attempt_id, "sending"),
                (second.attempt_id, "succeeded"),
            ]
            # Each attempt id arrived once
            assert set(Counter(g.attempt_id for g in receiver.got).values()) == {1}
    finally:
        await receiver.stop()
