"""Admission state shared by every API process: the kill switch, the API-key epoch, the queue's
length, the per-user submit token buckets (bucket.lua) and the per-user SSE slots (take_slot.lua,
refresh_slot.lua). The decisions are `api.admission`'s; this module reads and writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.exceptions import NoScriptError

from shared.redis import scripts
from shared.redis.client import Redis
from shared.redis.codec import raise_first_error
from shared.redis.keys import Keys


@dataclass(frozen=True)
class Gate:
    """What one round trip tells about a group of submits."""

    paused: bool  # the kill switch is on
    backlog: int  # XLEN of the queue
    epoch: bytes  # the API-key epoch now
    granted: dict[str, tuple[int, float]]  # per user: tokens taken, seconds to the next one
    slots: list[bool]  # per slot asked for: taken (False: the user's cap was reached)


class AdmissionIO:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._bucket = r.register_script(scripts.BUCKET)
        self._take = r.register_script(scripts.TAKE_SLOT)
        self._refresh = r.register_script(scripts.REFRESH_SLOT)

    async def gate(
        self,
        wanted: Mapping[str, int],
        rate: float,
        burst: int,
        slots: Sequence[tuple[str, str]] = (),
        slot_cap: int = 0,
        slot_ttl: float = 0.0,
    ) -> Gate:
        """The switch, the backlog and the key epoch, and from each user's bucket as many
        tokens as `wanted` (or what there is), in one round trip. With `slots` ((user, slot)
        pairs), each slot is taken too (`take_slot`, under `slot_cap` per user) in the same
        round trip. Any error raises."""
        users = list(wanted)
        head = 2 + 2 * self.keys.shards  # the switch, the epoch, each shard's two XLENs
        scripted = head  # where the script calls' replies begin
        for _ in range(2):
            # EVALSHA, not the registered Script: in a pipeline redis-py sends SCRIPT EXISTS
            # first on every call, a second round trip on the hottest path.
            async with self.r.pipeline(transaction=False) as p:
                p.exists(self.keys.paused)
                p.get(self.keys.key_epoch)
                for shard in range(self.keys.shards):
                    p.xlen(self.keys.shard_queue(shard))
                    p.xlen(self.keys.held(shard))
                for user, slot in slots:
                    zset = self.keys.sse_slots(user)
                    p.evalsha(self._take.sha, 1, zset, slot, slot_cap, slot_ttl)
                for user in users:
                    bucket = self.keys.submit_bucket(user)
                    p.evalsha(self._bucket.sha, 1, bucket, rate, burst, wanted[user])
                replies = await p.execute(raise_on_error=False)
            if not any(isinstance(x, NoScriptError) for x in replies[scripted:]):
                break
            # Redis restarted empty: load them once more
            await self.r.script_load(scripts.BUCKET)
            await self.r.script_load(scripts.TAKE_SLOT)
        raise_first_error(replies)
        paused, epoch = replies[:2]
        buckets = head + len(slots)
        return Gate(
            paused=bool(paused),
            backlog=sum(int(x) for x in replies[2:head]),
            epoch=epoch or b"0",
            granted={
                u: (int(t[0]), float(t[1])) for u, t in zip(users, replies[buckets:], strict=True)
            },
            slots=[bool(int(x)) for x in replies[head:buckets]],
        )

    async def give_back(self, user: str, tokens: int, rate: float, burst: int) -> None:
        """Put `tokens` taken from the user's bucket back (a submit refused after the take)."""
        await self._bucket(keys=[self.keys.submit_bucket(user)], args=[rate, burst, -tokens])

    async def aclose(self) -> None:
        await self.r.aclose()

    # -- operator switches -------------------------------------------------------------------
    async def set_paused(self, reason: str | None) -> None:
        """Pause submits with a reason, or resume them with None."""
        if reason is None:
            await self.r.delete(self.keys.paused)
        else:
            await self.r.set(self.keys.paused, reason or "paused")

    async def paused_reason(self) -> str | None:
        raw: bytes | None = await self.r.get(self.keys.paused)
        return None if raw is None else raw.decode(errors="replace")

    async def key_epoch(self) -> bytes:
        value: bytes | None = await self.r.get(self.keys.key_epoch)
        return value or b"0"

    async def bump_key_epoch(self) -> int:
        return int(await self.r.incr(self.keys.key_epoch))

    # -- SSE slots ---------------------------------------------------------------------------
    async def take_slot(self, user: str, slot: str, cap: int, ttl: float) -> bool:
        """Drop the user's expired slots, then take `slot` if fewer than `cap` are held."""
        got = await self._take(keys=[self.keys.sse_slots(user)], args=[slot, cap, ttl])
        return bool(int(got))

    async def refresh_slot(self, user: str, slot: str, ttl: float) -> None:
        await self._refresh(keys=[self.keys.sse_slots(user)], args=[slot, ttl])

    async def release_slot(self, user: str, slot: str) -> None:
        await self.r.zrem(self.keys.sse_slots(user), slot)

    async def open_slots(self, user: str, now: float) -> int:
        """Slots still live at `now` (unix seconds)."""
        return int(await self.r.zcount(self.keys.sse_slots(user), now, "+inf"))
