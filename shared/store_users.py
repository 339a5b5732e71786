"""Per-user rows of the store: API keys (stored as digests only) and the daily spend ledger
(the agent loop's `SpendLedger`, shared by every worker).

User ids beginning `jwt:` are reserved for JWT callers (`jwt:<issuer>:<subject>`, see
`api.jwt_auth`): no API key is made for one, so a JWT can never name an API-key user."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from shared.errors import BadRequest
from shared.store_base import StoreBase

KEY_PREFIX = "lr_"
JWT_USER_PREFIX = "jwt:"


def hash_key(key: str) -> bytes:
    """API keys are 256-bit random: a plain SHA-256 is enough (no brute force to slow down)."""
    return hashlib.sha256(key.encode()).digest()


def new_api_key() -> tuple[str, str]:
    """(key_id, key). The key id is the public, loggable part; the key is shown once."""
    key_id = KEY_PREFIX + secrets.token_hex(4)
    return key_id, f"{key_id}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class ActiveKey:
    key_id: str
    user_id: str


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    user_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyQueries(StoreBase):
    # -- keys --------------------------------------------------------------------------------
    async def create_key(self, user_id: str, name: str | None = None) -> tuple[str, str]:
        if user_id.startswith(JWT_USER_PREFIX):
            raise BadRequest(f"user ids beginning {JWT_USER_PREFIX!r} are reserved for JWT callers")
        key_id, key = new_api_key()
        async with self.conn() as c:
            await c.execute(
                "INSERT INTO api_keys (key_id, user_id, key_hash, name) VALUES ($1, $2, $3, $4)",
                key_id,
                user_id,
                hash_key(key),
                name,
            )
        return key_id, key

    async def user_for_key(self, key: str) -> str | None:
        """The user owning an unrevoked key, or None. Looked up by hash: the comparison
        happens inside Postgres' unique index on a digest, so no timing reveals a prefix."""
        async with self.conn() as c:
            user: str | None = await c.fetchval(
                "SELECT user_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                hash_key(key),
            )
        return user

    async def active_key(self, key: str) -> ActiveKey | None:
        """The unrevoked key `key` is, or None (looked up by hash, as `user_for_key`)."""
        async with self.conn() as c:
            row = await c.fetchrow(
                "SELECT key_id, user_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                hash_key(key),
            )
        return None if row is None else ActiveKey(row["key_id"], row["user_id"])

    async def active_key_ids(self, key_ids: Collection[str]) -> set[str]:
        """Which of `key_ids` name unrevoked keys (a revoked or unknown id is left out)."""
        async with self.conn() as c:
            rows = await c.fetch(
                "SELECT key_id FROM api_keys WHERE key_id = ANY($1::text[]) AND revoked_at IS NULL",
                list(key_ids),
            )
        return {r["key_id"] for r in rows}

    async def revoke_key(self, key_id: str) -> bool:
        async with self.conn() as c:
            done = await c.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
                key_id,
            )
        return bool(done.endswith(" 1"))

    async def list_keys(self, user_id: str | None = None) -> list[ApiKey]:
        async with self.conn() as c:
            rows = await c.fetch(
                "SELECT key_id, user_id, name, created_at, revoked_at FROM api_keys "
                "WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at",
                user_id,
            )
        return [ApiKey(**dict(r)) for r in rows]


class SpendQueries(StoreBase):
    async def spent_today(self, user_id: str) -> float:
        async with self.conn() as c:
            usd = await c.fetchval(
                "SELECT usd FROM user_daily_spend WHERE user_id = $1 "
                "AND day = (now() AT TIME ZONE 'utc')::date",
                user_id,
            )
        return float(usd or 0.0)

    async def add_spend(self, user_id: str, usd: float) -> None:
        async with self.conn() as c:
            await c.execute(
                """INSERT INTO user_daily_spend (user_id, day, usd)
                   VALUES ($1, (now() AT TIME ZONE 'utc')::date, $2)
                   ON CONFLICT (user_id, day) DO UPDATE SET usd = user_daily_spend.usd + $2""",
                user_id,
                usd,
            )
