"""Stream tokens: what `events_url` carries so a browser's `EventSource` (which cannot send an
`Authorization` header) can follow one run without holding the API key.

A token is `<payload>.<mac>`, both base64url: the payload names the run, the user, the API
key that minted it (`k`: its key id, null when a JWT did) and the expiry (unix seconds); the mac
is HMAC-SHA256 over the version and the payload with the stream-token secret. It is good for
that one run of that one user until it expires, and is checked when a stream connects (an open
stream is not cut at expiry; its lifetime is capped elsewhere). Revoking the minting key ends it
sooner: the API checks the key id when a stream connects and while it is open
(`api.revocation`). A token never outlives the credential that minted it (`not_after`: a JWT's
`exp`). Version 2 added the key id. Version-1 tokens (minted before the upgrade, naming no
key) are still good until they expire, at most `LONGRUN_STREAM_TOKEN_TTL_SECONDS` after the
upgrade, so pages following a run across a rolling upgrade are not cut off; no revocation
reaches them.

Every API process must verify with the same secret: set `LONGRUN_STREAM_TOKEN_SECRET` in a
deployment with more than one API process (`longrun dev` generates one per run). Unset, each
process generates its own, and a token minted by one process is refused by the others.

Pure functions of (secret, token, run, now): no I/O, no clock of their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

import orjson

VERSION = "2"
LEGACY_VERSION = "1"  # no key id


class TokenProblem(StrEnum):
    INVALID = "invalid_stream_token"  # forged, mangled, or for another run: not recoverable
    REVOKED = "stream_token_revoked"  # the API key that minted it was revoked
    EXPIRED = "stream_token_expired"  # authentic but old: mint a fresh one


class TokenRefused(Exception):
    def __init__(self, problem: TokenProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


@dataclass(frozen=True)
class StreamGrant:
    run_id: str
    user_id: str
    expires_at: int
    key_id: str | None = None  # the API key that minted the token; None: a JWT did


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str, version: str = VERSION) -> bytes:
    return hmac.new(secret, f"{version}.{payload}".encode("ascii"), hashlib.sha256).digest()


def expiry(now: float, ttl_seconds: int, not_after: int | None = None) -> int:
    """When a token minted at `now` expires: after `ttl_seconds`, or at `not_after` if sooner."""
    expires_at = int(now) + ttl_seconds
    return expires_at if not_after is None else min(expires_at, not_after)


def mint(
    secret: bytes,
    run_id: str,
    user_id: str,
    now: float,
    ttl_seconds: int,
    key_id: str | None = None,
    not_after: int | None = None,
) -> str:
    claims = {"r": run_id, "u": user_id, "k": key_id, "e": expiry(now, ttl_seconds, not_after)}
    payload = _b64(orjson.dumps(claims))
    return f"{payload}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str, run_id: str, now: float) -> StreamGrant:
    """The grant for `run_id`, or TokenRefused. The mac is compared in constant time, before
    anything in the payload is believed."""
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not mac or len(token) > 2048:
        raise TokenRefused(TokenProblem.INVALID)
    try:
        given = _unb64(mac)
        legacy = False
        if not hmac.compare_digest(given, _mac(secret, payload)):
            legacy = hmac.compare_digest(given, _mac(secret, payload, LEGACY_VERSION))
            if not legacy:
                raise TokenRefused(TokenProblem.INVALID)
        claims = orjson.loads(_unb64(payload))
        if legacy and "k" in claims:  # no version-1 token ever named a key
            raise TokenRefused(TokenProblem.INVALID)
        key_id = None if legacy else claims["k"]
        grant = StreamGrant(
            str(claims["r"]),
            str(claims["u"]),
            int(claims["e"]),
            None if key_id is None else str(key_id),
        )
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise TokenRefused(TokenProblem.INVALID) from None
    if not hmac.compare_digest(grant.run_id.encode(), run_id.encode()):
        raise TokenRefused(TokenProblem.INVALID)
    if grant.expires_at <= now:
        raise TokenRefused(TokenProblem.EXPIRED)
    return grant
