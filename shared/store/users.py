"""Per-user rows of the store: API keys (stored as digests only) and the daily spend ledger
(`UserRepo` is the agent loop's `SpendLedger`, shared by every worker).

User ids beginning `jwt:` are reserved for JWT callers (`jwt:<issuer>:<subject>`, see
`api.jwt_auth`): no API key is made for one, so a JWT can never name an API-key user."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection

from shared.errors import BadRequest
from shared.store.pool import Database
from shared.store.rows import ActiveKey, ApiKey, active_key_of, api_key_of

KEY_PREFIX = "lr_"
JWT_USER_PREFIX = "jwt:"


def hash_key(key: str) -> bytes:
    """API keys are 256-bit random: a plain SHA-256 is enough (no brute force to slow down)."""
    return hashlib.sha256(key.encode()).digest()


def new_api_key() -> tuple[str, str]:
    """(key_id, key). The key id is the public, loggable part; the key is shown once."""
    key_id = KEY_PREFIX + secrets.token_hex(4)
    return key_id, f"{key_id}_{secrets.token_urlsafe(32)}"


class UserRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- keys --------------------------------------------------------------------------------
    async def create_key(
        self,
        user_id: str,
        name: str | None = None,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        operator: bool = False,
        retention_days: int | None = None,
        max_priority: str = "normal",
    ) -> tuple[str, str]:
        """A new key (key_id, key). `webhook_secret` signs the webhooks of the runs it submits
        (a key without one cannot ask for webhooks until it is given one); `webhook_url` is
        their default target. An `operator` key sees the whole deployment (`/ops`).
        `retention_days` overrides `LONGRUN_RETENTION_DAYS` for the runs it submits (0: kept
        forever). Its runs may ask for priorities up to `max_priority`."""
        if user_id.startswith(JWT_USER_PREFIX):
            raise BadRequest(f"user ids beginning {JWT_USER_PREFIX!r} are reserved for JWT callers")
        key_id, key = new_api_key()
        await self.db.execute(
            "INSERT INTO api_keys (key_id, user_id, key_hash, name, webhook_url, webhook_secret,"
            " operator, retention_days, max_priority) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            key_id,
            user_id,
            hash_key(key),
            name,
            webhook_url,
            webhook_secret,
            operator,
            retention_days,
            max_priority,
        )
        return key_id, key

    async def signs_webhooks(self, key_id: str) -> bool:
        """Whether the key has a webhook secret (and so may ask for webhooks)."""
        found = await self.db.fetchval(
            "SELECT 1 FROM api_keys WHERE key_id = $1 AND webhook_secret IS NOT NULL", key_id
        )
        return found is not None

    async def user_for_key(self, key: str) -> str | None:
        """The user owning an unrevoked key, or None. Looked up by hash: the comparison
        happens inside Postgres' unique index on a digest, so no timing reveals a prefix."""
        user: str | None = await self.db.fetchval(
            "SELECT user_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_key(key),
        )
        return user

    async def active_key(self, key: str) -> ActiveKey | None:
        """The unrevoked key `key` is, or None (looked up by hash, as `user_for_key`)."""
        row = await self.db.fetchrow(
            "SELECT key_id, user_id, operator, max_priority FROM api_keys "
            "WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_key(key),
        )
        return None if row is None else active_key_of(row)

    async def active_key_ids(self, key_ids: Collection[str]) -> set[str]:
        """Which of `key_ids` name unrevoked keys (a revoked or unknown id is left out)."""
        rows = await self.db.fetch(
            "SELECT key_id FROM api_keys WHERE key_id = ANY($1::text[]) AND revoked_at IS NULL",
            list(key_ids),
        )
        return {r["key_id"] for r in rows}

    async def revoke_key(self, key_id: str) -> bool:
        done = await self.db.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
            key_id,
        )
        return bool(done.endswith(" 1"))

    async def list_keys(self, user_id: str | None = None) -> list[ApiKey]:
        rows = await self.db.fetch(
            "SELECT key_id, user_id, name, created_at, revoked_at FROM api_keys "
            "WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at",
            user_id,
        )
        return [api_key_of(r) for r in rows]

    # -- spend -------------------------------------------------------------------------------
    async def spent_today(self, user_id: str) -> float:
        usd = await self.db.fetchval(
            "SELECT usd FROM user_daily_spend WHERE user_id = $1 "
            "AND day = (now() AT TIME ZONE 'utc')::date",
            user_id,
        )
        return float(usd or 0.0)

    async def add_spend(self, user_id: str, usd: float) -> None:
        await self.db.execute(
            """INSERT INTO user_daily_spend (user_id, day, usd)
               VALUES ($1, (now() AT TIME ZONE 'utc')::date, $2)
               ON CONFLICT (user_id, day) DO UPDATE SET usd = user_daily_spend.usd + $2""",
            user_id,
            usd,
        )
