"""The Redis key schema: the only module that spells a Redis key, stream or group name.

Every per-run key carries the run id as a `{hash tag}` so that all of one run's keys live in one
Redis Cluster slot (Lua scripts touch several of them at once). Every stream has a bound: the
queue is bounded by acking-and-deleting (never MAXLEN: that would drop unread runs), event streams
by a per-run cap plus a TTL once the run ends, the dead-letter stream by MAXLEN.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Settings

DEAD_LETTER_MAXLEN = 100_000


@dataclass(frozen=True)
class Keys:
    prefix: str
    queue: str
    group: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(prefix=settings.key_prefix, queue=settings.queue, group=settings.group)

    # -- per run (one hash slot each) ------------------------------------------------------
    def events(self, run_id: str) -> str:
        """The run's event stream; entry ids are `0-<seq>`, so the id is the seq."""
        return f"{self.prefix}:events:{{{run_id}}}"

    def run_meta(self, run_id: str) -> str:
        """Hash: `attempt` (the fence), `seq` (last appended), `bytes`, `cancel`, `owner`."""
        return f"{self.prefix}:run:{{{run_id}}}"

    # -- global ----------------------------------------------------------------------------
    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    def worker_info(self, name: str) -> str:
        """Hash of one worker's live figures (in flight, concurrency, pid, host, started)."""
        return f"{self.prefix}:worker:{name}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel: a run id published here is being cancelled."""
        return f"{self.prefix}:cancel"

    @property
    def reconcile_lock(self) -> str:
        return f"{self.prefix}:lock:reconcile"

    @property
    def counters(self) -> str:
        """Hash of cluster-wide counters (re-claims, lease losses, hand-offs ...) for metrics."""
        return f"{self.prefix}:counters"

    def scoped(self, *parts: str) -> str:
        """A further key under the prefix, for modules that own a feature's keys (rate limits,
        idempotency, breakers, caches). Callers name their part; the prefix stays here."""
        return ":".join((self.prefix, *parts))

    def all_pattern(self) -> str:
        """SCAN pattern matching every key of this deployment (tests clean up with it)."""
        return f"{self.prefix}:*"
