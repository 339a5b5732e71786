"""Delayed runs in Redis: a run submitted with `start_after` / `start_at` waits in a sorted set
scored by when it becomes runnable (`Keys.delayed`, unix ms), with its queue entry's fields
beside it (`Keys.delayed_who`), not in the queue stream, so `XLEN` stays the runnable backlog.

Every worker takes the due ones (`take_due`: one script removes them from both keys, so each
run is taken by exactly one caller) and enqueues what it took. A crash between the two loses
the run's place in Redis only: Postgres still has it queued with its `start_at`, and the
reconciler enqueues a due run that is neither in the set nor in the queue (and puts a run not
yet due back in the set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from shared.models import QueuedRun
from shared.redis import scripts
from shared.redis.client import Redis
from shared.redis.codec import text
from shared.redis.keys import Keys


@dataclass(frozen=True)
class Due:
    """A run taken from the set: its queue entry, and when it was due (unix ms)."""

    run: QueuedRun
    due_ms: int


def unix_ms(at: datetime) -> int:
    """A time as the set's score (an aware datetime)."""
    return int(at.timestamp() * 1000)


def _fields(q: QueuedRun) -> bytes:
    return orjson.dumps({"user": q.user_id, "priority": q.priority})


def _queued(run_id: str, raw: bytes | str | None) -> QueuedRun:
    """A taken run's entry; fields Redis lost (a partial restore) leave the user unknown."""
    try:
        f = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        f = {}
    return QueuedRun(run_id, str(f.get("user", "")), str(f.get("priority", "normal")))


class DelayedIO:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._delay = r.register_script(scripts.DELAY)
        self._take_due = r.register_script(scripts.TAKE_DUE)

    def _keys(self) -> list[str]:
        return [self.keys.delayed, self.keys.delayed_who]

    async def schedule(
        self, runs: Sequence[tuple[QueuedRun, datetime]], *, only_new: bool = False
    ) -> int:
        """Put runs in the set, each due at its time (one round trip). `only_new`: a run in
        the set already keeps its time (the reconciler's re-add). How many were new."""
        if not runs:
            return 0
        args: list[str | int | bytes] = [1 if only_new else 0]
        for q, at in runs:
            args.extend((q.run_id, unix_ms(at), _fields(q)))
        return int(await self._delay(keys=self._keys(), args=args))

    async def take_due(self, now_ms: int, limit: int) -> list[Due]:
        """Remove and return the runs due by `now_ms` (earliest first, at most `limit`). A run
        is returned to one caller only: that caller must enqueue it."""
        reply = await self._take_due(keys=self._keys(), args=[now_ms, limit])
        return [
            Due(_queued(text(reply[i]), reply[i + 2]), int(float(text(reply[i + 1]))))
            for i in range(0, len(reply), 3)
        ]

    async def remove(self, run_id: str) -> bool:
        """Take a run out of the set (a cancelled one); whether it was there."""
        # One round trip, no MULTI (the cluster client has none to offer across nodes; these
        # two keys share a slot anyway). A crash between the two leaves a stray `who` field,
        # which the next `delay` of that run id overwrites.
        async with self.r.pipeline(transaction=False) as p:
            p.zrem(self.keys.delayed, run_id)
            p.hdel(self.keys.delayed_who, run_id)
            removed, _ = await p.execute()
        return bool(removed)

    async def count(self) -> int:
        """Runs waiting for their time: the `scheduled` figure."""
        return int(await self.r.zcard(self.keys.delayed))

    async def present(self, run_ids: Sequence[str]) -> set[str]:
        """Those of `run_ids` that are in the set."""
        if not run_ids:
            return set()
        scores = await self.r.zmscore(self.keys.delayed, list(run_ids))
        return {r for r, s in zip(run_ids, scores, strict=True) if s is not None}
