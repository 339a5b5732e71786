"""The run-level Redis operations used by both the API and the workers: the queue entries of
runs (enqueue, renew, ack, hand over), the fenced writes of a run's events, reading them back,
cancel requests, a run's diagnostics and the cluster counters.

Every worker write for a run goes through a script that first checks the attempt stored in the
run's meta hash (the fence), so a worker that lost its lease cannot append a single event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from redis.commands.core import AsyncScript

from shared.batching import Coalescer
from shared.config import Settings
from shared.errors import LeaseLost, LongrunError
from shared.models import Event, QueuedRun
from shared.redis import scripts
from shared.redis.cache import ThreadCache
from shared.redis.client import REDIS_ERRORS, Redis
from shared.redis.codec import (
    QueueEntry,
    parse_stream_events,
    qualify_entry_id,
    split_entry_id,
    text,
    text_map,
)
from shared.redis.delayed import DelayedIO
from shared.redis.group import GroupIO, publish_cancel
from shared.redis.keys import PRIORITY_LEVELS, Keys, tenant_of
from shared.redis.pipeline import ScriptCall, ScriptPipe

if TYPE_CHECKING:
    from typing_extensions import Unpack

# The cluster-wide counters workers bump (`Keys.counters`), for metrics.
Counter = Literal["reclaims", "lease_losses", "handoffs", "provider_errors"]


class EventCapExceeded(LongrunError):
    code = "event_cap_exceeded"


class AppendOptions(TypedDict, total=False):
    # > 0: start the run's expiry (its end was committed).
    ttl: int
    # The last event is the run's terminal one: Redis closes the run's log after it.
    terminal: bool
    # A hole before the first event is allowed (else the copy is refused with `Gap`, and the
    # writer sends what Redis lacks first).
    gaps: bool
    # (owner, entry id): this is the attempt's first copy and raises its fence too (see
    # `Fence.deferred`).
    fence: tuple[str, str] | None


@dataclass(frozen=True)
class AppendResult:
    cancel_requested: bool


@dataclass(frozen=True)
class Gap:
    """A copy refused: Redis holds the run's events only up to `redis_seq`, short of the copy's
    first one (it lost some). The writer sends what it lacks from the archive, then again."""

    redis_seq: int


@dataclass(frozen=True)
class Fence:
    seq: int
    cancel_requested: bool
    # Not raised yet: a run's first attempt (no earlier attempt can have written) raises its
    # fence with its first append, one script call and one round trip fewer per run.
    deferred: bool = False


class RedisIO:
    """With `batched=True` (a worker) the per-run scripts (fence, append, ack) of concurrent
    attempts share round trips: calls that arrive while a pipeline is in flight go out together
    in the next one (group commit, no timer). Each call still gets its own outcome: one run's
    fenced-out append fails that run alone.

    `group` (the worker's side of the consumer group), `threads` (the thread history cache) and
    `delayed` (the runs waiting for their start) share this client."""

    def __init__(self, r: Redis, keys: Keys, settings: Settings, *, batched: bool = False) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self.group = GroupIO(r, keys, starvation=settings.priority_starvation, fair=settings.fair)
        self.threads = ThreadCache(r, keys)
        self.delayed = DelayedIO(r, keys)
        self._append = r.register_script(scripts.APPEND)
        self._fence = r.register_script(scripts.FENCE)
        self._renew = r.register_script(scripts.RENEW)
        self._ack = r.register_script(scripts.ACK)
        self._ack_many = r.register_script(scripts.ACK_MANY)
        self._handoff = r.register_script(scripts.HANDOFF)
        self._cancel = r.register_script(scripts.CANCEL)
        self._enqueue = r.register_script(scripts.ENQUEUE)
        self._pipe = ScriptPipe(r, settings.redis_socket_timeout)
        self._queued = 0
        self._in_flight = 0
        self.scripts: Coalescer[ScriptCall, Any] | None = (
            Coalescer(self._flush_scripts, max_batch=512, name="redis-scripts") if batched else None
        )

    @property
    def idle(self) -> bool:
        """No grouped call is waiting or in flight (a worker closes its client after)."""
        return self._queued == 0 and self._in_flight == 0

    async def aclose(self) -> None:
        await self.r.aclose()

    async def ping(self) -> None:
        await self.r.ping()

    async def _script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        if self.scripts is None:
            return await script(keys=keys, args=args)
        self._queued += 1  # the flush that takes the call counts it off
        return await self.scripts.call((script, keys, args))

    async def _flush_scripts(self, calls: list[ScriptCall]) -> list[Any]:
        self._queued -= len(calls)
        self._in_flight += 1
        try:
            return await self._run_scripts(calls)
        finally:
            self._in_flight -= 1

    async def _run_scripts(self, calls: list[ScriptCall]) -> list[Any]:
        """One pipeline of EVALSHA; the acks among the calls go as one call per queue and
        consumer (they touch only the queue key)."""
        acks: dict[tuple[str, str, str], list[int]] = {}
        sent: list[ScriptCall] = []
        for i, (script, keys, args) in enumerate(calls):
            if script is self._ack:
                acks.setdefault((keys[0], args[0], args[1]), []).append(i)
            else:
                sent.append(calls[i])
        if not acks:
            return await self._pipe.send(calls)
        for (queue, group, consumer), idx in acks.items():
            ids = [calls[i][2][2] for i in idx]
            sent.append((self._ack_many, [queue], [group, consumer, *ids]))
        replies = await self._pipe.send(sent)
        results: list[Any] = [None] * len(calls)
        it = iter(replies)
        for i, (script, _, _) in enumerate(calls):
            if script is not self._ack:
                results[i] = next(it)
        for idx in acks.values():
            reply = next(it)
            for n, i in enumerate(idx):
                results[i] = reply if isinstance(reply, BaseException) else int(reply[n])
        return results

    # -- queue -------------------------------------------------------------------------------
    def _enqueue_call(self, run: QueuedRun, handoffs: int = 0) -> ScriptCall:
        k = self.keys
        shard = k.shard_for(run.run_id)
        priority = run.priority if run.priority in PRIORITY_LEVELS else "normal"
        tenant = tenant_of(run.user_id, self.settings.fair)
        return (
            self._enqueue,
            [k.held(shard), k.ring(shard, priority), k.tenant_list(shard, priority, tenant)],
            [run.run_id, run.user_id, priority, handoffs, 0, tenant],
        )

    async def enqueue(self, run: QueuedRun, handoffs: int = 0) -> str:
        """Queue one run on its shard (`enqueue.lua`); returns its entry id."""
        (reply,) = await self._pipe.send([self._enqueue_call(run, handoffs)])
        if isinstance(reply, BaseException):
            raise reply
        return text(reply)

    async def enqueue_many(self, runs: Sequence[QueuedRun]) -> list[str | BaseException]:
        """Queue entries for many runs in one round trip: each run's entry id, or the error
        that kept it out (all of them fail when Redis does not answer)."""
        if not runs:
            return []
        try:
            added = await self._pipe.send([self._enqueue_call(run) for run in runs])
        except REDIS_ERRORS as exc:
            return [exc] * len(runs)
        return [x if isinstance(x, BaseException) else text(x) for x in added]

    async def ensure_group(self) -> None:
        await self.group.ensure()

    async def renew(self, consumer: str, entry_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Renew this consumer's entries (one script call per shard). Returns (lost, gone):
        the ids another consumer holds now, and the ids no one holds (Redis lost them)."""
        lost: list[str] = []
        gone: list[str] = []
        for shard, raws in _by_shard(entry_ids).items():
            lost_raw, gone_raw = await self._renew(
                keys=[self.keys.shard_queue(shard)], args=[self.keys.group, consumer, *raws]
            )
            lost += [qualify_entry_id(text(x), shard) for x in lost_raw]
            gone += [qualify_entry_id(text(x), shard) for x in gone_raw]
        return lost, gone

    async def ack(self, consumer: str, entry_id: str) -> bool:
        shard, raw = split_entry_id(entry_id)
        done = await self._script(
            self._ack, [self.keys.shard_queue(shard)], [self.keys.group, consumer, raw]
        )
        return bool(done)

    async def handoff(self, consumer: str, entry: QueueEntry) -> bool:
        k = self.keys
        shard, priority = entry.shard, entry.priority
        tenant = tenant_of(entry.user_id, self.settings.fair)
        done = await self._handoff(
            keys=[
                k.shard_queue(shard),
                k.held(shard),
                k.ring(shard, priority),
                k.tenant_list(shard, priority, tenant),
            ],
            args=[
                k.group,
                consumer,
                entry.stream_id,
                entry.run_id,
                entry.handoffs + 1,
                entry.user_id,
                priority,
                tenant,
            ],
        )
        return bool(done)

    async def count(self, counter: Counter, n: int = 1) -> None:
        await self.r.hincrby(self.keys.counters, counter, n)

    # -- runs --------------------------------------------------------------------------------
    def _fence_call(self, run_id: str, attempt: int, owner: str, entry_id: str) -> ScriptCall:
        return (
            self._fence,
            [self.keys.run_meta(run_id), self.keys.events(run_id)],
            [attempt, owner, self.settings.events_ttl_seconds * 24, entry_id],
        )

    @staticmethod
    def _fence_outcome(attempt: int, res: Any) -> Fence | BaseException:
        if isinstance(res, BaseException):
            return res
        if int(res[0]) != 1:
            return LeaseLost(f"attempt {attempt} is older than attempt {int(res[1])}")
        return Fence(seq=int(res[1]), cancel_requested=bool(int(res[2])))

    async def fence(self, run_id: str, attempt: int, owner: str, entry_id: str = "") -> Fence:
        """Raise the run's fence in Redis to `attempt`; `Fence.seq` is the last event Redis
        holds for the run (below the archive's end when Redis lost some)."""
        call = self._fence_call(run_id, attempt, owner, entry_id)
        out = self._fence_outcome(attempt, await self._script(*call))
        if isinstance(out, BaseException):
            raise out
        return out

    async def fence_many(
        self, items: Sequence[tuple[str, int, str, str]]
    ) -> list[Fence | BaseException]:
        """`fence` for many (run_id, attempt, owner, entry_id) in one round trip, now
        (not queued behind other calls). One outcome per item: a Fence, or LeaseLost (or a
        script error) for that run alone; a Redis outage raises."""
        replies = await self._run_scripts([self._fence_call(*item) for item in items])
        return [self._fence_outcome(item[1], res) for item, res in zip(items, replies, strict=True)]

    async def ack_many(self, consumer: str, entry_ids: Sequence[str]) -> list[bool]:
        """`ack` for many entries in one call per shard, now (not queued behind other calls)."""
        if not entry_ids:
            return []
        by_shard = _by_shard(entry_ids)
        calls: list[ScriptCall] = [
            (self._ack_many, [self.keys.shard_queue(shard)], [self.keys.group, consumer, *raws])
            for shard, raws in by_shard.items()
        ]
        done: dict[str, bool] = {}
        for (shard, raws), reply in zip(
            by_shard.items(), await self._pipe.send(calls), strict=True
        ):
            if isinstance(reply, BaseException):
                raise reply
            for raw, ok in zip(raws, reply, strict=True):
                done[qualify_entry_id(raw, shard)] = bool(int(ok))
        return [done[x] for x in entry_ids]

    def append_call(
        self, run_id: str, attempt: int, events: Sequence[Event], **options: Unpack[AppendOptions]
    ) -> ScriptCall:
        """The append script's call: copy events Postgres committed into the run's stream
        (see `AppendOptions`). `attempt` 0: a writer with no attempt (the API ending a queued
        run)."""
        owner, entry = options.get("fence") or ("", "")
        args: list[Any] = [
            attempt,
            events[0].seq,
            options.get("ttl", 0),
            owner,
            entry,
            self.settings.events_ttl_seconds * 24,
            1 if options.get("terminal") else 0,
            1 if options.get("gaps") else 0,
        ]
        for e in events:
            args.extend((e.type, e.data))
        keys = [self.keys.run_meta(run_id), self.keys.events(run_id), self.keys.run_channel(run_id)]
        return (self._append, keys, args)

    @staticmethod
    def append_outcome(run_id: str, attempt: int, res: Any) -> AppendResult | Gap | BaseException:
        if isinstance(res, BaseException):
            return res
        code = int(res[0])
        if code == 1:
            return AppendResult(cancel_requested=bool(int(res[1])))
        if code == -2:
            return Gap(redis_seq=int(res[1]))
        if code == -1:
            return LeaseLost(f"run {run_id}: attempt {attempt} fenced out by {int(res[1])}")
        return LeaseLost(f"run {run_id}: its log closed at seq {int(res[1])}")

    async def append(
        self, run_id: str, attempt: int, events: Sequence[Event], **options: Unpack[AppendOptions]
    ) -> AppendResult | Gap:
        """`append_call`, sent (grouped with other calls when batched)."""
        call = self.append_call(run_id, attempt, events, **options)
        out = self.append_outcome(run_id, attempt, await self._script(*call))
        if isinstance(out, BaseException):
            raise out
        return out

    async def run_now(self, calls: list[ScriptCall]) -> list[Any]:
        """Script calls in one round trip now (not queued behind other grouped calls); one
        reply (or error instance) per call. A Redis outage raises."""
        return await self._run_scripts(calls)

    async def expire_run(self, run_id: str) -> None:
        ttl = self.settings.events_ttl_seconds
        async with self.r.pipeline(transaction=False) as p:
            p.expire(self.keys.events(run_id), ttl)
            p.expire(self.keys.run_meta(run_id), ttl)
            await p.execute()

    async def forget_run(self, run_id: str) -> None:
        """Drop a run's fence and events (the archive in Postgres keeps the events)."""
        await self.r.delete(self.keys.run_meta(run_id), self.keys.events(run_id))

    async def publish_terminal(self, run_id: str, event: Event) -> None:
        """Copy a terminal event committed outside any attempt (the API cancelling a queued
        run) into the run's stream through the append script, which closes the run's log
        there, so live followers see it at once; it expires like a finished run's events."""
        await self.append(
            run_id, 0, [event], ttl=self.settings.events_ttl_seconds, terminal=True, gaps=True
        )

    async def request_cancel(self, run_id: str) -> None:
        await self._cancel(
            keys=[self.keys.run_meta(run_id)], args=[self.settings.events_ttl_seconds * 24]
        )
        await publish_cancel(self.r, self.keys.cancel_channel, run_id)

    async def diagnostics(self, run_id: str) -> dict[str, Any]:
        """What Redis knows about a run's current attempt: fence, owner, its queue entry's
        pending state (consumer, idle, deliveries) and that consumer's last heartbeat."""
        meta = text_map(await self.r.hgetall(self.keys.run_meta(run_id)))
        out: dict[str, Any] = {
            "fence_attempt": int(meta["attempt"]) if "attempt" in meta else None,
            "owner": meta.get("owner"),
            "entry_id": meta.get("entry") or None,
            "redis_seq": int(meta["seq"]) if "seq" in meta else None,
            "cancel_requested": meta.get("cancel") == "1",
            "pending": None,
        }
        entry = meta.get("entry")
        if entry:
            shard, raw = split_entry_id(entry)
            rows = await self.r.xpending_range(
                self.keys.shard_queue(shard), self.keys.group, min=raw, max=raw, count=1
            )
            if rows:
                row = rows[0]
                idle_ms = int(row["time_since_delivered"])
                lease_ms = int(self.settings.lease_seconds * 1000)
                out["pending"] = {
                    "consumer": text(row["consumer"]),
                    "idle_ms": idle_ms,
                    "deliveries": int(row["times_delivered"]),
                    "reclaimable_in_ms": max(0, lease_ms - idle_ms),
                }
        owner = meta.get("owner")
        if owner:
            beat = await self.r.zscore(self.keys.workers, owner)
            out["owner_last_heartbeat"] = beat
        return out

    async def events_after(self, run_id: str, after_seq: int, count: int = 500) -> list[Event]:
        entries = await self.r.xrange(
            self.keys.events(run_id), min=f"0-{after_seq + 1}", max="+", count=count
        )
        return parse_stream_events(entries)

    async def last_events(self, run_id: str, count: int) -> list[Event]:
        """The newest `count` events, newest first."""
        entries = await self.r.xrevrange(self.keys.events(run_id), count=count)
        return parse_stream_events(entries)


def _by_shard(entry_ids: Sequence[str]) -> dict[int, list[str]]:
    """Qualified entry ids as stream ids, grouped by shard (in order)."""
    out: dict[int, list[str]] = {}
    for entry_id in entry_ids:
        shard, raw = split_entry_id(entry_id)
        out.setdefault(shard, []).append(raw)
    return out
