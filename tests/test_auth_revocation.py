"""Revoking an API key ends everything it opened: requests, open event streams (the key in the
header, or an `events_url` token it minted), and the stream tokens it minted. Checked against a
real `longrun api` process with `longrun keys revoke` run as a subprocess, and followed with
`httpx-sse`, an EventSource-like client (it sends `Accept: text/event-stream`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from httpx_sse import ServerSentEvent, aconnect_sse

from api import tokens
from api.revocation import Held, Revocations, due
from shared.redis.admission import AdmissionIO
from shared.redis.keys import Keys
from tests.conftest import REDIS_URL
from tests.helpers import wait_for, wait_status
from tests.procs import ROOT, settings_env, start_worker, stop_all
from tests.test_ops_shutdown import start_api

REVOCATION_BOUND = 2.0  # seconds, as documented (README, HTTP section)


@dataclass
class Follower:
    """One open event stream, read by httpx-sse in a task: events arrive on `queue`."""

    queue: asyncio.Queue[ServerSentEvent] = field(default_factory=asyncio.Queue)
    events: list[ServerSentEvent] = field(default_factory=list)
    task: asyncio.Task[int] | None = None

    async def next_token(self) -> ServerSentEvent:
        while True:
            sse = await self.queue.get()
            if sse.event == "token":
                return sse


async def follow(client: httpx.AsyncClient, url: str) -> Follower:
    """Open the stream and return once its first token arrived."""
    f = Follower()

    async def read() -> int:
        async with aconnect_sse(client, "GET", url) as source:
            if source.response.status_code != 200:
                return source.response.status_code
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue  # a comment (keep-alive): a browser dispatches no event for it
                f.events.append(sse)
                f.queue.put_nowait(sse)
        return 200

    f.task = asyncio.create_task(read())
    await f.next_token()
    return f


async def revoke_with_the_cli(settings, key_id: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "keys",
        "revoke",
        key_id,
        env=settings_env(settings),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return out.decode()


async def test_revoking_a_key_ends_its_open_streams_and_stream_tokens_within_the_bound(
    settings, store, tmp_path
):
    # Given a real API process, a worker, and two keys of one user
    revoked_id, revoked_key = await store.users.create_key("carol")
    _, kept_key = await store.users.create_key("carol")
    api = await start_api(settings, tmp_path, "api")
    worker = await start_worker(settings, "w1", tmp_path)
    followers: list[Follower] = []
    try:
        async with (
            httpx.AsyncClient(
                base_url=api.url, headers={"Authorization": f"Bearer {revoked_key}"}, timeout=10
            ) as doomed,
            httpx.AsyncClient(
                base_url=api.url, headers={"Authorization": f"Bearer {kept_key}"}, timeout=10
            ) as kept,
            httpx.AsyncClient(timeout=10) as browser,
        ):
            # And a long run submitted with the key to be revoked, followed three ways: with
            # that key in the header, with the events_url its submit minted (no header, as a
            # browser's EventSource), and with the user's other key
            body = {"input": "x", "agent": "ticker", "params": {"count": 5000, "interval_ms": 50}}
            made = (await doomed.post("/runs", json=body)).json()
            run_id, events_url = made["run_id"], made["events_url"]
            by_header = await follow(doomed, f"/runs/{run_id}/events")
            by_token = await follow(browser, events_url)
            by_other_key = await follow(kept, f"/runs/{run_id}/events")
            followers = [by_header, by_token, by_other_key]

            # When the key is revoked with the CLI
            said = await revoke_with_the_cli(settings, revoked_id)
            revoked_at = time.monotonic()

            # Then both of its streams end within the bound, before the run does
            statuses = await asyncio.wait_for(
                asyncio.gather(by_header.task, by_token.task), REVOCATION_BOUND
            )
            assert time.monotonic() - revoked_at <= REVOCATION_BOUND
            assert "revoked" in said
            assert statuses == [200, 200]
            for f in (by_header, by_token):
                assert f.events[-1].event == "token", f.events[-1]
            # And reconnecting, with the key or with the token, is a 401
            last = by_header.events[-1].id
            again = await doomed.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": last})
            assert again.status_code == 401
            assert again.json()["error"] == "unauthorized"
            token_again = await browser.get(
                events_url, headers={"Accept": "text/event-stream", "Last-Event-ID": last}
            )
            assert token_again.status_code == 401
            assert token_again.json()["error"] == "stream_token_revoked"
            assert (await doomed.get("/runs")).status_code == 401
            # And the user's other key goes on: its stream is still live, its tokens stream
            await by_other_key.next_token()
            assert not by_other_key.task.done()
            fresh = (await kept.get(f"/runs/{run_id}/events_url")).json()["events_url"]
            async with browser.stream("GET", fresh, headers={"Last-Event-ID": last}) as resp:
                assert resp.status_code == 200
            await kept.post(f"/runs/{run_id}/cancel")
            await wait_status(kept, run_id, "cancelled")
            await asyncio.wait_for(by_other_key.task, 10)
            assert by_other_key.events[-1].event == "cancelled"
    finally:
        for f in followers:
            if f.task is not None and not f.task.done():
                f.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await f.task
        await stop_all([worker])
        api.proc.terminate()
        await api.proc.wait()


async def test_a_stream_token_names_the_key_that_minted_it_and_a_revoked_one_is_401(
    client, store, settings, api
):
    # Given a stream token from a submit, and its key
    made = (await client.post("/runs", json={"input": "x", "agent": "ticker"})).json()
    token = parse_qs(urlsplit(made["events_url"]).query)["token"][0]
    secret = api.server.config.app.state.security.stream_secret
    grant = tokens.verify(secret, token, made["run_id"], time.time())
    (key,) = await store.users.list_keys("alice")
    assert grant.key_id == key.key_id
    await client.post(f"/runs/{made['run_id']}/cancel")
    async with httpx.AsyncClient(timeout=10) as anon:
        assert (await anon.get(made["events_url"])).status_code == 200
        # When the key is revoked in Postgres and the epoch bumped (as `keys revoke` does)
        assert await store.users.revoke_key(key.key_id)
        switches = AdmissionIO(aioredis.Redis.from_url(REDIS_URL), Keys.from_settings(settings))
        try:
            await switches.bump_key_epoch()
        finally:
            await switches.aclose()
        # Then the token it minted is refused, even before its expiry
        refused = await anon.get(made["events_url"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "stream_token_revoked"


def test_a_version_1_token_naming_no_key_is_good_until_it_expires():
    # Given a token minted before tokens named their key (version 1)
    secret = b"k" * 32
    payload = base64.urlsafe_b64encode(
        orjson.dumps({"r": "run-a", "u": "alice", "e": 2000})
    ).rstrip(b"=")
    mac = hmac.new(secret, b"1." + payload, hashlib.sha256).digest()
    old = f"{payload.decode()}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    # Then it streams its run until it expires (a rolling upgrade cuts no page off)
    assert tokens.verify(secret, old, "run-a", now=1000) == tokens.StreamGrant(
        "run-a", "alice", 2000, None
    )
    with pytest.raises(tokens.TokenRefused) as expired:
        tokens.verify(secret, old, "run-a", now=2000)
    assert expired.value.problem is tokens.TokenProblem.EXPIRED
    # And a payload naming a key under a version-1 mac is no token at all
    v2 = tokens.mint(secret, "run-a", "alice", now=1000, ttl_seconds=60, key_id="lr_1")
    body = v2.split(".")[0]
    mixed = hmac.new(secret, b"1." + body.encode(), hashlib.sha256).digest()
    mixed_token = f"{body}.{base64.urlsafe_b64encode(mixed).rstrip(b'=').decode()}"
    with pytest.raises(tokens.TokenRefused) as refused:
        tokens.verify(secret, mixed_token, "run-a", now=1000)
    assert refused.value.problem is tokens.TokenProblem.INVALID


def test_a_token_never_outlives_the_credential_that_minted_it():
    secret = b"k" * 32
    tok = tokens.mint(secret, "run-a", "u", now=1000, ttl_seconds=900, not_after=1060)
    assert tokens.verify(secret, tok, "run-a", now=1059).expires_at == 1060
    with pytest.raises(tokens.TokenRefused):
        tokens.verify(secret, tok, "run-a", now=1060)
    assert tokens.expiry(1000, 900, None) == 1900


def test_a_held_stream_is_checked_again_when_the_epoch_moves_or_its_check_is_old():
    held = Held("lr_1", b"3", at=100.0, stop=lambda: None)
    assert not due(held, b"3", now=101.0, recheck_seconds=5.0)
    assert due(held, b"4", now=101.0, recheck_seconds=5.0)  # a key was revoked somewhere
    assert not due(held, None, now=101.0, recheck_seconds=5.0)  # Redis away: wait for recheck
    assert due(held, None, now=105.0, recheck_seconds=5.0)
    assert due(held, b"3", now=105.0, recheck_seconds=5.0)  # a bump that never came
    unknown = Held("lr_1", None, at=100.0, stop=lambda: None)  # authenticated with Redis away
    assert due(unknown, b"3", now=100.5, recheck_seconds=5.0)


async def test_a_revocation_whose_epoch_bump_was_lost_still_ends_the_stream(store, settings):
    # Given a held stream whose key is active, under the current epoch
    key_id, _ = await store.users.create_key("dana")
    switches = AdmissionIO(aioredis.Redis.from_url(REDIS_URL), Keys.from_settings(settings))
    revocations = Revocations(switches.key_epoch, store.users.active_key_ids, recheck_seconds=0.3)
    stopped = asyncio.Event()
    try:
        held = revocations.hold(key_id, b"0", stopped.set)
        assert await revocations.sweep() == 0
        # When the key is revoked in Postgres but the epoch is never bumped (Redis was away
        # from the CLI)
        assert await store.users.revoke_key(key_id)
        # Then a sweep after the re-check interval stops the stream all the same
        await wait_for(revocations.sweep, timeout=5)
        assert stopped.is_set()
        assert held.revoked
        assert revocations.held == set()
    finally:
        await switches.aclose()
