"""The API process's event hub, its Redis side: one blocking `XREAD` over every watched run's
stream and the process's own wake stream, the wake-ups, and the subscribers' `XRANGE` reads on
a small blocking pool. The fan-out itself is `api.hub`'s.

The wake stream (`Keys.hub_wake`) lives as long as its process: every write sets its TTL and
`keep_alive` renews it, so a crashed process's stream expires within the TTL.
"""

from __future__ import annotations

import contextlib
import uuid

from shared.models import Event
from shared.redis.client import REDIS_ERRORS, Redis, blocking_pool_of
from shared.redis.codec import parse_stream_events, text
from shared.redis.keys import Keys

READER_WAIT_SECONDS = 10


class HubIO:
    def __init__(self, r: Redis, keys: Keys, *, readers: int, wake_ttl_seconds: float) -> None:
        # `r` is a dedicated client: its one connection sits in XREAD BLOCK. Subscribers' reads
        # and the wake-ups go through `reader`, a separate blocking pool of `readers`
        # connections with the same settings and client name: a burst of subscribers waits for
        # a free connection there instead of running the blocking read out of its own.
        self.r = r
        self.reader = blocking_pool_of(r, readers, READER_WAIT_SECONDS)
        self.keys = keys
        self.wake_key = keys.hub_wake(uuid.uuid4().hex)
        self.wake_ttl_ms = max(1, int(wake_ttl_seconds * 1000))
        self._wake_id = "0-0"

    async def read(
        self, cursors: dict[str, int], count: int, block_ms: int
    ) -> list[tuple[str, list[Event]]]:
        """Events after each stream's cursor (stream key -> last seq seen), waiting up to
        `block_ms` for one, or for a `wake`; [(stream key, events)] for streams that had any."""
        streams = {key: f"0-{seq}" for key, seq in cursors.items()}
        streams[self.wake_key] = self._wake_id
        reply = await self.r.xread(streams, count=count, block=block_ms)
        out = []
        for raw_key, entries in reply or []:
            key = text(raw_key)
            if key == self.wake_key:
                self._wake_id = text(entries[-1][0])
            elif entries:
                out.append((key, parse_stream_events(entries)))
        return out

    async def wake(self) -> None:
        """Break the blocking read (it then reads the streams watched now)."""
        async with self.reader.pipeline(transaction=False) as p:
            p.xadd(self.wake_key, {"w": 1}, maxlen=1, approximate=False)
            p.pexpire(self.wake_key, self.wake_ttl_ms)
            await p.execute()

    async def keep_alive(self) -> None:
        """Renew the wake stream's TTL (nothing when it does not exist)."""
        await self.reader.pexpire(self.wake_key, self.wake_ttl_ms)

    async def events_after(self, run_id: str, after_seq: int, count: int) -> list[Event]:
        """Up to `count` events of the run after `after_seq` (XRANGE)."""
        entries = await self.reader.xrange(
            self.keys.events(run_id), min=f"0-{after_seq + 1}", max="+", count=count
        )
        return parse_stream_events(entries)

    async def aclose(self) -> None:
        """Delete the wake stream (best effort: its TTL ends it anyway), close the clients."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.reader.delete(self.wake_key)
        await self.reader.aclose()
        await self.r.aclose()
