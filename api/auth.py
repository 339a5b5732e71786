"""Who is calling: `Authorization: Bearer <API key or JWT>` names the user, or it is a 401.

API keys are looked up by their SHA-256 in Postgres (the comparison is a unique-index match on
a digest, so no timing reveals a prefix) and cached in-process for a few seconds, keyed by the
digest (the raw key is never kept). Revocation is immediate all the same: `longrun keys revoke`
bumps a key epoch in Redis after the revoking commit, and a cached entry is good only under the
epoch it was cached under. That is one `GET` per request; with Redis down the cache is skipped
and Postgres answers.

JWTs (optional, `api.jwt_auth`) carry their own expiry; they are told apart from API keys by
their shape.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

import structlog
from fastapi import Request

from api.admission import Admission
from api.errors import ApiError
from api.jwt_auth import JwtRefused, JwtVerifier, looks_like_jwt
from api.state import AppState
from shared.config import Settings
from shared.redis.client import REDIS_DOWN, Redis
from shared.redis.keys import Keys

log = structlog.get_logger("longrun.api.auth")

KEY_CACHE_SECONDS = 5.0
KEY_CACHE_MAX = 10_000
MAX_CREDENTIAL_CHARS = 8192


@dataclass
class Security:
    """Per-process security state, built once in the lifespan."""

    settings: Settings
    keys: Keys
    admission: Admission
    stream_secret: bytes
    jwt: JwtVerifier | None = None
    key_cache: dict[bytes, tuple[str, float, bytes | None]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, keys: Keys, r: Redis) -> Security:
        if settings.stream_token_secret:
            secret = settings.stream_token_secret.encode()
        else:
            secret = secrets.token_bytes(32)
            log.warning(
                "stream_token_secret_generated",
                note="set LONGRUN_STREAM_TOKEN_SECRET when running more than one API process",
            )
        return cls(
            settings=settings,
            keys=keys,
            admission=Admission(r, keys, settings),
            stream_secret=secret,
            jwt=JwtVerifier.from_settings(settings),
        )


def security(request: Request) -> Security:
    sec: Security = request.app.state.security
    return sec


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("send an API key as Authorization: Bearer <key>")
    if len(token) > MAX_CREDENTIAL_CHARS:
        raise unauthorized("unknown or revoked API key")
    return token


async def _epoch(sec: Security) -> bytes | None:
    try:
        return await sec.admission.key_epoch()
    except REDIS_DOWN:
        return None


async def user_for_key(request: Request, sec: Security, key: str) -> str:
    state: AppState = request.app.state.longrun
    digest = hashlib.sha256(key.encode()).digest()
    now = time.monotonic()
    epoch = await _epoch(sec)
    cached = sec.key_cache.get(digest)
    if (
        cached is not None
        and epoch is not None
        and cached[1] > now
        and cached[2] is not None
        and hmac.compare_digest(cached[2], epoch)
    ):
        return cached[0]
    user = await state.store.users.user_for_key(key)
    if user is None:
        sec.key_cache.pop(digest, None)
        log.info("api_key_refused")  # never the key, not even its prefix
        raise unauthorized("unknown or revoked API key")
    if len(sec.key_cache) >= KEY_CACHE_MAX:
        sec.key_cache.clear()
    sec.key_cache[digest] = (user, now + KEY_CACHE_SECONDS, epoch)
    return user


@dataclass(frozen=True)
class Principal:
    user: str
    # A cached API-key look-up's epoch, for the caller to confirm against the current epoch
    # (grouped submits read it once per group); None when already confirmed in this request.
    epoch: bytes | None


def cached_principal(sec: Security, token: str) -> Principal | None:
    """Who a bearer token names without any I/O: a valid JWT, or an API key whose look-up is
    cached (its `epoch` still to be confirmed). None: ask `current_user`."""
    if sec.jwt is not None and looks_like_jwt(token):
        try:
            return Principal(sec.jwt.user(token), None)
        except JwtRefused:
            return None
    if len(token) > MAX_CREDENTIAL_CHARS:
        return None
    cached = sec.key_cache.get(hashlib.sha256(token.encode()).digest())
    if cached is not None and cached[1] > time.monotonic() and cached[2] is not None:
        return Principal(cached[0], cached[2])
    return None


async def submit_principal(request: Request) -> Principal:
    """`current_user` without the per-request epoch `GET` when the key's look-up is cached:
    the caller must confirm `epoch` (see `api.submit_batch`)."""
    sec = security(request)
    found = cached_principal(sec, _bearer(request))
    return found if found is not None else Principal(await current_user(request), None)


async def current_user(request: Request) -> str:
    sec = security(request)
    token = _bearer(request)
    if sec.jwt is not None and looks_like_jwt(token):
        try:
            return sec.jwt.user(token)
        except JwtRefused as exc:
            log.info("jwt_refused", reason=str(exc))
            raise unauthorized("invalid or expired token") from None
    return await user_for_key(request, sec, token)
