"""The cluster as operators see it: one snapshot of the queue, the workers, the dead letters and
the counters, read from Redis, for `GET /metrics` and `longrun status` (the run figures come
from Postgres: `store.ops.run_figures()`).

Cluster-wide figures are aggregated through the shared stores, not scraped per worker: workers
publish their live figures in Redis (heartbeat: `Keys.workers`, `Keys.worker_info`; counters:
`Keys.counters`; breakers: `Keys.breaker_state`), and any API process (or the CLI) reads them
back. So one scrape of any API instance sees every worker, and workers need no port.

Reading is `cluster_redis` (bounded reads through `shared.redis.ops`); deciding is pure
(`parse_*`, `problems`). "New dead letters" are those after the watermark `longrun dlq ack`
sets (`Keys.dlq_watermark`), for the status command and the dlq command alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.config import Settings
from shared.redis.ops import OpsIO

# Workers whose last heartbeat is older than this are dropped from the snapshot (a killed
# worker never removes itself from the heartbeat set).
FORGET_WORKER_SECONDS = 3600.0
# At most this many unacknowledged dead letters are counted exactly.
DLQ_COUNT_CAP = 1000
# At most this many breaker keys are read per snapshot.
BREAKER_CAP = 50
COUNTER_NAMES = ("reclaims", "lease_losses", "handoffs", "provider_errors")
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def entry_ms(entry_id: str) -> int:
    """The millisecond timestamp part of a stream entry id (`1700000000000-0`)."""
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def id_after(a: str, b: str) -> bool:
    """Whether stream id `a` is strictly greater than `b`."""

    def key(x: str) -> tuple[int, int]:
        ms, _, n = x.partition("-")
        return (int(ms or 0), int(n or 0))

    return key(a) > key(b)


@dataclass(frozen=True)
class GroupInfo:
    pending: int = 0
    lag: int | None = None  # Redis 7 only (and nil when Redis cannot tell)
    last_delivered: str = "0-0"
    exists: bool = False


def parse_group(groups: list[dict[str, Any]], name: str) -> GroupInfo:
    """Our group's line of `XINFO GROUPS`; `lag` only where the server reports it."""
    for g in groups:
        if _s(g.get("name")) != name:
            continue
        lag = g.get("lag")
        return GroupInfo(
            pending=int(g.get("pending") or 0),
            lag=None if lag is None else int(lag),
            last_delivered=_s(g.get("last-delivered-id")) or "0-0",
            exists=True,
        )
    return GroupInfo()


@dataclass(frozen=True)
class WorkerView:
    name: str
    alive: bool
    heartbeat_age_seconds: float
    in_flight: int
    concurrency: int
    host: str = ""
    pid: int = 0

    @property
    def free_slots(self) -> int:
        return max(0, self.concurrency - self.in_flight) if self.alive else 0


def parse_workers(
    beats: list[tuple[str, float]],
    infos: Sequence[Mapping[bytes, bytes] | Mapping[str, str]],
    now: float,
    lease_seconds: float,
) -> list[WorkerView]:
    """Workers from the heartbeat set and their info hashes (same order). A worker is alive
    when it beat within one lease; one silent for an hour is forgotten."""
    out = []
    for (name, beat), info in zip(beats, infos, strict=True):
        age = max(0.0, now - beat)
        if age > FORGET_WORKER_SECONDS:
            continue
        fields = {_s(k): _s(v) for k, v in info.items()}
        alive = age < lease_seconds
        out.append(
            WorkerView(
                name=name,
                alive=alive,
                heartbeat_age_seconds=round(age, 3),
                in_flight=int(fields.get("in_flight") or 0) if alive else 0,
                concurrency=int(fields.get("concurrency") or 0),
                host=fields.get("host", ""),
                pid=int(fields.get("pid") or 0),
            )
        )
    return out


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    run_id: str
    deliveries: int
    reason: str
    at: float  # unix seconds when it was dead-lettered


def parse_dead_letter(
    entry_id: bytes | str, fields: Mapping[bytes, bytes] | Mapping[str, str]
) -> DeadLetter:
    f = {_s(k): _s(v) for k, v in fields.items()}
    eid = _s(entry_id)
    try:
        at = float(f.get("at") or 0) or entry_ms(eid) / 1000
    except ValueError:
        at = entry_ms(eid) / 1000
    deliveries = f.get("deliveries", "0")
    return DeadLetter(
        entry_id=eid,
        run_id=f.get("run", ""),
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        reason=f.get("reason", ""),
        at=at,
    )


def merge_groups(groups: Sequence[GroupInfo], held: int) -> GroupInfo:
    """The shards' groups as one: pending summed; lag summed plus the held entries (none of
    them read yet), when every shard's group reports its lag."""
    lags = [g.lag for g in groups]
    return GroupInfo(
        pending=sum(g.pending for g in groups),
        lag=None if any(x is None for x in lags) else sum(x or 0 for x in lags) + held,
        last_delivered=groups[0].last_delivered if groups else "0-0",
        exists=any(g.exists for g in groups),
    )


@dataclass(frozen=True)
class ShardFigures:
    shard: int
    ready: int  # XLEN of its ready stream: in flight plus just promoted
    held: int  # XLEN of its held stream: queued, not yet promoted
    pending: int


