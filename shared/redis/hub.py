"""The API process's event hub, its Redis side: one pub/sub connection holding a sharded
subscription (`SSUBSCRIBE`) per watched run, the notices read from it, and single-key reads of
a run's stream (`XRANGE`, `XREVRANGE`) on a small blocking pool. The fan-out itself is
`api.hub`'s.

A run's channel (`Keys.run_channel`) carries the run's hash tag: on a cluster it lives in the
run's slot, beside its event stream, and the append script (`scripts/append.lua`) publishes on
it in the same call that adds the events. A notice says which events were added ("first last
closed") and, when they are small, carries them (type, data length, data), so the hub fans them
out without reading the stream. Pub/sub is only the wake-up: the stream (and Postgres behind
it) is the truth, so a notice lost with a dropped connection is re-read from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.models import Event
from shared.redis.client import REDIS_ERRORS, Redis, blocking_pool_of
from shared.redis.codec import parse_stream_events, text
from shared.redis.keys import Keys

READER_WAIT_SECONDS = 10
CLUSTER_POLL_SECONDS = 0.01  # a cluster pub/sub's poll of one node (see `HubIO.listen`)
LAST_EVENTS_BATCH = 500  # XREVRANGE calls per pipeline when checking many runs' ends


@dataclass(frozen=True)
class Notice:
    """Events first..last of the run were added to its stream (`closed`: the last one is its
    terminal event); `events` holds them when the notice carried them, else it is empty."""

    run_id: str
    first: int
    last: int
    closed: bool
    events: list[Event]


@dataclass(frozen=True)
class Subscribed:
    """Redis confirmed the run's subscription: notices flow from here on."""

    run_id: str


def parse_notice(run_id: str, payload: bytes) -> Notice:
    """A notice as the append script writes it (see the module's docstring)."""
    head_end = payload.find(b"\n")
    if head_end < 0:
        head_end = len(payload)
    first_s, last_s, closed_s = payload[:head_end].split(b" ")
    first, last = int(first_s), int(last_s)
    events: list[Event] = []
    pos, size, seq = head_end + 1, len(payload), first
    while pos < size:
        type_end = payload.index(b"\n", pos)
        len_end = payload.index(b"\n", type_end + 1)
        start = len_end + 1
        end = start + int(payload[type_end + 1 : len_end])
        events.append(Event(seq=seq, type=payload[pos:type_end].decode(), data=payload[start:end]))
        seq += 1
        pos = end + 1
    return Notice(run_id, first, last, closed_s == b"1", events)


async def _next_reply(ps: Any, wait_seconds: float) -> Any:
    """The next reply on a one-server pub/sub connection, or None within `wait_seconds`, read
    from the connection itself: redis-py's `get_message` adds, per message, a retry wrapper,
    metrics hooks and a dict, which at a thousand notices a second was a seventh of a busy
    API's CPU (py-spy, bench.stream_ttft). Its health check still goes first (a PING once the
    connection has been quiet for `health_check_interval`), so a connection that died quietly
    fails here and the hub opens another; a closed one is not reconnected here either."""
    await ps.check_health()
    conn = ps.connection
    if conn is None or not conn.is_connected:
        raise RedisConnectionError("the hub's pub/sub connection is closed")
    return await conn.read_response(
        timeout=wait_seconds, disconnect_on_error=False, push_request=True
    )


def _per_node(ps: Any) -> bool:
    """A Redis Cluster's pub/sub: one connection per node, made as channels are subscribed."""
    return getattr(ps, "node_pubsub_mapping", None) is not None


