"""Who is calling: `Authorization: Bearer <API key or JWT>` names the user, or it is a 401.

API keys are looked up by their SHA-256 in Postgres (the comparison is a unique-index match on
a digest, so no timing reveals a prefix) and cached in-process for a few seconds, keyed by the
digest (the raw key is never kept). Revocation is immediate all the same: `longrun keys revoke`
bumps a key epoch in Redis after the revoking commit, and a cached entry is good only under the
epoch it was cached under. That is one `GET` per request; with Redis down the cache is skipped
and Postgres answers.

Revocation also ends what the key opened: its event streams, and the `events_url` tokens it
minted (they carry its key id; a stream connecting with one checks the key like a request does).
`api.revocation` ends open streams within 2 seconds.

JWTs (optional, `api.jwt_auth`) carry their own expiry; they are told apart from API keys by
their shape. A JWT's user is `jwt:<issuer>:<claim>`, apart from every API-key user.

Each authentication leaves its `Principal` in the request's scope, for the stream tokens the
answer mints (`Security.stream_token`): they carry the key id, and never outlive a JWT.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog
from fastapi import Request

from api import tokens
from api.admission import Admission
from api.errors import ApiError
from api.jwt_auth import JwtRefused, JwtVerifier, looks_like_jwt
from api.revocation import RECHECK_SECONDS, Revocations
from api.state import AppState
from shared.config import Settings
from shared.redis.client import REDIS_DOWN, Redis
from shared.redis.keys import Keys
from shared.store import Store

log = structlog.get_logger("longrun.api.auth")

KEY_CACHE_SECONDS = RECHECK_SECONDS
KEY_CACHE_MAX = 10_000
MAX_CREDENTIAL_CHARS = 8192
PRINCIPAL = "longrun.principal"  # the scope entry an authentication leaves


class CachedKey(NamedTuple):
    user: str
    key_id: str
    until: float  # monotonic
    epoch: bytes | None  # the key epoch it was looked up under (None: Redis did not answer)
    operator: bool = False  # an operator's key (`longrun keys create --operator`)
    max_priority: str = "normal"  # the highest priority its runs may ask for


@dataclass(frozen=True)
class Principal:
    user: str
    # A cached API-key look-up's epoch, for the caller to confirm against the current epoch
    # (grouped submits read it once per group); None when already confirmed in this request.
    epoch: bytes | None
    key_id: str | None = None  # the API key that authenticated; None for a JWT
    # The key epoch under which the key was found active in this request (None: Redis did not
    # answer, or not confirmed yet): where `api.revocation` starts watching a stream's key.
    checked: bytes | None = None
    expires_at: int | None = None  # a JWT's `exp`; None for an API key (good until revoked)
    operator: bool = False  # an operator's API key: the `/ops` endpoints answer it (`api.ops`)
    # The highest priority the caller's runs may ask for (`longrun keys create --max-priority`;
    # a JWT caller: normal).
    max_priority: str = "normal"


@dataclass
class Security:
    """Per-process security state, built once in the lifespan."""

    settings: Settings
    keys: Keys
    admission: Admission
    stream_secret: bytes
    revocations: Revocations
    jwt: JwtVerifier | None = None
    key_cache: dict[bytes, CachedKey] = field(default_factory=dict)
    # key id -> (monotonic until, epoch): an API key found active (for stream tokens)
    key_id_cache: dict[str, tuple[float, bytes | None]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, keys: Keys, r: Redis, store: Store) -> Security:
        if settings.stream_token_secret:
            secret = settings.stream_token_secret.encode()
        else:
            secret = secrets.token_bytes(32)
            log.warning(
                "stream_token_secret_generated",
                note="set LONGRUN_STREAM_TOKEN_SECRET when running more than one API process",
            )
        admission = Admission(r, keys, settings)
        return cls(
            settings=settings,
            keys=keys,
            admission=admission,
            stream_secret=secret,
            revocations=Revocations(admission.key_epoch, store.users.active_key_ids),
            jwt=JwtVerifier.from_settings(settings),
        )

    def stream_token(self, run_id: str, who: Principal, now: float) -> tuple[str, int]:
        """A stream token for `run_id` minted by `who`, and its expiry (unix seconds)."""
        ttl = self.settings.stream_token_ttl_seconds
        token = tokens.mint(
            self.stream_secret, run_id, who.user, now, ttl, who.key_id, who.expires_at
        )
        return token, tokens.expiry(now, ttl, who.expires_at)


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


async def key_principal(request: Request, sec: Security, key: str) -> Principal:
    state: AppState = request.app.state.longrun
    digest = hashlib.sha256(key.encode()).digest()
    now = time.monotonic()
    epoch = await _epoch(sec)
    cached = sec.key_cache.get(digest)
    if (
        cached is not None
        and epoch is not None
        and cached.until > now
        and cached.epoch is not None
        and hmac.compare_digest(cached.epoch, epoch)
    ):
        return Principal(
            cached.user,
            None,
            cached.key_id,
            epoch,
            operator=cached.operator,
            max_priority=cached.max_priority,
        )
    found = await state.store.users.active_key(key)
    if found is None:
        sec.key_cache.pop(digest, None)
        log.info("api_key_refused")  # never the key, not even its prefix
        raise unauthorized("unknown or revoked API key")
    if len(sec.key_cache) >= KEY_CACHE_MAX:
        sec.key_cache.clear()
    sec.key_cache[digest] = CachedKey(
        found.user_id,
        found.key_id,
        now + KEY_CACHE_SECONDS,
        epoch,
        found.operator,
        found.max_priority,
    )
    return Principal(
        found.user_id,
        None,
        found.key_id,
        epoch,
        operator=found.operator,
        max_priority=found.max_priority,
    )


async def key_id_checked(request: Request, sec: Security, key_id: str) -> bytes | None:
    """The key epoch under which the API key `key_id` (a stream token's minter) was found
    active, or a 401 `stream_token_revoked`. Cached like the key look-ups."""
    state: AppState = request.app.state.longrun
    now = time.monotonic()
    epoch = await _epoch(sec)
    cached = sec.key_id_cache.get(key_id)
    if (
        cached is not None
        and epoch is not None
        and cached[0] > now
        and cached[1] is not None
        and hmac.compare_digest(cached[1], epoch)
    ):
        return epoch
    if key_id not in await state.store.users.active_key_ids([key_id]):
        sec.key_id_cache.pop(key_id, None)
        log.info("stream_token_refused", problem=tokens.TokenProblem.REVOKED.value)
        raise ApiError(
            401, tokens.TokenProblem.REVOKED.value, "the API key that minted this token is revoked"
        )
    if len(sec.key_id_cache) >= KEY_CACHE_MAX:
        sec.key_id_cache.clear()
    sec.key_id_cache[key_id] = (now + KEY_CACHE_SECONDS, epoch)
    return epoch


def _jwt_principal(sec: Security, token: str) -> Principal:
    """JwtRefused for a bad token."""
    assert sec.jwt is not None
    found = sec.jwt.identity(token)
    return Principal(found.user, None, expires_at=found.expires_at)


def cached_principal(sec: Security, token: str) -> Principal | None:
    """Who a bearer token names without any I/O: a valid JWT, or an API key whose look-up is
    cached (its `epoch` still to be confirmed). None: ask `current_user`."""
    if sec.jwt is not None and looks_like_jwt(token):
        try:
            return _jwt_principal(sec, token)
        except JwtRefused:
            return None
    if len(token) > MAX_CREDENTIAL_CHARS:
        return None
    cached = sec.key_cache.get(hashlib.sha256(token.encode()).digest())
    if cached is not None and cached.until > time.monotonic() and cached.epoch is not None:
        return Principal(
            cached.user,
            cached.epoch,
            cached.key_id,
            operator=cached.operator,
            max_priority=cached.max_priority,
        )
    return None


def remember(request: Request, who: Principal) -> Principal:
    request.scope[PRINCIPAL] = who
    return who


def principal_of(request: Request, user: str) -> Principal:
    """The principal this request authenticated as (left by `authenticate` and
    `submit_principal`), which must be `user`: what a stream token for the answer is bound to."""
    who = request.scope.get(PRINCIPAL)
    if not isinstance(who, Principal) or who.user != user:
        raise RuntimeError("a stream token for a request not authenticated as its user")
    return who


async def submit_principal(request: Request) -> Principal:
    """`current_user` without the per-request epoch `GET` when the key's look-up is cached:
    the caller must confirm `epoch` (see `api.submit_batch`)."""
    sec = security(request)
    found = cached_principal(sec, _bearer(request))
    return remember(request, found) if found is not None else await authenticate(request)


async def authenticate(request: Request) -> Principal:
    """The caller, or a 401; left in the request's scope."""
    sec = security(request)
    token = _bearer(request)
    if sec.jwt is not None and looks_like_jwt(token):
        try:
            return remember(request, _jwt_principal(sec, token))
        except JwtRefused as exc:
            log.info("jwt_refused", reason=str(exc))
            raise unauthorized("invalid or expired token") from None
    return remember(request, await key_principal(request, sec, token))


async def current_user(request: Request) -> str:
    return (await authenticate(request)).user
