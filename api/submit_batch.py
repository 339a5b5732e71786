"""Grouped submits: the `POST /runs` (without a thread) of every request that arrives while the
previous group is being committed goes into the next group, which costs

    one Redis round trip   the kill switch, the backlog, the API-key epoch, and one token-bucket
                           call per user for as many tokens as that user has submits in the group
    one Postgres statement the runs, inserted and committed together (INSERT ... SELECT unnest)
    one Redis round trip   their queue entries (`RedisIO.enqueue_many`)

whatever the group's size, instead of five round trips per request. Idempotency-Keys go in the
same statement (the key and its run inserted together; a key that is live already leaves its
run uninserted and the request replays the key's run on the per-request path). An idle API
answers a lone submit at once (a group of one): load sets the group size, not a timer
(`shared.batching`).

Nothing about durability changes: a submit is answered 202 only after its row is committed and
its entry added; an entry Redis refused takes its row back out (that submit answers 503).

These leave the group for the per-request path in `api.runs`:
- a cached API-key look-up made under an older key epoch (a key was revoked since): `StaleKey`,
  the request is authenticated again from Postgres;
- a user whose in-flight count is near the cap: `NeedsLock`, the exact count under the user's
  lock decides (`store.submits.insert_run`);
- a group Postgres refused for a reason other than being away: `Fallback`, each request is
  retried alone, so one bad row cannot fail the others;
- an Idempotency-Key that is live (a retry), that appears twice in one group, or whose user
  has no token left (a retry is answered without admission): `Fallback`.

The in-flight cap without a count per request: `InFlightGate` counts a user's queued + running
runs at most once a second (one statement for every user of a group) and adds the runs this
process inserted since. Between two counts the other API processes can add at most what the
user's rate bucket lets through in that second, so a user whose count plus that margin is below
the cap cannot pass it; closer to the cap, every submit takes the locked path.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from api.admission import Admission, BatchVerdict, rate_refusal
from api.errors import ApiError, redis_failure
from shared.batching import Coalescer
from shared.config import Settings
from shared.errors import Unavailable
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
DOWN = "redis is unavailable: the run was not accepted"


class StaleKey(Exception):
    """The request's cached key look-up predates the current key epoch."""


class NeedsLock(Exception):
    """The user is near the in-flight cap: decide under the user's lock."""


class Fallback(Exception):
    """The group could not be inserted as a whole: submit this one alone."""


@dataclass(frozen=True)
class Ticket:
    new: NewRun
    # The epoch a cached API-key look-up was made under, to confirm against the current one;
    # None when the caller was authenticated from Postgres (or a JWT) in this request.
    epoch: bytes | None
    # The Idempotency-Key and the body's digest, when the request has one.
    key: tuple[str, bytes] | None = None


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
        self.key_ttl_seconds = float(settings.idempotency_ttl_seconds)
        self._swept = 0.0
        self.coalescer: Coalescer[Ticket, Submitted] = Coalescer(
            self._flush, max_batch=MAX_GROUP, concurrency=GROUPS_IN_FLIGHT, name="submit"
        )

        # Called with each group's size and duration in seconds (the API's /metrics).
        self.on_group: Callable[[int, float], None] | None = None

    async def submit(self, ticket: Ticket) -> Submitted:
        return await self.coalescer.call(ticket)

    async def _flush(self, tickets: list[Ticket]) -> Sequence[Submitted | BaseException]:
        start = time.perf_counter()
        try:
            return await self._group(tickets)
        finally:
            if self.on_group is not None:
                self.on_group(len(tickets), time.perf_counter() - start)

    async def _group(self, tickets: list[Ticket]) -> Sequence[Submitted | BaseException]:
        outcomes: list[Submitted | BaseException | None] = [None] * len(tickets)
        try:
            verdict = await self.admission.check_batch(Counter(t.new.user_id for t in tickets))
        except REDIS_ERRORS as exc:  # away, or refusing (out of memory, MOVED ...)
            raise redis_failure(exc, DOWN) from exc
        if (refusal := verdict.refusal) is not None:
            headers = {"Retry-After": str(refusal.retry_after)}
            return [ApiError(refusal.status, refusal.code, refusal.detail, headers)] * len(tickets)
        admitted = _triage(tickets, verdict, outcomes)
        clear = await self.gate.clear(Counter(tickets[i].new.user_id for i in admitted))
        go = []
        for i in admitted:
            if tickets[i].new.user_id in clear:
                go.append(i)
            else:
                outcomes[i] = NeedsLock()
        if go:
            news = [tickets[i].new for i in go]
            keys = [tickets[i].key for i in go]
            for i, sub in zip(go, await self._commit(news, keys), strict=True):
                outcomes[i] = sub
            if any(keys):
                await self._sweep_keys()
        return [o if o is not None else Fallback() for o in outcomes]

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
    ) -> list[Submitted | BaseException]:
        try:
            inserted = await self.store.submits.insert_runs(news, keys, self.key_ttl_seconds)
        except asyncpg.PostgresError:
            return [Fallback() for _ in news]  # each alone: one bad row fails only itself
        for user, n in Counter(n.user_id for n in news).items():
            self.gate.added(user, n)
        rows = [row for row in inserted if row is not None]
        added = await self.rio.enqueue_many([run_id for run_id, _ in rows])
        errors = [x for x in added if isinstance(x, BaseException)]
        failed = [r for (r, _), x in zip(rows, added, strict=True) if isinstance(x, BaseException)]
        if failed:
            try:
                await self.store.submits.delete_queued_runs(failed)
            except Unavailable:
                # The rows stay queued without entries: the reconciler enqueues them later.
                log.warning("submit_undo_failed", runs=len(failed))
        down = redis_failure(errors[0], DOWN) if errors else Unavailable(DOWN)
        answers = iter(
            down
            if isinstance(x, BaseException)
            else Submitted(run_id, "queued", None, created_at, replayed=False)
            for (run_id, created_at), x in zip(rows, added, strict=True)
        )
        # A key that was live already: its run is replayed by the per-request path.
        return [Fallback() if row is None else next(answers) for row in inserted]


def _triage(
    tickets: list[Ticket], verdict: BatchVerdict, outcomes: list[Submitted | BaseException | None]
) -> list[int]:
    """Which tickets the admission verdict lets through (indexes); the others' outcomes set."""
    tokens = {u: taken for u, (taken, _) in verdict.granted.items()}
    admitted: list[int] = []
    keys_seen: set[tuple[str, str]] = set()
    for i, t in enumerate(tickets):
        user = t.new.user_id
        if t.epoch is not None and not hmac.compare_digest(t.epoch, verdict.epoch):
            outcomes[i] = StaleKey()
        elif t.key is not None and (tokens[user] <= 0 or (user, t.key[0]) in keys_seen):
            # Perhaps a retry (replayed without admission), or the same key twice in one
            # group: alone, after this group, the key's look-up decides.
            outcomes[i] = Fallback()
        elif tokens[user] <= 0:
            refusal = rate_refusal(verdict.granted[user][1])
            outcomes[i] = ApiError(
                refusal.status,
                refusal.code,
                refusal.detail,
                {"Retry-After": str(refusal.retry_after)},
            )
        else:
            tokens[user] -= 1
            admitted.append(i)
            if t.key is not None:
                keys_seen.add((user, t.key[0]))
    return admitted
