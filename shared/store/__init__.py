"""Postgres, the truth, and every statement longrun sends it. `Store` is a facade composed of
repositories, one per concern, each a plain object holding the shared `Database` (the pool):

    store.runs     one run: reads, cancels, an attempt's fenced writes      (runs.py)
    store.batches  the worker's many-run claims and terminal commits        (batches.py)
    store.events   an attempt's event appends, fenced on attempt and seq    (events.py)
    store.submits  the submit transaction: idempotency, the in-flight cap   (submits.py)
    store.threads  a thread's messages and queue order                      (threads.py)
    store.interrupts  a run's waits for a person: wait, resume, deadlines    (interrupts.py)
    store.users    API keys and the daily spend ledger                      (users.py)
    store.ops      dead-letter retries and the figures of `/metrics`        (ops.py)
    store.webhooks webhook deliveries and attempts; secrets rotated       (webhooks.py)
    store.schedules  cron schedules and the tick that makes their runs    (schedules.py)
    store.retention  the event archive's partitions, expired runs deleted  (retention.py)

Row shapes and the record -> model conversions are in `rows.py`, the finished-run counters
every terminal commit adds to in `counters.py` (and the webhook delivery it records, in
`webhooks.py`), the pool and the one mapping of asyncpg errors
to `Unavailable` in `pool.py`. No SQL lives outside this package (and the migrations).
"""

from __future__ import annotations

from shared.config import Settings
from shared.store.batches import BatchRepo
from shared.store.events import EventBatch, EventRepo
from shared.store.interrupts import InterruptRepo
from shared.store.ops import OpsRepo
from shared.store.pool import PG_DOWN, Database, connect
from shared.store.retention import RetentionRepo
from shared.store.rows import ActiveKey, ApiKey, Asking, Finishing, NewRun, RunFigures, Submitted
from shared.store.runs import RunRepo
from shared.store.schedules import ScheduleRepo
from shared.store.submits import SubmitRepo
from shared.store.threads import ThreadRepo
from shared.store.users import UserRepo
from shared.store.webhooks import WebhookRepo


class Store:
    """All Postgres access. Built with `await Store.open(settings, app_name)`; close with
    `await store.close()`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.threads = ThreadRepo(db)
        self.runs = RunRepo(db, self.threads)
        self.batches = BatchRepo(db, self.runs)
        self.events = EventRepo(db)
        self.submits = SubmitRepo(db)
        self.users = UserRepo(db)
        self.ops = OpsRepo(db)
        self.interrupts = InterruptRepo(db, self.threads)
        self.webhooks = WebhookRepo(db)
        self.schedules = ScheduleRepo(db)
        self.retention = RetentionRepo(db)

    @classmethod
    async def open(cls, settings: Settings, app_name: str) -> Store:
        return cls(await Database.open(settings, app_name))

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.ping()


__all__ = [
    "PG_DOWN",
    "ActiveKey",
    "ApiKey",
    "Asking",
    "Database",
    "EventBatch",
    "Finishing",
    "NewRun",
    "RunFigures",
    "Store",
    "Submitted",
    "connect",
]
