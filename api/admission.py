"""Admission control shared by every API process through Redis: the kill switch, the global
backlog limit, a per-user submit rate (a token bucket, `shared/redis/scripts/bucket.lua`), and a
per-user cap on open SSE connections. (The per-user cap on runs in flight is counted in
Postgres, the truth, in the same transaction as the insert: see `shared/store/submits.py`.)
The decisions are here; the reads and writes are `shared.redis.admission`'s.

    POST /runs ── paused? (flag or LONGRUN_ACCEPT_RUNS=false) ── 503 paused
               ── XLEN queue >= max_backlog ──────────────────── 503 backlog_full
               ── bucket empty ───────────────────────────────── 429 rate_limited
    (one pipelined round trip for the three; POST /runs/stream's SSE slot rides in it too:
     a stream refused its slot takes no token, or gets the group's back)

SSE slots are members of a per-user sorted set scored by their expiry: a live stream refreshes
its slot; a closed stream removes it; a crashed process's slots simply expire. So a slot never
outlives its connection by more than `SLOT_TTL` seconds, whatever happens to the process.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from api.errors import ApiError
from shared.config import Settings
from shared.redis.admission import AdmissionIO
from shared.redis.client import REDIS_DOWN, Redis
from shared.redis.keys import Keys

log = structlog.get_logger("longrun.api.admission")

PAUSED_RETRY_AFTER = 30
BACKLOG_RETRY_AFTER = 5
IN_FLIGHT_RETRY_AFTER = 5
STREAMS_RETRY_AFTER = 5
SLOT_TTL = 60.0


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    detail: str
    retry_after: int

    def as_error(self) -> ApiError:
        return ApiError(self.status, self.code, self.detail, {"Retry-After": str(self.retry_after)})


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
    slots: list[bool] = field(default_factory=list)  # per slot asked for: taken


def rate_refusal(wait: float) -> Refusal:
    return Refusal(429, "rate_limited", "too many submits: slow down", max(1, math.ceil(wait)))


def streams_refusal(cap: int) -> Refusal:
    return Refusal(
        429, "too_many_streams", f"at most {cap} open event streams per user", STREAMS_RETRY_AFTER
    )


def new_slot() -> str:
    """An SSE slot's id (a member of the user's set)."""
    return uuid.uuid4().hex


class Admission:
    def __init__(self, r: Redis, keys: Keys, settings: Settings) -> None:
        self.io = AdmissionIO(r, keys)
        self.settings = settings

    async def check_submit(self, user: str) -> Refusal | None:
        """One round trip. Redis being down raises (the submit could not enqueue anyway)."""
        s = self.settings
        gate = await self.io.gate({user: 1}, s.submit_rate_per_second, s.submit_burst)
        allowed, wait = gate.granted[user]
        return submit_refusal(
            accept_runs=s.accept_runs,
            paused=gate.paused,
            backlog=gate.backlog,
            max_backlog=s.max_backlog,
            rate_allowed=bool(allowed),
            rate_wait=wait,
        )

    async def check_batch(
        self, wanted: dict[str, int], slots: Sequence[tuple[str, str]] = ()
    ) -> BatchVerdict:
        """Admission for a group of submits in one round trip: the switches and the backlog
        once, each user's bucket once for as many tokens as that user has submits, the
        API-key epoch (so cached key look-ups are checked once per group, not per request),
        and the SSE slot of each submit-and-stream ((user, slot) pairs). Redis being down
        raises."""
        s = self.settings
        gate = await self.io.gate(
            wanted,
            s.submit_rate_per_second,
            s.submit_burst,
            slots,
            s.max_sse_per_user,
            SLOT_TTL,
        )
        refusal = submit_refusal(
            accept_runs=s.accept_runs,
            paused=gate.paused,
            backlog=gate.backlog,
            max_backlog=s.max_backlog,
            rate_allowed=True,
            rate_wait=0.0,
        )
        return BatchVerdict(
            refusal=refusal, epoch=gate.epoch, granted=gate.granted, slots=gate.slots
        )

    async def give_back(self, user: str, tokens: int) -> None:
        """Tokens taken for submits refused afterwards go back to the user's bucket (best
        effort: with Redis away they come back at the bucket's rate anyway)."""
        s = self.settings
        with contextlib.suppress(*REDIS_DOWN):
            await self.io.give_back(user, tokens, s.submit_rate_per_second, s.submit_burst)

    async def key_epoch(self) -> bytes:
        """The API-key epoch now (cached key look-ups are valid only under it)."""
        return await self.io.key_epoch()

    async def take_sse_slot(self, user: str, slot: str | None = None) -> str | None:
        """A slot id (`slot`, or a new one), or None when the user has `max_sse_per_user`
        streams open. With Redis down the stream is let through (it may still be served from
        Postgres)."""
        slot = slot or new_slot()
        try:
            got = await self.io.take_slot(user, slot, self.settings.max_sse_per_user, SLOT_TTL)
        except REDIS_DOWN:
            log.warning("sse_slot_unchecked", reason="redis")
            return slot
        return slot if got else None

    async def stream_slot(self, user: str, slot: str | None = None) -> str:
        """`take_sse_slot`, refused: the slot's id, or 429 `too_many_streams` raised (every
        event stream takes its slot through here: `GET /runs/{id}/events`, and a
        `POST /runs/stream` that goes alone; a grouped one takes it in its group's round trip,
        `check_batch`)."""
        got = await self.take_sse_slot(user, slot)
        if got is None:
            raise streams_refusal(self.settings.max_sse_per_user).as_error()
        return got

    async def refresh_sse_slot(self, user: str, slot: str) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            await self.io.refresh_slot(user, slot, SLOT_TTL)

    async def release_sse_slot(self, user: str, slot: str) -> None:
        with contextlib.suppress(*REDIS_DOWN):  # otherwise it expires within SLOT_TTL
            await self.io.release_slot(user, slot)

    async def open_sse_slots(self, user: str, now: float) -> int:
        """Slots still live at `now` (unix seconds)."""
        return await self.io.open_slots(user, now)
