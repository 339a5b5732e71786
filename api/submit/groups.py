"""Grouped submits: the `POST /runs` (without a thread) of every request that arrives while the
previous group is being committed goes into the next group, which costs

    one Redis round trip   the kill switch, the backlog, the API-key epoch, and one token-bucket
                           call per user for as many tokens as that user has submits in the group
    one Postgres statement the runs, inserted and committed together (INSERT ... SELECT unnest)
    one Redis round trip   their queue entries (`RedisIO.enqueue_many`)

whatever the group's size, instead of five round trips per request. Idempotency-Keys go in the
same statement (the key and its run inserted together; a key that is live already leaves its
run uninserted and the request replays the key's run on the alone path). An idle API
answers a lone submit at once (a group of one): load sets the group size, not a timer
(`shared.batching`).

Nothing about durability changes: a submit is answered 202 only after its row is committed and
its entry added; an entry Redis refused takes its row back out (that submit answers 503).

These leave the group for the alone path (`api.submit.pipeline`), as a `Detour`:
- `STALE_KEY`: a cached API-key look-up made under an older key epoch (a key was revoked
  since): the request is authenticated again from Postgres;
- `NEAR_CAP`: a user whose in-flight count is near the cap: the exact count under the user's
  lock decides (`store.submits.insert_run`), the rate token already taken;
- `ALONE`: a group Postgres refused for a reason other than being away (each request is retried
  alone, so one bad row cannot fail the others), or an Idempotency-Key that is live (a retry),
  that appears twice in one group, or whose user has no token left (a retry is answered
  without admission).

The in-flight cap without a count per request: `InFlightGate` counts a user's queued + running
runs at most once a second (one statement for every user of a group) and adds the runs this
process inserted since. Between two counts the other API processes can add at most what the
user's rate bucket lets through in that second, so a user whose count plus that margin is below
the cap cannot pass it; closer to the cap, every submit takes the locked path.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from enum import StrEnum

import asyncpg
import structlog

from api.admission import Admission, BatchVerdict, rate_refusal, streams_refusal
from api.errors import redis_failure
from api.submit.enqueue import DOWN, enqueue
from api.submit.request import SubmitRequest
from shared.batching import Coalescer
from shared.config import Settings
from shared.errors import Unavailable
from shared.models import QueuedRun
from shared.redis.client import REDIS_ERRORS, Redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import NewRun, Store, Submitted
from shared.store.submits import UNLOCKED_HEADROOM

log = structlog.get_logger("longrun.api.submit")

COUNT_FRESH_SECONDS = 1.0
GATE_MAX_USERS = 10_000
MAX_GROUP = 256
KEY_SWEEP_SECONDS = 10.0
GROUPS_IN_FLIGHT = 2


class Detour(StrEnum):
    """Why a submit left its group for the alone path (the module's docstring says when)."""

    STALE_KEY = "stale_key"
    NEAR_CAP = "near_cap"
    ALONE = "alone"


# One submit's outcome in a group: its run, its way out of the group, or its error.
GroupResult = Submitted | Detour | BaseException


class InFlightGate:
    """Which users are far enough below the in-flight cap to skip the exact, locked count."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.cap = settings.max_runs_in_flight_per_user
        # What other processes may add between two counts, plus what may be in flight now.
        self.margin = UNLOCKED_HEADROOM + math.ceil(
            settings.submit_rate_per_second * COUNT_FRESH_SECONDS
        )
        self._counts: dict[str, tuple[float, int]] = {}  # user -> (counted at, count + ours)

    async def clear(self, wanted: dict[str, int]) -> set[str]:
        """The users whose `wanted` submits may go ahead without the lock."""
        now = time.monotonic()
        stale = [
            u
            for u in wanted
            if (seen := self._counts.get(u)) is None or now - seen[0] > COUNT_FRESH_SECONDS
        ]
        if stale:
            if len(self._counts) + len(stale) > GATE_MAX_USERS:
                self._counts = {
                    u: c for u, c in self._counts.items() if now - c[0] <= COUNT_FRESH_SECONDS
                }
            counts = await self.store.submits.in_flight_counts(stale)
            for user, n in counts.items():
                self._counts[user] = (now, n)
        return {u for u, n in wanted.items() if self._counts[u][1] + n + self.margin < self.cap}

    def added(self, user: str, n: int) -> None:
        seen = self._counts.get(user)
        if seen is not None:  # else forgotten meanwhile: the next group counts afresh
            self._counts[user] = (seen[0], seen[1] + n)


class SubmitGroups:
    def __init__(
        self, store: Store, r: Redis, keys: Keys, admission: Admission, settings: Settings
    ) -> None:
        self.store = store
        self.rio = RedisIO(r, keys, settings)
        self.admission = admission
        self.gate = InFlightGate(store, settings)
        self.streams_cap = settings.max_sse_per_user
        self._giving_back: set[asyncio.Task[None]] = set()
        self.key_ttl_seconds = float(settings.idempotency_ttl_seconds)
        self._swept = 0.0
        self.coalescer: Coalescer[SubmitRequest, Submitted | Detour] = Coalescer(
            self._flush, max_batch=MAX_GROUP, concurrency=GROUPS_IN_FLIGHT, name="submit"
        )

        # Called with each group's size and duration in seconds (the API's /metrics).
        self.on_group: Callable[[int, float], None] | None = None

    async def submit(self, req: SubmitRequest) -> Submitted | Detour:
        """The run, committed and queued; or the way it must go on alone. Raises the group's
        refusal or failure (an ApiError, Unavailable)."""
        return await self.coalescer.call(req)

    async def _flush(self, reqs: list[SubmitRequest]) -> Sequence[GroupResult]:
        start = time.perf_counter()
        try:
            return await self._group(reqs)
        finally:
            if self.on_group is not None:
                self.on_group(len(reqs), time.perf_counter() - start)

    async def _group(self, reqs: list[SubmitRequest]) -> Sequence[GroupResult]:
        outcomes: list[GroupResult | None] = [None] * len(reqs)
        # Submit-and-stream requests: their SSE slots, taken in the admission's round trip.
        slots = [(i, r.new.user_id, r.slot) for i, r in enumerate(reqs) if r.slot is not None]
        try:
            verdict = await self.admission.check_batch(
                Counter(r.new.user_id for r in reqs), [(u, s) for _, u, s in slots]
            )
        except REDIS_ERRORS as exc:  # away, or refusing (out of memory, MOVED ...)
            raise redis_failure(exc, DOWN) from exc
        if (refusal := verdict.refusal) is not None:
            return [refusal.as_error()] * len(reqs)
        full = {i for (i, _, _), taken in zip(slots, verdict.slots, strict=True) if not taken}
        admitted, unused = _triage(reqs, verdict, outcomes, full, self.streams_cap)
        for user, n in unused.items():  # what the refused streams took, back (off this path)
            task = asyncio.create_task(self.admission.give_back(user, n))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)
        clear = await self.gate.clear(Counter(reqs[i].new.user_id for i in admitted))
        go = []
        for i in admitted:
            if reqs[i].new.user_id in clear:
                go.append(i)
            else:
                outcomes[i] = Detour.NEAR_CAP
        if go:
            news = [reqs[i].new for i in go]
            keys = [reqs[i].key for i in go]
            for i, sub in zip(go, await self._commit(news, keys), strict=True):
                outcomes[i] = sub
            if any(keys):
                await self._sweep_keys()
        return [o if o is not None else Detour.ALONE for o in outcomes]

    async def _sweep_keys(self) -> None:
        """Expired idempotency keys go, a thousand at most every KEY_SWEEP_SECONDS."""
        now = time.monotonic()
        if now - self._swept < KEY_SWEEP_SECONDS:
            return
        self._swept = now
        try:
            await self.store.submits.sweep_expired_keys()
        except (Unavailable, asyncpg.PostgresError):
            log.warning("idempotency_sweep_failed")

    async def _commit(
        self, news: list[NewRun], keys: list[tuple[str, bytes] | None] | None = None
    ) -> list[GroupResult]:
        try:
            inserted = await self.store.submits.insert_runs(news, keys, self.key_ttl_seconds)
        except asyncpg.PostgresError:
            return [Detour.ALONE for _ in news]  # each alone: one bad row fails only itself
        for user, n in Counter(n.user_id for n in news).items():
            self.gate.added(user, n)
        rows = [(new, row) for new, row in zip(news, inserted, strict=True) if row is not None]
        planned = [
            (QueuedRun(run_id, new.user_id, new.priority), new.start_at)
            for new, (run_id, _) in rows
        ]
        failures = await enqueue(self.store, self.rio, planned)
        answers = iter(
            failure
            or Submitted(run_id, "queued", None, created_at, replayed=False, start_at=new.start_at)
            for (new, (run_id, created_at)), failure in zip(rows, failures, strict=True)
        )
        # A key that was live already: its run is replayed on the alone path.
        return [Detour.ALONE if row is None else next(answers) for row in inserted]


def _triage(
    reqs: list[SubmitRequest],
    verdict: BatchVerdict,
    outcomes: list[GroupResult | None],
    full: set[int],
    streams_cap: int,
) -> tuple[list[int], dict[str, int]]:
    """Which requests the admission verdict lets through (indexes), the others' outcomes set;
    and per user, the tokens taken for streams refused their slot (`full`), to give back."""
    tokens = {u: taken for u, (taken, _) in verdict.granted.items()}
    admitted: list[int] = []
    keys_seen: set[tuple[str, str]] = set()
    refused_streams: Counter[str] = Counter()
    for i, r in enumerate(reqs):
        user, epoch = r.new.user_id, r.who.epoch
        if i in full:  # first, as when the slot was taken before the submit: it takes nothing
            outcomes[i] = streams_refusal(streams_cap).as_error()
            refused_streams[user] += 1
        elif epoch is not None and not hmac.compare_digest(epoch, verdict.epoch):
            outcomes[i] = Detour.STALE_KEY
        elif r.key is not None and (tokens[user] <= 0 or (user, r.key[0]) in keys_seen):
            # Perhaps a retry (replayed without admission), or the same key twice in one
            # group: alone, after this group, the key's look-up decides.
            outcomes[i] = Detour.ALONE
        elif tokens[user] <= 0:
            outcomes[i] = rate_refusal(verdict.granted[user][1]).as_error()
        else:
            tokens[user] -= 1
            admitted.append(i)
            if r.key is not None:
                keys_seen.add((user, r.key[0]))
    unused = {u: min(n, tokens[u]) for u, n in refused_streams.items() if tokens[u] > 0}
    return admitted, unused
