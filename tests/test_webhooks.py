"""Signed webhooks, end to end: a run's terminal state POSTed to a real receiver that verifies
each signature with the `standardwebhooks` library; retries against a receiver that fails and
then recovers; 410 stopping them; the attempts listed and redelivered by the run's owner
alone; and every bad webhook refused with a 422 that writes nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from cli.exits import Exit
from shared.config import Settings
from shared.redis.keys import Keys
from shared.store import Store
from tests.cli_proc import cli_env, longrun
from tests.helpers import queue_backlog, submit, wait_for, wait_status
from tests.test_auth_jwt_users import ISSUER, SECRET, a_jwt
from tests.webhook_receiver import Receiver, fast_webhooks

pytestmark = pytest.mark.timeout(60)

TICKER = {"agent": "ticker", "params": {"count": 3, "interval_ms": 0}}
LINKS = ("url", "events_url")


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Fast webhooks, and the agent that raises."""
    return fast_webhooks(settings, agent_modules=("raiser=tests.agents:raiser",))


async def _client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
async def hook_api(api_factory: Any, hook_settings: Settings) -> Any:
    return await api_factory(hook_settings)


@pytest.fixture
async def hooks(hook_api: Any, store: Store, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    """Alice's client, her key holding the receiver's secret."""
    _, key = await store.users.create_key("alice", webhook_secret=secret)
    async with await _client(hook_api.url, key) as c:
        yield c


def _as_shown(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in LINKS}


async def _delivered(client: httpx.AsyncClient, run_id: str, state: str = "delivered") -> Any:
    async def check() -> Any:
        body = (await client.get(f"/runs/{run_id}/webhooks")).json()
        ds = body["deliveries"]
        return body if ds and ds[-1]["state"] == state else None

    return await wait_for(check, timeout=30)


async def test_a_finished_run_is_posted_signed_as_get_runs_shows_it(
    hooks, hook_settings, receiver, worker_factory
):
    # Given a worker, and a run that names the receiver as its webhook
    await worker_factory(hook_settings)
    rid = await submit(hooks, input="x" * 50_000, webhook=receiver.url, **TICKER)

    # When it finishes, the receiver gets one request, whose signature the Standard Webhooks
    # library verifies with the key's secret
    got = await receiver.next()
    assert got.verified, got.headers
    assert got.path == "/hooks/longrun"
    assert got.webhook_id.startswith("msg_")
    assert got.headers["content-type"] == "application/json"
    # Then it carries the event type and the run exactly as GET /runs/{id} shows it
    run = await wait_status(hooks, rid, "succeeded")
    assert run["webhook"] == receiver.url
    assert got.payload["type"] == "run.succeeded"
    assert got.payload["data"] == _as_shown(run)
    assert got.payload["timestamp"] == run["finished_at"]

    # And the attempt is listed: delivered at the first try, with its code and latency
    body = await _delivered(hooks, rid)
    (delivery,) = body["deliveries"]
    assert body["webhook"] == receiver.url
    assert delivery["id"] == got.webhook_id
    assert delivery["type"] == "run.succeeded"
    (attempt,) = delivery["attempts"]
    assert attempt["id"] == got.attempt_id
    assert attempt["status"] == "succeeded"
    assert attempt["response_code"] == 200
    assert attempt["latency_ms"] > 0


async def test_failed_and_cancelled_runs_send_their_own_event_types(
    hooks, hook_settings, receiver, worker_factory
):
    # Given a run cancelled while queued (no worker yet) and one whose agent raises
    cancelled = await submit(hooks, webhook=receiver.url, **TICKER)
    assert (await hooks.post(f"/runs/{cancelled}/cancel")).status_code == 202
    await worker_factory(hook_settings)
    failed = await submit(hooks, agent="raiser", webhook=receiver.url)

    # Then each is posted with its type
    first, second = await receiver.next(), await receiver.next()
    by_run = {g.payload["data"]["run_id"]: g for g in (first, second)}
    assert by_run[cancelled].payload["type"] == "run.cancelled"
    assert by_run[failed].payload["type"] == "run.failed"
    assert by_run[failed].payload["data"]["error"]["code"] == "agent_crashed"
    assert all(g.verified for g in (first, second))


async def test_a_key_s_default_webhook_serves_runs_that_name_none(
    hook_api, hook_settings, store, secret, receiver, worker_factory
):
    # Given a key with a default webhook, and a run submitted without one
    _, key = await store.users.create_key("carol", webhook_url=receiver.url, webhook_secret=secret)
    await worker_factory(hook_settings)
    async with await _client(hook_api.url, key) as c:
        rid = await submit(c, **TICKER)
        # Then its end reaches the key's webhook, signed
        got = await receiver.next()
        assert got.verified
        assert got.payload["data"]["run_id"] == rid
        assert (await c.get(f"/runs/{rid}")).json()["webhook"] == receiver.url


async def test_a_receiver_that_fails_then_recovers_gets_the_same_message_again(
    hooks, hook_settings, receiver, worker_factory
):
    # Given a receiver that answers 500, then a redirect (not followed), then 200
    receiver.answers = [500, 307]
    await worker_factory(hook_settings)
    rid = await submit(hooks, webhook=receiver.url, **TICKER)

    # Then it gets three attempts of one message, each signed afresh and verified
    got = [await receiver.next() for _ in range(3)]
    assert all(g.verified for g in got)
    assert len({g.webhook_id for g in got}) == 1
    assert len({g.attempt_id for g in got}) == 3
    assert len({g.body for g in got}) == 1  # the same bytes every time
    assert {g.path for g in got} == {"/hooks/longrun"}  # the redirect was not followed
    # And the attempts are listed with their answers, the delivery done
    body = await _delivered(hooks, rid)
    attempts = body["deliveries"][0]["attempts"]
    assert [a["response_code"] for a in attempts] == [500, 307, 200]
    assert [a["status"] for a in attempts] == ["failed", "failed", "succeeded"]
    assert [a["n"] for a in attempts] == [1, 2, 3]


async def test_410_gone_stops_the_retries(hooks, hook_settings, receiver, worker_factory):
    receiver.answers = [410]
    await worker_factory(hook_settings)
    rid = await submit(hooks, webhook=receiver.url, **TICKER)
    await receiver.next()

    body = await _delivered(hooks, rid, state="failed")
    (delivery,) = body["deliveries"]
    assert [a["response_code"] for a in delivery["attempts"]] == [410]
    # Many retry delays later, nothing more arrived
    with pytest.raises(TimeoutError):
        await receiver.next(timeout=1.0)
    # And /metrics counts it among the deliveries given up
    metrics = (await hooks.get("/metrics")).text
    assert 'longrun_webhook_deliveries{state="failed"} 1.0' in metrics
    assert 'longrun_webhook_deliveries{state="pending"} 0.0' in metrics


async def test_the_schedule_is_bounded(hooks, hook_settings, receiver, worker_factory):
    # Given a receiver that always fails, and at most three attempts
    receiver.answers = [500] * 10
    await worker_factory(hook_settings.with_(webhook_max_attempts=3))
    rid = await submit(hooks, webhook=receiver.url, **TICKER)

    body = await _delivered(hooks, rid, state="failed")
    assert len(body["deliveries"][0]["attempts"]) == 3
    assert len(receiver.got) == 3


async def test_the_owner_redelivers_and_no_one_else_sees_the_webhooks(
    hooks, hook_api, hook_settings, receiver, worker_factory, store
):
    await worker_factory(hook_settings)
    rid = await submit(hooks, webhook=receiver.url, **TICKER)
    first = await receiver.next()
    await _delivered(hooks, rid)

    # When its owner asks for a redelivery, the same message is sent again, signed
    answer = await hooks.post(f"/runs/{rid}/webhooks/redeliver")
    assert answer.status_code == 202, answer.text
    assert answer.json()["delivery_id"] == first.webhook_id
    again = await receiver.next()
    assert again.verified
    assert again.webhook_id == first.webhook_id
    assert again.attempt_id != first.attempt_id

    # Another user gets the 404 of a run that does not exist, for both
    _, key = await store.users.create_key("bob")
    async with await _client(hook_api.url, key) as bob:
        for answer in (
            await bob.get(f"/runs/{rid}/webhooks"),
            await bob.post(f"/runs/{rid}/webhooks/redeliver"),
        ):
            assert answer.status_code == 404
            assert answer.json()["error"] == "not_found"

    # And a run without a webhook has nothing to redeliver
    plain = await submit(hooks, **TICKER)
    await wait_status(hooks, plain, "succeeded")
    nothing = await hooks.post(f"/runs/{plain}/webhooks/redeliver")
    assert nothing.status_code == 409
    assert nothing.json()["error"] == "no_delivery"
    assert (await hooks.get(f"/runs/{plain}/webhooks")).json()["deliveries"] == []


@pytest.mark.parametrize(
    "webhook",
    [
        "not a url",
        "ftp://example.com/hook",
        "https://user:pass@example.com/hook",
        "http://93.184.216.34/hook",  # public, but not https
        "https://10.0.0.7/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]:8443/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
        "https://100.64.1.1/hook",
        "https://0.0.0.0/hook",
    ],
)
async def test_a_bad_or_private_webhook_is_a_422_that_writes_nothing(
    api, store, secret, settings, redis_client, webhook
):
    # (the API of these tests allows no private host: `api` uses the plain settings)
    _, key = await store.users.create_key("alice", webhook_secret=secret)
    async with await _client(api.url, key) as c:
        answer = await c.post("/runs", json={"input": "hi", "webhook": webhook, **TICKER})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "invalid_webhook"
    assert body["request_id"]
    assert webhook not in body["detail"]
    assert await store.db.fetchval("SELECT count(*) FROM runs") == 0
    assert await queue_backlog(redis_client, Keys.from_settings(settings)) == 0


async def test_a_webhook_needs_a_key_that_can_sign_it(api, store, settings):
    # Given a key made without a webhook secret (as keys were before webhooks)
    _, key = await store.users.create_key("old")
    async with await _client(api.url, key) as c:
        bad_type = await c.post("/runs", json={"input": "hi", "webhook": 42})
        unsigned = await c.post(
            "/runs", json={"input": "hi", "webhook": "https://93.184.216.34/hook"}
        )
    assert bad_type.status_code == 422
    assert bad_type.json()["error"] == "invalid_request"
    assert unsigned.status_code == 422
    assert unsigned.json()["error"] == "invalid_webhook"
    assert "rotate-webhook-secret" in unsigned.json()["detail"]
    assert await store.db.fetchval("SELECT count(*) FROM runs") == 0


async def test_a_jwt_caller_has_no_key_to_sign_a_webhook_with(api_factory, settings, store):
    srv = await api_factory(
        settings.with_(jwt_secret=SECRET, jwt_audience="longrun-test", jwt_issuer=ISSUER)
    )
    async with await _client(srv.url, a_jwt("erin")) as c:
        answer = await c.post("/runs", json={"input": "hi", "webhook": "https://93.184.216.34/"})
        plain = await c.post("/runs", json={"input": "hi", **TICKER})
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_webhook"
    assert "API key" in answer.json()["detail"]
    assert plain.status_code == 202  # the same caller, without a webhook
    assert await store.db.fetchval("SELECT count(*) FROM runs") == 1


async def test_the_webhook_is_carried_by_the_submit_lane_and_by_idempotent_replays(
    hooks, store, receiver
):
    # A submit with an Idempotency-Key and a webhook: a retry replays it, one with another
    # webhook is another body
    body = {"input": "hi", "webhook": receiver.url, **TICKER}
    first = await hooks.post("/runs", json=body, headers={"Idempotency-Key": "k1"})
    again = await hooks.post("/runs", json=body, headers={"Idempotency-Key": "k1"})
    other = await hooks.post(
        "/runs",
        json={**body, "webhook": receiver.url + "/2"},
        headers={"Idempotency-Key": "k1"},
    )
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"
    url = await store.db.fetchval(
        "SELECT webhook_url FROM runs WHERE run_id = $1::uuid", first.json()["run_id"]
    )
    assert url == receiver.url


async def test_many_runs_ending_together_each_post_once(
    hooks, hook_settings, receiver, worker_factory
):
    # Grouped submits and grouped terminal commits (FINISH_MANY) record one delivery per run
    await worker_factory(hook_settings)
    rids = await asyncio.gather(*(submit(hooks, webhook=receiver.url, **TICKER) for _ in range(30)))
    got = [await receiver.next() for _ in rids]
    assert sorted(g.payload["data"]["run_id"] for g in got) == sorted(rids)
    assert all(g.verified for g in got)
    assert len({g.webhook_id for g in got}) == 30
    lags = sorted(
        g.at - datetime.fromisoformat(g.payload["data"]["finished_at"]).timestamp() for g in got
    )
    print(
        f"\nwebhook lag after the terminal commit (poll 0.05 s, 30 runs): "
        f"p50 {lags[15] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
    )


async def test_keys_made_by_the_cli_sign_their_webhooks_through_a_rotation(
    hook_api, hook_settings, worker_factory, tmp_path
):
    # Given a key made by `longrun keys create --webhook`, its secret printed once
    env = cli_env(tmp_path / ".longrun", hook_settings, LONGRUN_WEBHOOK_ALLOW_HOSTS="127.0.0.1")
    refused = await longrun(
        "keys", "create", "--user", "dana", "--webhook", "https://10.0.0.1/x", env=env
    )
    assert refused.code == Exit.USAGE, refused
    assert "not a public address" in refused.err
    receiver = Receiver(secret="")  # its secret is the one the CLI prints
    made = await longrun("keys", "create", "--user", "dana", "--webhook", receiver.url, env=env)
    assert made.code == 0, made
    key = made.out.strip().splitlines()[-1]
    (old_secret,) = re.findall(r"whsec_[A-Za-z0-9+/=]+", made.out)
    receiver.secret = old_secret
    await receiver.start()
    try:
        await worker_factory(hook_settings)
        async with await _client(hook_api.url, key) as c:
            # When a run ends, its default webhook verifies with that secret
            await submit(c, **TICKER)
            assert (await receiver.next()).verified

            # And after a rotation, a receiver holding either secret verifies the next one
            (key_id,) = re.findall(r"created key (lr_[0-9a-f]+) ", made.out)
            rotated = await longrun("keys", "rotate-webhook-secret", key_id, env=env)
            assert rotated.code == 0, rotated
            new_secret_ = rotated.out.strip().splitlines()[-1]
            assert new_secret_.startswith("whsec_")
            assert new_secret_ != old_secret
            await submit(c, **TICKER)
            got = await receiver.next()
            assert got.verified  # the old secret, within the grace period
            Webhook(new_secret_).verify(got.body, got.headers)
    finally:
        await receiver.stop()
    unknown = await longrun("keys", "rotate-webhook-secret", "lr_nope", env=env)
    assert unknown.code == Exit.NOT_SUCCEEDED
