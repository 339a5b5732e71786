"""Stream tokens: what `events_url` carries so a browser's `EventSource` (which cannot send an
`Authorization` header) can follow one run without holding the API key.

A token is `<payload>.<mac>`, both base64url: the payload names the run, the user and the
expiry (unix seconds); the mac is HMAC-SHA256 over the payload with the stream-token secret.
It is good for that one run of that one user until it expires, and is checked when a stream
connects (an open stream is not cut at expiry; its lifetime is capped elsewhere).

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

VERSION = "1"


class TokenProblem(StrEnum):
    INVALID = "invalid_stream_token"  # forged, mangled, or for another run: not recoverable
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


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, f"{VERSION}.{payload}".encode("ascii"), hashlib.sha256).digest()


def mint(secret: bytes, run_id: str, user_id: str, now: float, ttl_seconds: int) -> str:
    payload = _b64(orjson.dumps({"r": run_id, "u": user_id, "e": int(now) + ttl_seconds}))
    return f"{payload}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str, run_id: str, now: float) -> StreamGrant:
    """The grant for `run_id`, or TokenRefused. The mac is compared in constant time, before
    anything in the payload is believed."""
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not mac or len(token) > 2048:
        raise TokenRefused(TokenProblem.INVALID)
    try:
        given = _unb64(mac)
        if not hmac.compare_digest(given, _mac(secret, payload)):
            raise TokenRefused(TokenProblem.INVALID)
        claims = orjson.loads(_unb64(payload))
        grant = StreamGrant(str(claims["r"]), str(claims["u"]), int(claims["e"]))
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise TokenRefused(TokenProblem.INVALID) from None
    if not hmac.compare_digest(grant.run_id.encode(), run_id.encode()):
        raise TokenRefused(TokenProblem.INVALID)
    if grant.expires_at <= now:
        raise TokenRefused(TokenProblem.EXPIRED)
    return grant
