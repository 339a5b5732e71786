"""Admission control shared by every API process through Redis: the kill switch, the global
backlog limit, a per-user submit rate (a token bucket in Lua), and a per-user cap on open SSE
connections. (The per-user cap on runs in flight is counted in Postgres, the truth, in the same
transaction as the insert: see `api.submit`.)

    POST /runs ── paused? (flag or LONGRUN_ACCEPT_RUNS=false) ── 503 paused
               ── XLEN queue >= max_backlog ──────────────────── 503 backlog_full
               ── bucket empty ───────────────────────────────── 429 rate_limited
    (one pipelined round trip for the three)

SSE slots are members of a per-user sorted set scored by their expiry: a live stream refreshes
its slot; a closed stream removes it; a crashed process's slots simply expire. So a slot never
outlives its connection by more than `SLOT_TTL` seconds, whatever happens to the process.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError

from shared.config import Settings
from shared.keys import Keys
from shared.redisio import REDIS_DOWN
from shared.switches import key_epoch_key, pause_key

log = structlog.get_logger("longrun.api.admission")

PAUSED_RETRY_AFTER = 30
BACKLOG_RETRY_AFTER = 5
IN_FLIGHT_RETRY_AFTER = 5
SLOT_TTL = 60.0

# KEYS: bucket hash. ARGV: rate (tokens/s), burst, [wanted, default 1]. Takes as many of the
# wanted tokens as there are. Returns {tokens taken, seconds until the next token is there}.
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = math.min(wanted, math.floor(tokens))
tokens = tokens - allowed
local wait = 0
if allowed < wanted then
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

# KEYS: slots zset. ARGV: member, cap, ttl. Drops expired slots, then takes one if under cap.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""

# KEYS: slots zset. ARGV: member, ttl. Extends a slot this connection still holds.
_REFRESH_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return n
"""


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    detail: str
    retry_after: int


def submit_refusal(
    *,
    accept_runs: bool,
    paused: bool,
    backlog: int,
    max_backlog: int,
    rate_allowed: bool,
    rate_wait: float,
) -> Refusal | None:
    """Why a submit is refused, or None: the kill switch, then the backlog, then the rate."""
    if paused or not accept_runs:
        return Refusal(503, "paused", "the service is not accepting runs", PAUSED_RETRY_AFTER)
    if backlog >= max_backlog:
        return Refusal(
            503, "backlog_full", "too many runs are waiting: retry later", BACKLOG_RETRY_AFTER
        )
    if not rate_allowed:
        return rate_refusal(rate_wait)
    return None


@dataclass(frozen=True)
class BatchVerdict:
    refusal: Refusal | None  # for the whole group (paused, backlog full)
    epoch: bytes  # the API-key epoch now
    granted: dict[str, tuple[int, float]]  # per user: tokens taken, seconds to the next one


def rate_refusal(wait: float) -> Refusal:
    return Refusal(429, "rate_limited", "too many submits: slow down", max(1, math.ceil(wait)))


class Admission:
    def __init__(self, r: aioredis.Redis, keys: Keys, settings: Settings) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self._bucket = r.register_script(_BUCKET)
        self._take = r.register_script(_TAKE_SLOT)
        self._refresh = r.register_script(_REFRESH_SLOT)

    async def check_submit(self, user: str) -> Refusal | None:
        """One round trip. Redis being down raises (the submit could not enqueue anyway)."""
        s = self.settings
        bucket = self.keys.scoped("rate", "submit", user)
        for _ in range(2):
            # EVALSHA, not the registered Script: in a pipeline redis-py sends SCRIPT EXISTS
            # first on every call, a second round trip on the hottest path.
            async with self.r.pipeline(transaction=False) as p:
                p.exists(pause_key(self.keys))
                p.xlen(self.keys.queue)
                p.evalsha(self._bucket.sha, 1, bucket, s.submit_rate_per_second, s.submit_burst)
                paused, backlog, taken = await p.execute(raise_on_error=False)
            if not isinstance(taken, NoScriptError):
                break
            await self.r.script_load(_BUCKET)  # Redis restarted empty: load it once more
        if isinstance(taken, Exception):
            raise taken
        allowed, wait = taken
        return submit_refusal(
            accept_runs=s.accept_runs,
            paused=bool(paused),
            backlog=int(backlog),
            max_backlog=s.max_backlog,
            rate_allowed=bool(int(allowed)),
            rate_wait=float(wait),
        )

    async def check_batch(self, wanted: dict[str, int]) -> BatchVerdict:
        """Admission for a group of submits in one round trip: the switches and the backlog
        once, each user's bucket once for as many tokens as that user has submits, and the
        API-key epoch (so cached key look-ups are checked once per group, not per request).
        Redis being down raises."""
        s = self.settings
        users = list(wanted)
        for _ in range(2):
            async with self.r.pipeline(transaction=False) as p:
                p.exists(pause_key(self.keys))
                p.xlen(self.keys.queue)
                p.get(key_epoch_key(self.keys))
                for user in users:
                    p.evalsha(
                        self._bucket.sha,
                        1,
                        self.keys.scoped("rate", "submit", user),
                        s.submit_rate_per_second,
                        s.submit_burst,
                        wanted[user],
                    )
                replies = await p.execute(raise_on_error=False)
            if not any(isinstance(x, NoScriptError) for x in replies[3:]):
                break
            await self.r.script_load(_BUCKET)  # Redis restarted empty: load it once more
        for x in replies:
            if isinstance(x, Exception):
                raise x
        paused, backlog, epoch = replies[:3]
        refusal = submit_refusal(
            accept_runs=s.accept_runs,
            paused=bool(paused),
            backlog=int(backlog),
            max_backlog=s.max_backlog,
            rate_allowed=True,
            rate_wait=0.0,
        )
        granted = {u: (int(t[0]), float(t[1])) for u, t in zip(users, replies[3:], strict=True)}
        return BatchVerdict(refusal=refusal, epoch=epoch or b"0", granted=granted)

    def _slots(self, user: str) -> str:
        return self.keys.scoped("sse", user)

    async def take_sse_slot(self, user: str) -> str | None:
        """A slot id, or None when the user has `max_sse_per_user` streams open. With Redis
        down the stream is let through (it may still be served from Postgres)."""
        slot = uuid.uuid4().hex
        try:
            got = await self._take(
                keys=[self._slots(user)], args=[slot, self.settings.max_sse_per_user, SLOT_TTL]
            )
        except REDIS_DOWN:
            log.warning("sse_slot_unchecked", reason="redis")
            return slot
        return slot if int(got) else None

    async def refresh_sse_slot(self, user: str, slot: str) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            await self._refresh(keys=[self._slots(user)], args=[slot, SLOT_TTL])

    async def release_sse_slot(self, user: str, slot: str) -> None:
        with contextlib.suppress(*REDIS_DOWN):  # otherwise it expires within SLOT_TTL
            await self.r.zrem(self._slots(user), slot)

    async def open_sse_slots(self, user: str, now: float) -> int:
        """Slots still live at `now` (unix seconds)."""
        return int(await self.r.zcount(self._slots(user), now, "+inf"))
