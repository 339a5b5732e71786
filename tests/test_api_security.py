"""The API's security edges: isolation in every endpoint, key revocation, JWTs, stream tokens,
request ids, CORS and header limits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api import tokens
from api.server import server_options
from cli.admin import revoke_key
from tests.helpers import submit, wait_status

JWT_SECRET = "s" * 64


def _comparable(resp: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in resp.headers.items() if k not in ("date",))
    return resp.status_code, resp.content, headers


async def test_another_users_objects_answer_byte_identically_to_missing_ones_everywhere(
    client, bob, worker
):
    # Given alice's finished run in a thread, with an idempotency key
    run_id = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 0})
    body = {"input": "x", "agent": "ticker", "thread_id": "t-alice", "params": {"count": 0}}
    keyed = await client.post("/runs", json=body, headers={"Idempotency-Key": "alice-key"})
    await wait_status(client, run_id, "succeeded")
    await wait_status(client, keyed.json()["run_id"], "succeeded")
    random_id = str(uuid.uuid4())
    same = {"X-Request-ID": "fixed-id"}

    # When bob asks for it in every way, and for a run that does not exist the same ways
    async def probes(rid: str) -> list[httpx.Response]:
        return [
            await bob.get(f"/runs/{rid}", headers=same),
            await bob.get(f"/runs/{rid}/events", headers=same),
            await bob.get(f"/runs/{rid}/events", headers={**same, "Last-Event-ID": "1"}),
            await bob.get(f"/runs/{rid}/events", params={"last_event_id": "2"}, headers=same),
            await bob.get(f"/runs/{rid}/events_url", headers=same),
            await bob.post(f"/runs/{rid}/cancel", headers=same),
        ]

    theirs, missing = await probes(run_id), await probes(random_id)

    # Then every answer is a 404, byte for byte the same as for a random id
    assert [r.status_code for r in theirs] == [404] * 6
    assert [_comparable(r) for r in theirs] == [_comparable(r) for r in missing]
    # And lists and their filters show bob nothing of alice's
    assert (await bob.get("/runs")).json()["runs"] == []
    assert (await bob.get("/runs", params={"thread_id": "t-alice"})).json()["runs"] == []
    assert (await bob.get("/runs", params={"status": "succeeded"})).json()["runs"] == []
    # And alice's idempotency key is alice's: bob's use of it makes bob a new run
    mine = await bob.post("/runs", json=body, headers={"Idempotency-Key": "alice-key"})
    assert mine.status_code == 202
    assert "idempotent-replayed" not in mine.headers
    assert mine.json()["run_id"] != keyed.json()["run_id"]
    await wait_status(bob, mine.json()["run_id"], "succeeded")


async def test_a_revoked_key_is_refused_on_the_very_next_request(client, store, settings):
    # Given a key that has just been used (so the API has it cached)
    key_id, key = await store.users.create_key("carol")
    async with httpx.AsyncClient(
        base_url=str(client.base_url), headers={"Authorization": f"Bearer {key}"}
    ) as carol:
        assert (await carol.get("/runs")).status_code == 200
        # When it is revoked
        assert await revoke_key(settings, key_id)
        # Then the next request is a 401, without waiting for the cache
        resp = await carol.get("/runs")
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"
    assert (await client.get("/runs")).status_code == 200  # other keys are unaffected


def _jwt_claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "dave",
        "aud": "longrun-test",
        "iss": "https://issuer.test",
        "exp": now + 60,
        "iat": now,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


async def test_jwts_signed_with_the_secret_name_the_user_and_bad_ones_are_401(
    api_factory, settings
):
    srv = await api_factory(
        settings.with_(
            jwt_secret=JWT_SECRET, jwt_audience="longrun-test", jwt_issuer="https://issuer.test"
        )
    )
    good = jwt.encode(_jwt_claims(), JWT_SECRET, algorithm="HS256")
    bad = {
        "expired": jwt.encode(_jwt_claims(exp=int(time.time()) - 120), JWT_SECRET, "HS256"),
        "wrong audience": jwt.encode(_jwt_claims(aud="someone-else"), JWT_SECRET, "HS256"),
        "wrong issuer": jwt.encode(_jwt_claims(iss="https://evil.test"), JWT_SECRET, "HS256"),
        "no exp": jwt.encode(_jwt_claims(exp=None), JWT_SECRET, "HS256"),
        "wrong secret": jwt.encode(_jwt_claims(), "x" * 64, "HS256"),
        "alg none": jwt.encode(_jwt_claims(), None, algorithm="none"),
        "other hmac alg": jwt.encode(_jwt_claims(), JWT_SECRET, algorithm="HS512"),
    }
    async with httpx.AsyncClient(base_url=srv.url) as c:
        ok = await c.post(
            "/runs",
            json={"input": "x", "agent": "ticker"},
            headers={"Authorization": f"Bearer {good}"},
        )
        assert ok.status_code == 202, ok.text
        listed = await c.get("/runs", headers={"Authorization": f"Bearer {good}"})
        assert [r["run_id"] for r in listed.json()["runs"]] == [ok.json()["run_id"]]
        for why, token in bad.items():
            resp = await c.get("/runs", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, why
            assert token not in resp.text


async def test_an_hs256_token_signed_with_the_rsa_public_key_is_refused(
    api_factory, settings, tmp_path
):
    # Given an API that verifies RS256 tokens against a JWKS file
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    srv = await api_factory(
        settings.with_(
            jwt_jwks_file=str(jwks), jwt_audience="longrun-test", jwt_issuer="https://issuer.test"
        )
    )
    good = jwt.encode(_jwt_claims(), private, algorithm="RS256", headers={"kid": "k1"})
    # When a token claims HS256 and is "signed" with the public key's bytes (HS/RS confusion)
    public_pem = private.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()
    )
    payload = jwt.utils.base64url_encode(json.dumps(_jwt_claims()).encode())
    signing_input = header + b"." + payload
    sig = jwt.utils.base64url_encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    confused = (signing_input + b"." + sig).decode()
    async with httpx.AsyncClient(base_url=srv.url) as c:
        ok = await c.get("/runs", headers={"Authorization": f"Bearer {good}"})
        refused = await c.get("/runs", headers={"Authorization": f"Bearer {confused}"})
    # Then the genuine RS256 token works and the confused one is a 401
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 401


async def test_events_url_streams_without_the_api_key(client, worker, api):
    body = {"input": "x", "agent": "ticker", "params": {"count": 3}}
    url = (await client.post("/runs", json=body)).json()["events_url"]

    # no Authorization header at all
    async with httpx.AsyncClient(timeout=10) as anon, anon.stream("GET", url) as stream:
        assert stream.status_code == 200
        body = (await stream.aread()).decode()
    assert body.count("event: token") == 3
    assert "event: done" in body


async def test_a_stream_token_is_refused_for_another_run_and_when_expired(client, settings, api):
    mine = await submit(client, agent="ticker")
    other = await submit(client, agent="ticker")
    await client.post(f"/runs/{mine}/cancel")  # so that its stream ends
    url = (await client.get(f"/runs/{mine}/events_url")).json()["events_url"]
    token = parse_qs(urlsplit(url).query)["token"][0]
    secret = api.server.config.app.state.security.stream_secret
    expired = tokens.mint(secret, mine, "alice", time.time() - 3600, 60)

    async with httpx.AsyncClient(base_url=api.url, timeout=10) as anon:
        for_other = await anon.get(f"/runs/{other}/events", params={"token": token})
        forged = await anon.get(f"/runs/{mine}/events", params={"token": token[:-2] + "xx"})
        old = await anon.get(f"/runs/{mine}/events", params={"token": expired})
        # A browser (Accept: text/event-stream) is told in a way its page can detect
        async with anon.stream(
            "GET",
            f"/runs/{mine}/events",
            params={"token": expired},
            headers={"Accept": "text/event-stream"},
        ) as browser:
            browser_body = (await browser.aread()).decode()
            browser_status = browser.status_code

    assert (for_other.status_code, for_other.json()["error"]) == (401, "invalid_stream_token")
    assert (forged.status_code, forged.json()["error"]) == (401, "invalid_stream_token")
    assert (old.status_code, old.json()["error"]) == (401, "stream_token_expired")
    assert browser_status == 200
    assert "event: stream_token_expired" in browser_body
    assert "\nid:" not in browser_body
    assert not browser_body.startswith("id:")
    assert f"/runs/{mine}/events_url" in browser_body
    # And the way back: a fresh events_url from the API key works
    fresh = (await client.get(f"/runs/{mine}/events_url")).json()
    assert fresh["expires_at"] > time.time()
    async with httpx.AsyncClient(timeout=10) as anon2:
        again = await anon2.get(fresh["events_url"])
    assert again.status_code == 200
    assert "event: cancelled" in again.text


def test_stream_tokens_are_bound_to_run_and_time():
    secret = b"k" * 32
    tok = tokens.mint(secret, "run-a", "alice", now=1000, ttl_seconds=60)

    assert tokens.verify(secret, tok, "run-a", now=1059).user_id == "alice"
    with pytest.raises(tokens.TokenRefused) as expired:
        tokens.verify(secret, tok, "run-a", now=1060)
    assert expired.value.problem is tokens.TokenProblem.EXPIRED
    for bad_run, bad_secret, bad_tok in [
        ("run-b", secret, tok),
        ("run-a", b"j" * 32, tok),
        ("run-a", secret, tok.replace(".", "")),
        ("run-a", secret, "." + tok),
        ("run-a", secret, "not base64!.x"),
    ]:
        with pytest.raises(tokens.TokenRefused) as refused:
            tokens.verify(bad_secret, bad_tok, bad_run, now=1000)
        assert refused.value.problem is tokens.TokenProblem.INVALID


async def test_every_answer_carries_a_request_id_and_errors_quote_it(client, api):
    given = await client.get("/runs/not-a-uuid", headers={"X-Request-ID": "my-trace-1"})
    generated = await client.get("/runs")
    hostile = await client.get("/health", headers={"X-Request-ID": "a b\tc" + "x" * 300})

    assert given.headers["x-request-id"] == "my-trace-1"
    assert given.json() == {
        "error": "invalid_run_id",
        "detail": "run ids are UUIDs",
        "request_id": "my-trace-1",
    }
    assert len(generated.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "a b\tc" + "x" * 300
    async with httpx.AsyncClient(base_url=api.url) as anon:
        unauth = await anon.get("/runs", headers={"X-Request-ID": "r-401"})
    assert unauth.json()["request_id"] == "r-401"


async def test_the_request_id_is_bound_into_log_lines(client):
    # Given a request whose handling logs a line (a refused stream token is logged as such)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await client.get(
            "/runs", headers={"X-Request-ID": "trace-77", "Authorization": "Bearer lr_bad"}
        )
    # Then that line carries the request's id
    assert logs, "expected a log line"
    assert {entry.get("request_id") for entry in logs} == {"trace-77"}


async def test_cors_is_off_by_default_and_on_for_configured_origins(api, api_factory, settings):
    async with httpx.AsyncClient(base_url=api.url) as c:
        off = await c.options(
            "/runs",
            headers={"Origin": "https://app.test", "Access-Control-Request-Method": "POST"},
        )
    assert "access-control-allow-origin" not in off.headers

    srv = await api_factory(settings.with_(cors_origins=("https://app.test",)))
    async with httpx.AsyncClient(base_url=srv.url) as c:
        pre = await c.options(
            "/runs",
            headers={
                "Origin": "https://app.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,idempotency-key",
            },
        )
        other = await c.get("/health", headers={"Origin": "https://evil.test"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.test"
    assert "access-control-allow-origin" not in other.headers


async def test_oversized_request_heads_are_refused_by_both_http_implementations(settings):
    import uvicorn

    from api.app import create_app
    from tests.conftest import free_port

    small = settings.with_(max_header_bytes=4096)
    for impl in ("httptools", "h11"):
        port = free_port()
        opts = server_options(small)
        if impl == "h11":
            opts["http"] = "h11"
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(small),
                host="127.0.0.1",
                port=port,
                log_config=None,
                access_log=False,
                lifespan="on",
                **opts,
            )
        )
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                fine = await c.get("/health", headers={"X-Pad": "p" * 1000})
                try:
                    huge = await c.get("/health", headers={"X-Pad": "p" * 200_000})
                    status = huge.status_code
                except httpx.RemoteProtocolError:
                    status = 0  # closed without an answer: refused all the same
            assert fine.status_code == 200, impl
            assert status in ((431,) if impl == "httptools" else (400, 431, 0)), (impl, status)
        finally:
            server.should_exit = True
            await task


async def test_stream_tokens_never_reach_a_log_line_even_with_access_logs_on(
    settings, api_key, client, capfd, caplog
):
    import logging

    import uvicorn

    from api.app import create_app
    from tests.conftest import free_port

    # Given a server whose deployment turned uvicorn's access log on
    caplog.set_level(logging.DEBUG)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=True,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
        ) as c:
            run_id = await submit(c, agent="ticker", params={"count": 0})
            await c.post(f"/runs/{run_id}/cancel")
            url = (await c.get(f"/runs/{run_id}/events_url")).json()["events_url"]
            token = parse_qs(urlsplit(url).query)["token"][0]
            other = await submit(c, agent="ticker", params={"count": 0})
        secret = server.config.app.state.security.stream_secret
        expired = tokens.mint(secret, run_id, "alice", time.time() - 3600, 60)
        # When the tokens are used, refused for another run, expired and mangled
        async with httpx.AsyncClient(base_url=base, timeout=10) as anon:
            ok = await anon.get(url)
            wrong_run = await anon.get(f"/runs/{other}/events", params={"token": token})
            old = await anon.get(f"/runs/{run_id}/events", params={"token": expired})
            bad = await anon.get(f"/runs/{run_id}/events", params={"token": token + "x"})
    finally:
        server.should_exit = True
        await task

    assert [r.status_code for r in (ok, wrong_run, old, bad)] == [200, 401, 401, 401]
    # Then the access log ran, and no line holds a token
    out = capfd.readouterr()
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    lines = [r.getMessage() for r in server_records] + (out.out + out.err).splitlines()
    assert any("/events?token=[redacted]" in line for line in lines), lines[-20:]
    for t in (token, expired, token + "x"):
        assert not [line for line in lines if t in line]
    for r in (wrong_run, old, bad):
        assert token not in r.text
        assert expired not in r.text


async def test_es256_tokens_from_a_jwks_file_name_the_user_by_the_configured_claim(
    api_factory, settings, tmp_path
):
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="ec1", alg="ES256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    srv = await api_factory(
        settings.with_(
            jwt_jwks_file=str(jwks),
            jwt_algorithm="ES256",
            jwt_audience="longrun-test",
            jwt_issuer="https://issuer.test",
            jwt_user_claim="email",
        )
    )
    good = jwt.encode(
        _jwt_claims(email="erin@example.test"), private, "ES256", headers={"kid": "ec1"}
    )
    no_claim = jwt.encode(_jwt_claims(), private, "ES256", headers={"kid": "ec1"})
    unknown_kid = jwt.encode(
        _jwt_claims(email="erin@example.test"), private, "ES256", headers={"kid": "other"}
    )
    async with httpx.AsyncClient(base_url=srv.url) as c:
        made = await c.post(
            "/runs",
            json={"input": "x", "agent": "ticker"},
            headers={"Authorization": f"Bearer {good}"},
        )
        codes = [
            (await c.get("/runs", headers={"Authorization": f"Bearer {t}"})).status_code
            for t in (no_claim, unknown_kid)
        ]
    assert made.status_code == 202, made.text
    assert codes == [401, 401]
    state = srv.server.config.app.state.longrun
    run = await state.store.runs.get_run(made.json()["run_id"])
    assert run.user_id == "jwt:https://issuer.test:erin@example.test"  # namespaced by issuer


def test_half_configured_jwt_auth_fails_at_start_up(settings):
    from api.jwt_auth import JwtVerifier
    from shared.errors import ConfigError

    for bad in (
        settings.with_(jwt_secret=JWT_SECRET),  # no audience/issuer
        settings.with_(jwt_secret="short", jwt_audience="a", jwt_issuer="i"),
        settings.with_(
            jwt_secret=JWT_SECRET, jwt_audience="a", jwt_issuer="i", jwt_algorithm="RS256"
        ),
    ):
        with pytest.raises(ConfigError):
            JwtVerifier.from_settings(bad)
