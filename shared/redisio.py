"""Redis, the fast path: the client factory, the fenced scripts (`shared.redis_scripts`), and
reading event streams.

Raw replies become models here (`Event`, `PendingInfo`); bytes never leave this module.
Every worker write for a run goes through a script that first checks the attempt stored in the
run's meta hash (the fence), so a worker that lost its lease cannot append a single event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.batching import Coalescer
from shared.config import Settings
from shared.errors import ConfigError, LeaseLost, LongrunError
from shared.keys import Keys
from shared.models import Event
from shared.redis_scripts import ACK, ACK_MANY, APPEND, CANCEL, FENCE, HANDOFF, RELEASE, RENEW

REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


class EventCapExceeded(LongrunError):
    code = "event_cap_exceeded"


def create_redis(settings: Settings, name: str) -> aioredis.Redis:
    """A pooled client with timeouts on connect and read, and a client name for CLIENT LIST.
    Blocking reads must use BLOCK well under `redis_socket_timeout`."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        health_check_interval=30,
        client_name=name,
        max_connections=settings.redis_max_connections,
        # One quick retry for a dropped idle connection; never retry a timed-out command.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        retry_on_timeout=False,
        decode_responses=False,
    )
    return client


async def check_eviction_policy(r: aioredis.Redis) -> None:
    """Refuse a Redis that may evict the queue: `allkeys-*` policies drop any key."""
    try:
        reply = await r.config_get("maxmemory-policy")
    except ResponseError:  # CONFIG disabled (managed Redis): cannot check, carry on
        return
    policy = next((_s(v) for k, v in reply.items() if _s(k) == "maxmemory-policy"), "")
    if policy.startswith("allkeys"):
        raise ConfigError(
            f"Redis maxmemory-policy is {policy}: it may evict the run queue. "
            "Use noeviction (or a volatile-* policy)."
        )


@dataclass(frozen=True)
class AppendResult:
    cancel_requested: bool


@dataclass(frozen=True)
class Fence:
    seq: int
    cancel_requested: bool
    # Not raised yet: a run's first attempt (no earlier attempt can have written) raises its
    # fence with its first append, one script call and one round trip fewer per run.
    deferred: bool = False


