"""The Redis key schema: the only module that spells a Redis key, stream, channel or group
name. Every name is under the configured prefix; each feature's keys are named here, once.

Every per-run key carries the run id as a `{hash tag}` so that all of one run's keys live in one
Redis Cluster slot (Lua scripts touch several of them at once); a thread's history cache carries
`{user:thread}` likewise. Every stream has a bound: the queue is bounded by acking-and-deleting
(never MAXLEN: that would drop unread runs), event streams by a per-run cap plus a TTL once the
run ends and the dead-letter stream by MAXLEN.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from shared.config import Settings

DEAD_LETTER_MAXLEN = 100_000


PRIORITY_LEVELS = ("high", "normal", "low")  # a shard's rings, highest first
# The one tenant every run belongs to when fairness is off (one line per priority).
SHARED_TENANT = "*"


def tenant_of(user_id: str, fair: bool) -> str:
    """The tenant whose line a run waits in: its user, or everyone's one line."""
    return (user_id or SHARED_TENANT) if fair else SHARED_TENANT


@dataclass(frozen=True)
class Keys:
    prefix: str
    queue: str
    group: str
    shards: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(
            prefix=settings.key_prefix,
            queue=settings.queue,
            group=settings.group,
            shards=settings.queue_shards,
        )

    # -- the queue's shards (one hash slot each) -------------------------------------------
    # Shard i's *ready* stream is the one the consumer group reads: `<queue>` for shard 0 (the
    # contract's name, unchanged with one shard) and `<queue>:<i>` for the others. Every other
    # key of the shard carries that stream's name as its `{hash tag}`: a key with no braces
    # hashes by its whole name, so `<queue>:held{<queue>}` lands in the slot of `<queue>`, and
    # each queue script touches one shard, one slot.
    def shard_queue(self, shard: int) -> str:
        """Shard's ready stream: entries promoted for dispatch, read by the group (bounded by
        ack-and-delete: it holds what is in flight plus what a pull just promoted)."""
        return self.queue if shard == 0 else f"{self.queue}:{shard}"

    def shard_for(self, run_id: str) -> int:
        """The shard a run's entries go to: a hash of its id, so a run keeps its shard for
        life (the reconciler and a hand-over add it back there) and many runs spread evenly,
        with no read before the write (least-loaded would need one, and go stale at once)."""
        return zlib.crc32(run_id.encode()) % self.shards if self.shards > 1 else 0

    def held(self, shard: int) -> str:
        """Shard's held stream: queued runs not yet promoted (bounded by ack-and-delete like
        the ready stream; `XLEN ready + XLEN held` over every shard is the backlog)."""
        q = self.shard_queue(shard)
        return f"{q}:held{{{q}}}"

    def ring(self, shard: int, priority: str) -> str:
        """List: the tenants with held runs of this priority on the shard, in round-robin
        order (a tenant is in it exactly while its list is non-empty; bounded by tenants)."""
        q = self.shard_queue(shard)
        return f"{q}:ring:{priority}{{{q}}}"

    def tenant_list_prefix(self, shard: int) -> str:
        """The start of a tenant's list name; `pull.lua` appends `<priority>:<tenant>` to it
        (the one place a key name is built outside this module, as Lua cannot call Python)."""
        q = self.shard_queue(shard)
        return f"{q}:t{{{q}}}:"

    def tenant_list(self, shard: int, priority: str, tenant: str) -> str:
        """List: the held entry ids of one tenant at one priority on the shard, oldest first."""
        return f"{self.tenant_list_prefix(shard)}{priority}:{tenant}"

    def skips(self, shard: int) -> str:
        """Hash: priority -> higher picks in a row while it waited (the starvation bound)."""
        q = self.shard_queue(shard)
        return f"{q}:skips{{{q}}}"

    @property
    def shards_seen(self) -> str:
        """Sorted set: every shard count a process has run with; workers read (and the
        reconciler covers) shards up to the largest, so a shrunk queue's shards still drain."""
        return f"{self.prefix}:queue:shards"

    # -- per run (one hash slot each) ------------------------------------------------------
    def events(self, run_id: str) -> str:
        """The run's event stream; entry ids are `0-<seq>`, so the id is the seq."""
        return f"{self.prefix}:events:{{{run_id}}}"

    def run_channel(self, run_id: str) -> str:
        """Sharded pub/sub channel (SPUBLISH/SSUBSCRIBE): the append script announces each
        copy of the run's events here; API hubs watching the run subscribe. In the run's slot."""
        return f"{self.prefix}:run-events:{{{run_id}}}"

    def run_of_channel(self, channel: str) -> str | None:
        """The run whose channel (`run_channel`) this is, or None for any other name."""
        head, tail = f"{self.prefix}:run-events:{{", "}"
        if not (channel.startswith(head) and channel.endswith(tail)):
            return None
        return channel[len(head) : -len(tail)] or None

    def run_meta(self, run_id: str) -> str:
        """Hash: `attempt` (the fence), `seq` (last appended), `bytes`, `cancel`, `owner`."""
        return f"{self.prefix}:run:{{{run_id}}}"

    # -- workers and the queue -------------------------------------------------------------
    @property
    def dead_letters(self) -> str:
        """Stream of runs delivered more than `max_attempts` times (MAXLEN ~100k)."""
        return f"{self.prefix}:dead"

    @property
    def dlq_watermark(self) -> str:
        """String: the newest dead-letter id an operator has acknowledged (`longrun dlq ack`)."""
        return f"{self.prefix}:dlq:acked"

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
        """String with a TTL: the worker running the reconciler now."""
        return f"{self.prefix}:lock:reconcile"

    @property
    def counters(self) -> str:
        """Hash of cluster-wide counters (re-claims, lease losses, hand-offs ...) for metrics."""
        return f"{self.prefix}:counters"

    # -- delayed runs (one hash slot: the scripts touch both) -------------------------------
    @property
    def delayed(self) -> str:
        """Sorted set: run id -> when it becomes runnable (unix ms); delayed runs wait here,
        not in the queue stream, until a worker promotes them. Bounded by the runs queued."""
        return f"{self.prefix}:delayed:{{due}}:at"

    @property
    def delayed_who(self) -> str:
        """Hash: run id -> its queue entry's fields (user, priority), for its promotion."""
        return f"{self.prefix}:delayed:{{due}}:who"

    # -- admission and operator switches ---------------------------------------------------
    @property
    def paused(self) -> str:
        """Present while submits are paused; its value is the operator's reason."""
        return f"{self.prefix}:admission:paused"

    @property
    def key_epoch(self) -> str:
        """Counter: a cached API-key look-up is valid only under the epoch it was made in."""
        return f"{self.prefix}:auth:key_epoch"

    def submit_bucket(self, user: str) -> str:
        """Hash (`tokens`, `ts`): the user's submit-rate token bucket; expires when full."""
        return f"{self.prefix}:rate:submit:{user}"

    def sse_slots(self, user: str) -> str:
        """Sorted set: the user's open event streams, scored by when each slot expires."""
        return f"{self.prefix}:sse:{user}"

    # -- threads ---------------------------------------------------------------------------
    def thread_history(self, user_id: str, thread_id: str) -> str:
        """String with a TTL: the thread's recent messages (JSON), a cache of Postgres."""
        return f"{self.prefix}:thread:{{{user_id}:{thread_id}}}:recent"

    # -- model provider circuit breakers ---------------------------------------------------
    def breaker_state(self, model: str) -> str:
        """Hash (`v`, `status`, `epoch`, `opened_at`, `probe_at`): one model's breaker."""
        return f"{self.prefix}:breaker:{model}:state"

    def breaker_window(self, model: str, epoch: int, bucket: int) -> str:
        """Hash (`calls`, `failures`): one time bucket of a breaker's sliding window."""
        return f"{self.prefix}:breaker:{model}:w:{epoch}:{bucket}"

    @property
    def breaker_states(self) -> str:
        """SCAN pattern matching every breaker's state hash."""
        return self.breaker_state("*")

    def breaker_model(self, state_key: str) -> str | None:
        """The model a breaker state key names, or None for any other key."""
        head, tail = f"{self.prefix}:breaker:", ":state"
        if not (state_key.startswith(head) and state_key.endswith(tail)):
            return None
        model = state_key[len(head) : -len(tail)]
        return model if model and ":" not in model else None

    def all_pattern(self) -> str:
        """SCAN pattern matching every key of this deployment (tests clean up with it)."""
        return f"{self.prefix}:*"
