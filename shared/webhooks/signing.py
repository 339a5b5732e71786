"""The Standard Webhooks signature: `webhook-id`, `webhook-timestamp` (integer unix seconds) and
`webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` over
`{id}.{timestamp}.{body}`, keyed with the secret's bytes. Secrets are shown to users as
`whsec_` + base64 of 32 random bytes (the spec asks for 24 to 64).

A rotated key signs with its new secret and, for `ROTATION_GRACE_SECONDS` after the rotation,
with its previous one too, so a receiver still configured with the old secret verifies every
webhook until it is updated (the spec's zero-downtime rotation)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime

SECRET_PREFIX = "whsec_"  # noqa: S105  (the spec's marker, not a secret)
SECRET_BYTES = 32
ROTATION_GRACE_SECONDS = 24 * 3600


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_` secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,` signature of a message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signing_secrets(
    current: str, previous: str | None, rotated_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets a message is signed with: the current one, and the previous one while the
    rotation's grace lasts."""
    if previous is None or rotated_at is None:
        return [current]
    if (now - rotated_at).total_seconds() >= ROTATION_GRACE_SECONDS:
        return [current]
    return [current, previous]


def headers(keys: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(k, msg_id, timestamp, body) for k in keys),
    }
