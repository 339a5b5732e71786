"""The Redis key schema: the only module that spells a Redis key, stream, channel or group
name. Every name is under the configured prefix; each feature's keys are named here, once.

Every per-run key carries the run id as a `{hash tag}` so that all of one run's keys live in one
Redis Cluster slot (Lua scripts touch several of them at once); a thread's history cache carries
`{user:thread}` likewise. Every stream has a bound: the queue is bounded by acking-and-deleting
(never MAXLEN: that would drop unread runs), event streams by a per-run cap plus a TTL once the
run ends and the dead-letter stream by MAXLEN.
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
