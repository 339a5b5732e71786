"""The rules of webhooks, without an API or a worker: signatures that the `standardwebhooks`
library verifies (through a rotation too), the retry schedule, the targets refused as
non-public, the Idempotency-Key digest of a body without a webhook left as it was, and (on
Postgres) a delivery recorded by the statement that ends the run, never without it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from api.submit.request import SubmitRun, submit_digest
from shared.config import Settings
from shared.errors import InvalidWebhook, LeaseLost
from shared.models import Run, RunStatus, Transition, encode_event
from shared.store import Finishing, NewRun, Store
from shared.store.webhooks import Claimed
from shared.webhooks import signing, targets
from shared.webhooks.schedule import Policy, State, backoff, retry_after, verdict
from tests.test_store_fencing import finish
from worker.webhooks import Sender

pytestmark = pytest.mark.timeout(10)

BODY = b'{"type":"run.succeeded","timestamp":"2026-01-01T00:00:00+00:00","data":{"x":1}}'


def _now() -> int:
    return int(datetime.now(UTC).timestamp())


def test_our_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(signing.secret_key(secret)) == 32
    headers = signing.headers([secret], "msg_1", _now(), BODY)
    assert Webhook(secret).verify(BODY, headers) == orjson.loads(BODY)
    # A changed byte, or another secret, does not verify
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"1}", b"2}"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, headers)


def test_a_rotated_key_signs_with_both_secrets_for_the_grace_period_only() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    now = datetime.now(UTC)
    during = signing.signing_secrets(new, old, now - timedelta(hours=1), now)
    after = signing.signing_secrets(new, old, now - timedelta(days=2), now)
    assert during == [new, old]
    assert after == [new]
    headers = signing.headers(during, "msg_2", _now(), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    # Receivers holding either secret verify the same request
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)


POLICY = Policy(base_delay=5, max_delay=10800, schedule_seconds=86400, max_attempts=20)


def test_2xx_delivers_410_stops_and_anything_else_retries() -> None:
    assert verdict(POLICY, 200, 1, 0, 0.5).state is State.DELIVERED
    assert verdict(POLICY, 204, 7, 0, 0.5).state is State.DELIVERED
    gone = verdict(POLICY, 410, 1, 0, 0.5)
    assert (gone.state, gone.reason) == (State.FAILED, "gone")
    for code in (None, 301, 302, 400, 404, 429, 500, 503):
        assert verdict(POLICY, code, 1, 0, 0.5).state is State.PENDING, code


def test_the_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    for n in range(1, 30):
        ceiling = min(10800, 5 * 2 ** (n - 1))
        assert backoff(POLICY, n, 0.0) == ceiling / 2
        assert ceiling / 2 <= backoff(POLICY, n, 0.999) < ceiling
    # Retry-After stretches a delay, within the ceiling
    assert verdict(POLICY, 503, 1, 0, 0.0, wait_hint=60).delay == 60
    assert verdict(POLICY, 503, 1, 0, 0.0, wait_hint=10**9).delay == 10800
    assert retry_after("120") == 120
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_the_default_schedule_spans_about_a_day_and_then_stops() -> None:
    policy = Policy.of(Settings())
    elapsed, attempt = 0.0, 1
    while (v := verdict(policy, 500, attempt, elapsed, 0.5)).state is State.PENDING:
        assert v.delay is not None
        elapsed += v.delay
        attempt += 1
    assert v.reason == "schedule_spent"
    assert 12 * 3600 < elapsed <= 86400
    assert attempt <= policy.max_attempts
    # And the number of attempts bounds it too
    assert verdict(POLICY, 500, 20, 0, 0.5).state is State.FAILED


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://172.16.0.1/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/x",
        "https://100.64.0.1/x",
        "https://0.0.0.0/x",
        "https://224.0.0.1/x",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[fc00::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://localhost/x",
    ],
)
async def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidWebhook) as refused:
        await targets.checked(url, ())
    assert refused.value.detail == targets.NOT_PUBLIC


async def test_the_allow_list_admits_names_addresses_and_networks() -> None:
    assert await targets.checked("http://127.0.0.1:9/x", ("127.0.0.1",))
    assert await targets.checked("http://127.0.0.5:9/x", ("127.0.0.0/8",))
    assert await targets.checked("http://localhost:9/x", ("localhost",))
    with pytest.raises(InvalidWebhook):
        await targets.checked("http://10.0.0.1/x", ("127.0.0.0/8",))
    # A public address needs no allowance (and no DNS: a literal)
    t = await targets.checked("https://93.184.216.34/hook?a=1", ())
    assert (t.host, t.port, t.path, t.host_header) == ("93.184.216.34", 443, "/hook?a=1", t.host)
    assert t.pinned("93.184.216.34") == "https://93.184.216.34:443/hook?a=1"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "hook",
        "/relative/path",
        "mailto:a@example.com",
        "ftp://example.com/x",
        "https://",
        "https://user:pw@example.com/x",
        "https://example.com/x#frag",
        "https://example.com:99999/x",
        "https://exa mple.com/x",
        "http://example.com/x",  # plain http to a host not allowed
        "https://example.com/" + "a" * 3000,
    ],
)
def test_malformed_urls_are_refused_without_io(url: str) -> None:
    with pytest.raises(InvalidWebhook):
        targets.parse(url, ())


def test_a_body_without_a_webhook_keeps_the_digest_it_had_before_webhooks() -> None:
    body = SubmitRun(input="hi", params={"count": 2})
    before = {
        "input": "hi",
        "agent": "ticker",
        "params": {"count": 2},
        "thread_id": None,
        "thread_mode": "enqueue",
        "metadata": {},
    }
    expected = hashlib.sha256(orjson.dumps(before, option=orjson.OPT_SORT_KEYS)).digest()
    assert submit_digest(body, "ticker") == expected
    hooked = SubmitRun(input="hi", params={"count": 2}, webhook="https://example.com/h")
    assert submit_digest(hooked, "ticker") != expected


# -- the delivery and the terminal state: one statement ---------------------------------------


async def _hooked_run(store: Store, thread_id: str | None, key_id: str) -> str:
    new = NewRun("u", "ticker", "x", {}, {}, thread_id=thread_id, webhook=HOOK, key_id=key_id)
    return (await store.submits.insert_run(new, max_in_flight=1_000_000)).run_id


async def _deliveries(store: Store, run_id: str) -> list[tuple[str, str]]:
    rows = await store.db.fetch(
        "SELECT event_type, state FROM webhook_deliveries WHERE run_id = $1::uuid ORDER BY 1",
        run_id,
    )
    return [(r["event_type"], r["state"]) for r in rows]


HOOK = "https://93.184.216.34/hook"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("thread", [None, "t"])
async def test_a_refused_end_records_no_delivery_and_the_owner_s_end_exactly_one(store, thread):
    # Given a run with a webhook, claimed twice (attempt 2 owns it)
    key_id, _ = await store.users.create_key("u", webhook_secret=signing.new_secret())
    rid = await _hooked_run(store, thread, key_id)
    await store.runs.claim(rid, reclaim=False)
    await store.runs.claim(rid, reclaim=True)
    events = [encode_event(1, {"type": "done", "output": "x"})]

    # When attempt 1 tries to end it, it is refused, and no delivery exists
    stale = Finishing(rid, 1, Transition.SUCCEED, events, output="stale")
    with pytest.raises(LeaseLost):
        await finish(store, stale, thread is not None)
    assert await _deliveries(store, rid) == []
    # When the owner ends it (and its reply is lost: the same commit sent again)
    ok = Finishing(rid, 2, Transition.SUCCEED, events, output="ok")
    await finish(store, ok, thread is not None)
    await finish(store, ok, thread is not None)
    # Then exactly one delivery, of its terminal state
    assert await _deliveries(store, rid) == [("run.succeeded", "pending")]


@pytest.mark.timeout(30)
async def test_a_queued_run_cancelled_by_the_api_records_its_delivery(store):
    key_id, _ = await store.users.create_key("u", webhook_secret=signing.new_secret())
    rid = await _hooked_run(store, None, key_id)
    plain = (
        await store.submits.insert_run(
            NewRun("u", "ticker", "x", {}, {}, key_id=key_id), max_in_flight=1_000_000
        )
    ).run_id
    assert await store.runs.cancel_queued(rid, "u") is not None
    assert await store.runs.cancel_queued(plain, "u") is not None
    assert await _deliveries(store, rid) == [("run.cancelled", "pending")]
    assert await _deliveries(store, plain) == []


async def test_an_attempt_connects_to_the_address_checked_with_the_host_name_kept() -> None:
    # Given a webhook naming a host (allowed here: it resolves to loopback)
    settings = Settings().with_(webhook_allow_hosts=("localhost",))
    now = datetime.now(UTC)
    run = Run(
        run_id="00000000-0000-4000-8000-000000000001",
        user_id="u",
        thread_id=None,
        agent="ticker",
        input="x",
        params={},
        metadata={},
        status=RunStatus.SUCCEEDED,
        attempt=1,
        created_at=now,
        finished_at=now,
        webhook_url="https://localhost:8443/hook?x=1",
    )
    secret = signing.new_secret()
    claimed = Claimed(
        "msg_1", "att_1", "run.succeeded", 1, 1, 0.0, None, run, secret, None, None, now
    )
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204, stream=httpx.ByteStream(b""))

    # When one attempt is sent (through httpx's own mock transport: no socket)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        outcome, _ = await Sender(settings, None)._send(client, claimed, b"{}")  # type: ignore[arg-type]

    # Then the connection goes to the address resolved and checked, the URL's host stays in
    # the Host header and is the name TLS verifies, and the signature verifies
    (request,) = seen
    assert outcome.code == 204
    assert str(request.url) == "https://127.0.0.1:8443/hook?x=1"
    assert request.headers["host"] == "localhost:8443"
    assert request.extensions["sni_hostname"] == "localhost"
    Webhook(secret).verify(b"{}", dict(request.headers))
