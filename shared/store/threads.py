"""Thread rows of the store: a thread's conversation history, its queue order and its busy
state. Runs of one thread are ordered by (created_at, run_id)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from shared.store.pool import Database
from shared.store.rows import chat_message_of, thread_message_of


class ThreadRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def next_of_thread(self, c: asyncpg.Connection, run_id: str) -> str | None:
        """The oldest queued run of `run_id`'s thread (to enqueue when this one ends)."""
        nxt = await c.fetchval(
            """SELECT q.run_id FROM runs r JOIN runs q
                 ON q.user_id = r.user_id AND q.thread_id = r.thread_id
               WHERE r.run_id = $1 AND r.thread_id IS NOT NULL AND q.status = 'queued'
               ORDER BY q.created_at, q.run_id LIMIT 1""",
            uuid.UUID(run_id),
        )
        return None if nxt is None else str(nxt)

    async def add_messages(
        self, c: asyncpg.Connection, run_id: str, messages: Sequence[dict[str, Any]]
    ) -> None:
        """Append a run's new messages to its thread, on `c` (the run's terminal transaction)."""
        head = await c.fetchrow(
            """SELECT r.user_id, r.thread_id,
                      coalesce((SELECT max(seq) FROM thread_messages m
                                WHERE m.user_id = r.user_id AND m.thread_id = r.thread_id), 0)
                      AS last
               FROM runs r WHERE r.run_id = $1 AND r.thread_id IS NOT NULL""",
            uuid.UUID(run_id),
        )
        if head is None:
            return
        await c.executemany(
            "INSERT INTO thread_messages (user_id, thread_id, seq, run_id, role, content) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (
                    head["user_id"],
                    head["thread_id"],
                    head["last"] + i + 1,
                    uuid.UUID(run_id),
                    str(m.get("role", "user")),
                    m.get("content"),
                )
                for i, m in enumerate(messages)
            ],
        )

    async def thread_messages(
        self, user_id: str, thread_id: str, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT seq, run_id, role, content, created_at FROM thread_messages "
            "WHERE user_id = $1 AND thread_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            user_id,
            thread_id,
            after,
            limit,
        )
        return [thread_message_of(r) for r in rows]

    async def thread_active_runs(self, user_id: str, thread_id: str) -> list[tuple[str, str]]:
        """(run_id, status) of the thread's queued, running and waiting runs."""
        rows = await self.db.fetch(
            "SELECT run_id, status FROM runs WHERE user_id = $1 AND thread_id = $2 "
            "AND status IN ('queued', 'running', 'waiting') ORDER BY created_at",
            user_id,
            thread_id,
        )
        return [(str(r["run_id"]), r["status"]) for r in rows]

    async def thread_exists(self, user_id: str, thread_id: str) -> bool:
        found = await self.db.fetchval(
            "SELECT 1 FROM runs WHERE user_id = $1 AND thread_id = $2 LIMIT 1",
            user_id,
            thread_id,
        )
        return found is not None

    async def recent_thread_messages(
        self, user_id: str, thread_id: str, limit: int
    ) -> list[dict[str, Any]]:
        """The newest `limit` messages of a thread, oldest first."""
        rows = await self.db.fetch(
            "SELECT role, content FROM (SELECT seq, role, content FROM thread_messages "
            "WHERE user_id = $1 AND thread_id = $2 ORDER BY seq DESC LIMIT $3) m "
            "ORDER BY seq",
            user_id,
            thread_id,
            limit,
        )
        return [chat_message_of(r) for r in rows]