@dataclass(frozen=True)
class RedisFigures:
    backlog: int
    group: GroupInfo
    oldest_waiting_age_seconds: float | None
    workers: list[WorkerView]
    dead_letters: int
    dead_letters_unacked: int
    newest_dead_letter_age_seconds: float | None
    counters: dict[str, int]
    breakers: dict[str, str]
    # Delayed runs waiting for their start: queued, not in the queue stream (not backlog).
    scheduled: int = 0
    shards: list[ShardFigures] = field(default_factory=list)

    @property
    def workers_alive(self) -> int:
        return sum(1 for w in self.workers if w.alive)

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self.workers)

    @property
    def free_slots(self) -> int:
        return sum(w.free_slots for w in self.workers)

    @property
    def waiting(self) -> int:
        """Entries no worker has read yet: `lag` where Redis has it, else backlog - pending."""
        if self.group.lag is not None:
            return self.group.lag
        return max(0, self.backlog - self.group.pending)


async def cluster_redis(io: OpsIO, settings: Settings) -> RedisFigures:
    """Everything the snapshot needs from Redis: about a dozen commands, none unbounded."""
    now = time.time()
    lengths = await io.shard_lengths()
    backlog = sum(ready + held for ready, held in lengths)
    groups: list[GroupInfo] = []
    waiting_ids: list[str] = []
    for shard, (ready, held) in enumerate(lengths):
        g = parse_group(await io.groups(shard), settings.group)
        groups.append(g)
        if held:  # the oldest entry not yet promoted (its id is its submit time)
            waiting_ids += [x for x in [await io.oldest_held(shard)] if x]
        if ready > g.pending:  # an entry in ready not yet delivered
            after = g.last_delivered if g.exists else None
            waiting_ids += [x for x in [await io.first_entry_after(after, shard)] if x]
    group = merge_groups(groups, sum(held for _, held in lengths))
    oldest = min(waiting_ids, key=entry_ms) if waiting_ids else None
    beats, infos = await io.workers()
    dead = await io.dead_letter_count()
    unacked = await io.dead_letters(after=await io.dlq_watermark(), limit=DLQ_COUNT_CAP)
    newest = await io.newest_dead_letter()
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    for k, v in (await io.counters()).items():
        if v.lstrip("-").isdigit():
            counters[k] = int(v)
    return RedisFigures(
        backlog=backlog,
        group=group,
        oldest_waiting_age_seconds=(
            None if oldest is None else round(max(0.0, now - entry_ms(oldest) / 1000), 3)
        ),
        workers=parse_workers(beats, infos, now, settings.lease_seconds),
        dead_letters=dead,
        dead_letters_unacked=len(unacked),
        newest_dead_letter_age_seconds=(
            None if newest is None else round(max(0.0, now - parse_dead_letter(*newest).at), 3)
        ),
        counters=counters,
        breakers=await io.breaker_states(BREAKER_CAP),
        scheduled=await io.scheduled(),
        shards=[
            ShardFigures(shard=i, ready=ready, held=held, pending=groups[i].pending)
            for i, (ready, held) in enumerate(lengths)
        ],
    )


# -- judging -----------------------------------------------------------------------------------


def problems(f: RedisFigures, settings: Settings) -> list[str]:
    """What an operator must look at now; empty when the system is healthy.

    - stalled: entries are queued (or held by dead workers) and no worker is alive;
    - degraded: dead letters newer than the acknowledged watermark (`longrun dlq ack`);
    - starved: a run has waited longer than two leases (and a minute) while live workers have
      free slots: the workers are not reading the queue.
    """
    out = []
    if f.backlog > 0 and f.workers_alive == 0:
        out.append(f"stalled: {f.backlog} runs queued or in flight and no live worker")
    if f.dead_letters_unacked > 0:
        more = "+" if f.dead_letters_unacked >= DLQ_COUNT_CAP else ""
        out.append(
            f"degraded: {f.dead_letters_unacked}{more} new dead letters "
            "(see `longrun dlq list`; `longrun dlq ack` once handled)"
        )
    wait_limit = max(60.0, 2 * settings.lease_seconds)
    oldest = f.oldest_waiting_age_seconds
    if oldest is not None and oldest > wait_limit and f.free_slots > 0:
        out.append(
            f"starved: a run has waited {oldest:.0f} s while workers have {f.free_slots} free slots"
        )
    return out


def as_dict(f: RedisFigures, settings: Settings) -> dict[str, Any]:
    """The snapshot as JSON: what `longrun status --json` prints and `GET /ops/status` answers."""
    return {
        "queue": settings.queue,
        "group": settings.group,
        "backlog": f.backlog,
        "scheduled": f.scheduled,
        "shards": [
            {"shard": x.shard, "ready": x.ready, "held": x.held, "pending": x.pending}
            for x in f.shards
        ],
        "pending": f.group.pending,
        "lag": f.group.lag,
        "waiting": f.waiting,
        "oldest_waiting_age_seconds": f.oldest_waiting_age_seconds,
        "in_flight": f.in_flight,
        "free_slots": f.free_slots,
        "workers_alive": f.workers_alive,
        "workers": [
            {
                "name": w.name,
                "alive": w.alive,
                "in_flight": w.in_flight,
                "concurrency": w.concurrency,
                "last_heartbeat_age_seconds": w.heartbeat_age_seconds,
                "host": w.host,
                "pid": w.pid,
            }
            for w in f.workers
        ],
        "dead_letters": f.dead_letters,
        "dead_letters_unacknowledged": f.dead_letters_unacked,
        "newest_dead_letter_age_seconds": f.newest_dead_letter_age_seconds,
        "counters": f.counters,
        "breakers": f.breakers,
        "problems": problems(f, settings),
    }
