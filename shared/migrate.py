"""Versioned SQL migrations: `shared/migrations/NNNN_name.sql`, applied in order, each once.

`migrate()` is idempotent and safe when many processes start at once: it runs in one
transaction under a transaction-scoped advisory lock (released at commit even on a pooled
connection). `check_schema()` is what the API and workers call on start.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from shared.errors import SchemaOutdated

# Arbitrary constant: "longrun migrate" as a 64-bit advisory lock key.
_LOCK_KEY = 0x6C6F6E6772756E


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append(Migration(version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    return max(m.version for m in available())


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for m in available():
            if m.version in done:
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
            applied.append(m.name)
    return applied


async def create_database(admin: asyncpg.Connection, name: str) -> None:
    """Create the database `name` through `admin` (a connection to another database of the
    same server); one created concurrently meanwhile is fine."""
    quoted = '"' + name.replace('"', '""') + '"'
    with contextlib.suppress(asyncpg.DuplicateDatabaseError):
        await admin.execute(f"CREATE DATABASE {quoted}")


async def current_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def check_schema(conn: asyncpg.Connection) -> None:
    """Raise SchemaOutdated unless the database is at (or past) this code's schema version."""
    have, want = await current_version(conn), latest_version()
    if have < want:
        raise SchemaOutdated(
            f"database schema is at version {have}, this longrun needs {want}: "
            "run `longrun migrate` first"
        )