class HubIO:
    def __init__(self, r: Redis, keys: Keys, *, readers: int) -> None:
        # `r` is a dedicated client: its one connection is the pub/sub connection. Subscribers'
        # reads go through `reader`, a separate blocking pool of `readers` connections with the
        # same settings and client name: a burst of subscribers waits for a free connection
        # there instead of opening more.
        self.r = r
        self.reader = blocking_pool_of(r, readers, READER_WAIT_SECONDS)
        self.keys = keys
        self._ps: Any = None

    async def open(self) -> None:
        """A fresh pub/sub connection, subscribed to nothing (a former one is closed). Its
        failures reach the caller: the client does not reconnect it by itself (it would not
        subscribe again what `change` subscribed), the caller opens another."""
        await self._close_pubsub()
        ps = self.r.pubsub()
        if not _per_node(ps):  # a cluster's pub/sub connects to each node as it subscribes
            await ps.connect()
            if ps.connection is not None:
                ps.connection.retry = Retry(NoBackoff(), 0)
        self._ps = ps

    async def change(self, watch: Sequence[str], unwatch: Sequence[str]) -> None:
        """Subscribe to the runs' channels in `watch` (Redis confirms each with a `Subscribed`
        from `listen`) and unsubscribe from those in `unwatch`. On one Redis, all in one write:
        a burst of new streams costs one send, not one per stream (a send to Redis is ~0.1 ms
        of CPU on a loaded VM). A cluster's pub/sub routes each channel to its slot's node."""
        ps, run_channel = self._ps, self.keys.run_channel
        conn = getattr(ps, "connection", None)
        if conn is None or _per_node(ps):
            for run_id in unwatch:
                await ps.sunsubscribe(run_channel(run_id))
            for run_id in watch:
                await ps.ssubscribe(run_channel(run_id))
            return
        commands = [("SUNSUBSCRIBE", run_channel(r)) for r in unwatch]
        commands += [("SSUBSCRIBE", run_channel(r)) for r in watch]
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def listen(self, wait_seconds: float) -> Notice | Subscribed | None:
        """The next notice or subscription confirmation, or None (nothing within
        `wait_seconds`, or a message of no interest)."""
        ps = self._ps
        if _per_node(ps):
            # A cluster's pub/sub polls its nodes in turn, each for the whole timeout, and a
            # subscribe waits for the poll in progress: poll briefly, so that a notice from
            # one node never waits behind a quiet other, nor a new stream's subscription.
            wait_seconds = min(wait_seconds, CLUSTER_POLL_SECONDS)
            if not ps.node_pubsub_mapping:  # nothing subscribed yet: nothing to poll
                await asyncio.sleep(wait_seconds)
                return None
            msg = await ps.get_sharded_message(timeout=wait_seconds)
            if msg is None:
                return None
            return self._message(msg["type"], msg["channel"], msg["data"])
        reply = await _next_reply(ps, wait_seconds)
        if not isinstance(reply, list) or len(reply) != 3:
            return None  # nothing came, or a health check's PONG
        return self._message(*reply)

    def _message(self, kind: Any, channel: Any, data: Any) -> Notice | Subscribed | None:
        if kind not in ("smessage", "ssubscribe", b"smessage", b"ssubscribe"):
            return None
        run_id = self.keys.run_of_channel(text(channel))
        if run_id is None:
            return None
        if kind in ("ssubscribe", b"ssubscribe"):
            return Subscribed(run_id)
        return parse_notice(run_id, data)

    async def events_after(self, run_id: str, after_seq: int, count: int) -> list[Event]:
        """Up to `count` events of the run after `after_seq` (XRANGE)."""
        entries = await self.reader.xrange(
            self.keys.events(run_id), min=f"0-{after_seq + 1}", max="+", count=count
        )
        return parse_stream_events(entries)

    async def last_events(self, run_ids: Sequence[str]) -> dict[str, Event | None]:
        """Each run's last event in Redis (None: its stream is empty or gone), one pipelined
        single-key XREVRANGE per run."""
        out: dict[str, Event | None] = {}
        for at in range(0, len(run_ids), LAST_EVENTS_BATCH):
            chunk = run_ids[at : at + LAST_EVENTS_BATCH]
            async with self.reader.pipeline(transaction=False) as p:
                for run_id in chunk:
                    p.xrevrange(self.keys.events(run_id), count=1)
                replies = await p.execute()
            for run_id, entries in zip(chunk, replies, strict=True):
                got = parse_stream_events(entries)
                out[run_id] = got[0] if got else None
        return out

    async def _close_pubsub(self) -> None:
        ps, self._ps = self._ps, None
        if ps is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await ps.aclose()

    async def aclose(self) -> None:
        await self._close_pubsub()
        await self.reader.aclose()
        await self.r.aclose()
