"""JWT callers have their own namespace of user ids (`jwt:<issuer>:<claim>`): a JWT whose `sub`
is an API-key user's name reads none of that user's runs, no API key can be made for a JWT
user's id, and what a JWT mints never outlives it."""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt

from api import tokens
from cli.exits import Exit
from tests.helpers import submit
from tests.procs import ROOT, settings_env

SECRET = "j" * 64
ISSUER = "https://issuer.test"


def a_jwt(sub: str, exp_in: int = 120) -> str:
    now = int(time.time())
    claims = {"sub": sub, "aud": "longrun-test", "iss": ISSUER, "exp": now + exp_in, "iat": now}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def opened(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """The answer to a GET that may be an endless stream: its head, then the connection closed."""
    async with client.stream("GET", url) as resp:
        return resp


async def test_a_jwt_naming_an_api_key_user_reads_none_of_that_users_runs(
    api_factory, settings, store
):
    # Given an API that takes JWTs, and API-key user alice with a run
    srv = await api_factory(
        settings.with_(jwt_secret=SECRET, jwt_audience="longrun-test", jwt_issuer=ISSUER)
    )
    _, key = await store.users.create_key("alice")
    async with (
        httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as alice,
        httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {a_jwt('alice')}"}, timeout=10
        ) as jwt_alice,
    ):
        run_id = await submit(alice, agent="ticker", params={"count": 1})

        # When a JWT with sub=alice asks for it every way
        answers = [
            await jwt_alice.get(f"/runs/{run_id}"),
            await opened(jwt_alice, f"/runs/{run_id}/events"),
            await jwt_alice.get(f"/runs/{run_id}/events_url"),
            await jwt_alice.post(f"/runs/{run_id}/cancel"),
        ]
        listed = await jwt_alice.get("/runs")
        # And makes a run of its own
        own = await submit(jwt_alice, agent="ticker", params={"count": 1})
        alice_sees = await alice.get(f"/runs/{own}")

    # Then each is a 404, and neither lists the other's runs
    assert [a.status_code for a in answers] == [404, 404, 404, 404]
    assert listed.json()["runs"] == []
    assert alice_sees.status_code == 404
    # And the JWT's run belongs to the issuer-namespaced user
    assert (await store.runs.get_run(own)).user_id == f"jwt:{ISSUER}:alice"
    assert (await store.runs.get_run(run_id)).user_id == "alice"


async def test_no_api_key_can_be_made_for_a_jwt_users_id(settings, store):
    # When an operator asks for a key for a JWT user's id
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "keys",
        "create",
        "--user",
        f"jwt:{ISSUER}:alice",
        env=settings_env(settings),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    # Then it is refused as bad usage with one clear line, and no key exists
    assert proc.returncode == Exit.USAGE, (out, err)
    assert out == b""
    assert err.decode().strip().splitlines() == [
        "longrun: user ids beginning 'jwt:' are reserved for JWT callers"
    ]
    assert await store.users.list_keys() == []


async def test_a_stream_token_minted_with_a_jwt_expires_with_it(api_factory, settings):
    # Given a JWT that expires in 60 seconds, and a run it made
    srv = await api_factory(
        settings.with_(jwt_secret=SECRET, jwt_audience="longrun-test", jwt_issuer=ISSUER)
    )
    token = a_jwt("erin", exp_in=60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as erin:
        made = (await erin.post("/runs", json={"input": "x", "agent": "ticker"})).json()
        # When it asks for an events_url (the token TTL is 900 s)
        fresh = (await erin.get(f"/runs/{made['run_id']}/events_url")).json()
        await erin.post(f"/runs/{made['run_id']}/cancel")
    # Then the stream tokens expire with the JWT, not later
    assert fresh["expires_at"] == exp
    secret = srv.server.config.app.state.security.stream_secret
    for url in (made["events_url"], fresh["events_url"]):
        stream_token = parse_qs(urlsplit(url).query)["token"][0]
        grant = tokens.verify(secret, stream_token, made["run_id"], time.time())
        assert grant.expires_at == exp
        assert grant.key_id is None
        assert grant.user_id == "jwt:https://issuer.test:erin"
    # And such a token streams (no key to check)
    async with httpx.AsyncClient(timeout=10) as browser:
        assert (await browser.get(fresh["events_url"])).status_code == 200