@dataclass(frozen=True)
class QueueEntry:
    entry_id: str
    run_id: str
    handoffs: int = 0


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_queue_entry(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> QueueEntry:
    """A queue stream entry; `run_id` is '' for a deleted entry (XAUTOCLAIM/XPENDING nil)."""
    fields = fields or {}
    raw_handoffs = fields.get(b"handoffs", b"0")
    return QueueEntry(
        entry_id=_s(entry_id),
        run_id=_s(fields.get(b"run", b"")),
        handoffs=int(raw_handoffs) if raw_handoffs.isdigit() else 0,
    )


def parse_stream_events(entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> list[Event]:
    out = []
    for entry_id, fields in entries:
        seq = int(_s(entry_id).split("-", 1)[1])
        out.append(Event(seq=seq, type=_s(fields[b"t"]), data=fields[b"d"]))
    return out


ScriptCall = tuple[AsyncScript, list[str], list[Any]]


class RedisIO:
    """The run-level Redis operations used by both the API and the workers.

    With `batched=True` (a worker) the per-run scripts (fence, append, ack) of concurrent
    attempts share round trips: calls that arrive while a pipeline is in flight go out together
    in the next one (group commit, no timer). Each call still gets its own outcome: one run's
    fenced-out append fails that run alone."""

    def __init__(
        self, r: aioredis.Redis, keys: Keys, settings: Settings, *, batched: bool = False
    ) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self._append = r.register_script(APPEND)
        self._fence = r.register_script(FENCE)
        self._renew = r.register_script(RENEW)
        self._ack = r.register_script(ACK)
        self._ack_many = r.register_script(ACK_MANY)
        self._handoff = r.register_script(HANDOFF)
        self._cancel = r.register_script(CANCEL)
        self._release = r.register_script(RELEASE)
        self._queued = 0
        self._in_flight = 0
        self._kept: list[Any] = []  # see _pipeline
        self.scripts: Coalescer[ScriptCall, Any] | None = (
            Coalescer(self._flush_scripts, max_batch=512, name="redis-scripts") if batched else None
        )

    @property
    def idle(self) -> bool:
        """No grouped call is waiting or in flight (a worker closes its client after)."""
        return self._queued == 0 and self._in_flight == 0

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
        consumer (they touch only the queue key). Scripts Redis does not know (restarted,
        flushed) are loaded and their calls sent again (a NOSCRIPT call ran nothing)."""
        acks: dict[tuple[str, str, str], list[int]] = {}
        sent: list[ScriptCall] = []
        for i, (script, keys, args) in enumerate(calls):
            if script is self._ack:
                acks.setdefault((keys[0], args[0], args[1]), []).append(i)
            else:
                sent.append(calls[i])
        if not acks:
            return await self._send(calls)
        for (queue, group, consumer), idx in acks.items():
            ids = [calls[i][2][2] for i in idx]
            sent.append((self._ack_many, [queue], [group, consumer, *ids]))
        replies = await self._send(sent)
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

    async def _send(self, calls: list[ScriptCall]) -> list[Any]:
        results = await self._pipeline(calls)
        missing = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
        if missing:
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                script.sha = _s(await self.r.script_load(script.script))
            again = await self._pipeline([calls[i] for i in missing])
            for i, res in zip(missing, again, strict=True):
                results[i] = res
        return results

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        """EVALSHA each call on one pooled connection: one write, then the replies in order,
        under one timeout. A script's error reply is that call's outcome (an exception
        instance); a connection or timeout error fails them all (and drops the connection,
        which may still owe replies). Leaner than redis-py's pipeline, which packs in Python
        and arms a timer per reply: at ~30 calls per round trip that was a tenth of a busy
        worker's CPU."""
        payload = b"".join(
            [
                pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                for script, keys, args in calls
            ]
        )
        pool = self.r.connection_pool
        # Connections this method keeps between uses: the pool's checkout reads the socket
        # (with a timer) on every use to see it is clean, which ours always are.
        conn = self._kept.pop() if self._kept else await pool.get_connection()
        try:
            await conn.send_packed_command(payload)  # (a PING first when idle too long)
            async with asyncio.timeout(self.settings.redis_socket_timeout):
                read = conn._parser.read_response  # replies, errors included as values
                replies = [await read() for _ in calls]
        except BaseException:
            await conn.disconnect(nowait=True)
            await pool.release(conn)
            raise
        self._kept.append(conn)
        return replies

    # -- queue -------------------------------------------------------------------------------
    async def enqueue(self, run_id: str, handoffs: int = 0) -> str:
        fields: dict[str, str | int] = {"run": run_id}
        if handoffs:
            fields["handoffs"] = handoffs
        entry_id = await self.r.xadd(self.keys.queue, fields)
        return _s(entry_id)

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.keys.queue, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def renew(self, consumer: str, entry_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Renew this consumer's entries. Returns (lost, gone): the ids another consumer
        holds now, and the ids no one holds (Redis lost them)."""
        if not entry_ids:
            return [], []
        lost, gone = await self._renew(
            keys=[self.keys.queue], args=[self.keys.group, consumer, *entry_ids]
        )
        return [_s(x) for x in lost], [_s(x) for x in gone]

    async def ack(self, consumer: str, entry_id: str) -> bool:
        done = await self._script(
            self._ack, [self.keys.queue], [self.keys.group, consumer, entry_id]
        )
        return bool(done)

    async def handoff(self, consumer: str, entry: QueueEntry) -> bool:
        done = await self._handoff(
            keys=[self.keys.queue],
            args=[self.keys.group, consumer, entry.entry_id, entry.run_id, entry.handoffs + 1],
        )
        return bool(done)

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
        """`ack` for many entries in one call, now (not queued behind other calls)."""
        if not entry_ids:
            return []
        (reply,) = await self._send(
            [(self._ack_many, [self.keys.queue], [self.keys.group, consumer, *entry_ids])]
        )
        if isinstance(reply, BaseException):
            raise reply
        return [bool(int(x)) for x in reply]

    def append_call(
        self,
        run_id: str,
        attempt: int,
        events: Sequence[Event],
        *,
        ttl: int = 0,
        terminal: bool = False,
        fence: tuple[str, str] | None = None,
    ) -> ScriptCall:
        """The append script's call: copy events Postgres committed into the run's stream.
        `attempt` 0: a writer with no attempt (the API ending a queued run). `terminal`: the
        last event ends the run (Redis then refuses later seqs). `ttl` > 0 starts the run's
        expiry. `fence` (owner, entry id): this is the attempt's first write and raises its
        fence too (see `Fence.deferred`)."""
        owner, entry = fence or ("", "")
        args: list[Any] = [
            attempt,
            events[0].seq,
            ttl,
            owner,
            entry,
            self.settings.events_ttl_seconds * 24,
            1 if terminal else 0,
        ]
        for e in events:
            args.extend((e.type, e.data))
        return (self._append, [self.keys.run_meta(run_id), self.keys.events(run_id)], args)

    @staticmethod
    def append_outcome(run_id: str, attempt: int, res: Any) -> AppendResult | BaseException:
        if isinstance(res, BaseException):
            return res
        code = int(res[0])
        if code == 1:
            return AppendResult(cancel_requested=bool(int(res[1])))
        if code == -1:
            return LeaseLost(f"run {run_id}: attempt {attempt} fenced out by {int(res[1])}")
        return LeaseLost(f"run {run_id}: its log closed at seq {int(res[1])}")

    async def append(
        self,
        run_id: str,
        attempt: int,
        events: Sequence[Event],
        *,
        ttl: int = 0,
        terminal: bool = False,
        fence: tuple[str, str] | None = None,
    ) -> AppendResult:
        """`append_call`, sent (grouped with other calls when batched)."""
        call = self.append_call(run_id, attempt, events, ttl=ttl, terminal=terminal, fence=fence)
        out = self.append_outcome(run_id, attempt, await self._script(*call))
        if isinstance(out, BaseException):
            raise out
        return out

    async def run_now(self, calls: list[ScriptCall]) -> list[Any]:
        """Script calls in one round trip now (not queued behind other grouped calls); one
        reply (or error instance) per call. A Redis outage raises."""
        return await self._run_scripts(calls)

    async def server_run_id(self) -> str:
        """Redis' own run id (`INFO server`): a new one means a restarted (or failed-over)
        server, which may have lost what it had not persisted."""
        info = await self.r.info("server")
        return str(info.get("run_id", ""))

    async def take_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self.r.set(key, owner, nx=True, px=ttl_ms))

    async def release_lock(self, key: str, owner: str) -> None:
        await self._release(keys=[key], args=[owner])

    async def expire_run(self, run_id: str) -> None:
        ttl = self.settings.events_ttl_seconds
        async with self.r.pipeline(transaction=False) as p:
            p.expire(self.keys.events(run_id), ttl)
            p.expire(self.keys.run_meta(run_id), ttl)
            await p.execute()

    async def request_cancel(self, run_id: str) -> None:
        await self._cancel(
            keys=[self.keys.run_meta(run_id)], args=[self.settings.events_ttl_seconds * 24]
        )
        await self.r.publish(self.keys.cancel_channel, run_id)

    async def diagnostics(self, run_id: str) -> dict[str, Any]:
        """What Redis knows about a run's current attempt: fence, owner, its queue entry's
        pending state (consumer, idle, deliveries) and that consumer's last heartbeat."""
        meta = {_s(k): _s(v) for k, v in (await self.r.hgetall(self.keys.run_meta(run_id))).items()}
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
            rows = await self.r.xpending_range(
                self.keys.queue, self.keys.group, min=entry, max=entry, count=1
            )
            if rows:
                row = rows[0]
                idle_ms = int(row["time_since_delivered"])
                lease_ms = int(self.settings.lease_seconds * 1000)
                out["pending"] = {
                    "consumer": _s(row["consumer"]),
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
