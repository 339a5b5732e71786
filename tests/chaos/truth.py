"""The three-way checker: at the end of every fault test, for each run, what the SSE followers
received, what Redis holds for its event stream, and what Postgres holds in `run_events` (read
directly, and through the API's `GET /runs/{id}/events` after the run's Redis keys are deleted,
as `LONGRUN_EVENTS_TTL_SECONDS` does an hour after it ends) must be one and the same log:

- identical event by event (seq, type, data bytes), seqs gapless 1..N, ids equal to seqs;
- exactly one terminal event, last, and the run's status is the one it says (and the expected);
- `ticker` tokens exactly "1".."count";
- no attempt writes after a newer one began: the `resumed` attempts increase, and the tokens of
  `attempt_chat` (which name their attempt) belong to the attempt whose start/resumed precedes
  them, one generation per attempt;
- each attempt is claimed once (the workers' `run_claimed` log lines).

`check_run` is pure (tested on its own in test_truth_checker.py); `Truth.settle_and_check`
gathers the evidence from the servers and asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from shared.redis.keys import Keys
from tests.chaos.followers import Followers, Received
from tests.helpers import queue_backlog
from tests.history import History
from tests.redis_cluster import open_redis
from tests.sse_frames import aparse_lines

TERMINAL = frozenset({"done", "error", "cancelled"})
STATUS_OF_TERMINAL = {"done": "succeeded", "error": "failed", "cancelled": "cancelled"}
LIFECYCLE = frozenset({"start", "resumed"})


@dataclass(frozen=True)
class Ev:
    seq: int
    type: str
    data: bytes

    def show(self) -> str:
        try:
            body = json.loads(self.data)
        except ValueError:
            return f"{self.seq}:{self.type}:<bad json>"
        detail = body.get("text") or body.get("attempt") or body.get("code") or ""
        return f"{self.seq}:{self.type}{':' + str(detail) if detail != '' else ''}"


@dataclass(frozen=True)
class Expect:
    agent: str
    status: str = "succeeded"
    count: int | None = None  # ticker: tokens are exactly "1".."count"
    tagged: bool = False  # attempt_chat: every token names its attempt


@dataclass
class Evidence:
    """What each source holds for one run."""

    followed: list[Received] | None  # None: no follower
    follower_ended: bool
    redis: list[Ev]
    archive: list[Ev]
    replay: list[Ev]
    replay_problem: str | None  # the API's archive replay did not complete
    status: str | None
    attempt: int
    claims: list[int] = field(default_factory=list)  # attempts claimed (worker logs)


def ranges(seqs: Sequence[int]) -> str:
    """1,2,3,5,6 -> '1..3,5..6'."""
    out: list[str] = []
    start = prev = None
    for s in seqs:
        if start is None:
            start = prev = s
        elif prev is not None and s == prev + 1:
            prev = s
        else:
            out.append(f"{start}..{prev}" if start != prev else f"{start}")
            start = prev = s
    if start is not None:
        out.append(f"{start}..{prev}" if start != prev else f"{start}")
    return ",".join(out) or "none"


def _received_as_events(received: list[Received]) -> tuple[list[Ev], list[str]]:
    out, problems = [], []
    for r in received:
        seq = r.seq
        if seq is None:
            problems.append(f"received a frame without a seq: {r.event} {r.data[:80]}")
            continue
        if r.id != str(seq):
            problems.append(f"received id {r.id!r} for seq {seq}")
        out.append(Ev(seq, r.event, r.data.encode()))
    return out, problems


def _log_shape(name: str, events: list[Ev], *, from_one: bool = True) -> list[str]:
    """Gapless seqs (from 1, or any contiguous suffix), one terminal event and it is last."""
    problems = []
    seqs = [e.seq for e in events]
    first = 1 if from_one else (seqs[0] if seqs else 1)
    if seqs != list(range(first, first + len(seqs))):
        problems.append(f"{name}: seqs not gapless 1..N: {ranges(seqs)}")
    terminals = [e.seq for e in events if e.type in TERMINAL]
    if len(terminals) != 1:
        problems.append(f"{name}: {len(terminals)} terminal events (seqs {terminals})")
    elif events[-1].seq != terminals[0]:
        problems.append(f"{name}: events after the terminal one (seq {terminals[0]})")
    return problems


def _differences(name: str, events: list[Ev], archive: dict[int, Ev]) -> list[str]:
    """Where `events` disagree with the archive: seqs it lacks, and seqs whose content differs
    (the first one shown)."""
    problems = []
    lacking = [e.seq for e in events if e.seq not in archive]
    if lacking:
        first = next(e for e in events if e.seq not in archive)
        problems.append(
            f"{name} has seqs {ranges(lacking)} that the archive lacks (first: {first.show()})"
        )
    differ = [
        (e, archive[e.seq])
        for e in events
        if e.seq in archive and (archive[e.seq].type, archive[e.seq].data) != (e.type, e.data)
    ]
    if differ:
        e, a = differ[0]
        problems.append(
            f"{name} and the archive differ at seqs {ranges([x.seq for x, _ in differ])} "
            f"(first: {e.show()} vs {a.show()})"
        )
    return problems


def _attempt_order(name: str, events: list[Ev], tagged: bool) -> list[str]:
    """`resumed` attempts increase; tagged tokens belong to the attempt that precedes them."""
    problems = []
    current = 0
    nonces: dict[int, str] = {}
    for e in events:
        body: dict[str, Any] = json.loads(e.data)
        if e.type in LIFECYCLE:
            attempt = 1 if e.type == "start" else int(body.get("attempt", 0))
            if attempt <= current:
                problems.append(f"{name}: attempt {attempt} begins after attempt {current}")
            current = attempt
        elif tagged and e.type == "token":
            tag = str(body.get("text", "")).strip().split(".")
            if len(tag) < 2 or not tag[0].startswith("a") or not tag[0][1:].isdigit():
                continue
            attempt, nonce = int(tag[0][1:]), tag[1]
            if attempt != current:
                problems.append(
                    f"{name}: seq {e.seq} is attempt {attempt}'s token inside attempt {current}"
                )
            elif nonces.setdefault(attempt, nonce) != nonce:
                problems.append(f"{name}: seq {e.seq}: two generations of attempt {attempt}")
        if len(problems) >= 3:
            break
    return problems


def _check_archive(expect: Expect, ev: Evidence) -> list[str]:
    """(c) the archive, the truth, and the run's row."""
    archive = ev.archive
    p = _log_shape("archive", archive)
    terminal = next((e for e in archive if e.type in TERMINAL), None)
    if ev.status != expect.status:
        p.append(f"status {ev.status}, expected {expect.status}")
    if terminal is not None and STATUS_OF_TERMINAL[terminal.type] != ev.status:
        p.append(f"status {ev.status} but the terminal event is {terminal.type}")
    p += _attempt_order("archive", archive, expect.tagged)
    if expect.count is not None:
        tokens = [json.loads(e.data).get("text") for e in archive if e.type == "token"]
        if tokens != [str(i) for i in range(1, expect.count + 1)]:
            p.append(f"archive: ticker tokens {','.join(map(str, tokens)) or 'none'}")
    # (c') the archive as the API serves it once Redis forgot the run
    if ev.replay_problem is not None:
        p.append(ev.replay_problem)
    elif [(e.seq, e.type, e.data) for e in ev.replay] != [(e.seq, e.type, e.data) for e in archive]:
        p.append(
            f"API replay from the archive differs from it: {ranges([e.seq for e in ev.replay])}"
        )
    return p


def _check_redis(ev: Evidence, by_seq: dict[int, Ev], redis_complete: bool) -> list[str]:
    """(b) Redis; after it lost data it may hold the tail of the log only, or nothing."""
    p: list[str] = []
    if ev.redis or redis_complete:
        p += _log_shape("redis", ev.redis, from_one=redis_complete)
        p += _differences("redis", ev.redis, by_seq)
    if ev.redis and ev.archive and ev.redis[-1].seq != ev.archive[-1].seq:
        p.append(f"redis ends at seq {ev.redis[-1].seq}, the archive at {ev.archive[-1].seq}")
    return p


def _check_follower(expect: Expect, ev: Evidence, by_seq: dict[int, Ev]) -> list[str]:
    """(a) what the client saw: 1..N once each, in order, the archive's, to the terminal."""
    if ev.followed is None:
        return []
    seen, frame_problems = _received_as_events(ev.followed)
    p = [f"follower {x}" for x in frame_problems[:3]]
    seqs = [e.seq for e in seen]
    if seqs != list(range(1, len(seqs) + 1)):
        p.append(f"follower received seqs {ranges(seqs)} (not 1..N in order, once each)")
    if not ev.follower_ended:
        p.append(f"follower never got the terminal event (received {ranges(seqs)})")
    p += _differences("follower", seen, by_seq)
    if seen and ev.archive and seen[-1].seq != ev.archive[-1].seq and ev.follower_ended:
        p.append(f"follower ended at seq {seen[-1].seq}, the archive at {ev.archive[-1].seq}")
    p += _attempt_order("follower", seen, expect.tagged)
    return p


def check_run(
    run_id: str,
    expect: Expect,
    ev: Evidence,
    *,
    redis_complete: bool = True,
    max_attempts: int | None = None,
) -> list[str]:
    """Every invariant for one run; returns the problems (empty: the run is fine).
    `redis_complete=False`: Redis lost data during the test, so it may hold a suffix of the log
    only. `max_attempts`: the fault must not have made the run execute more often."""
    by_seq = {e.seq: e for e in ev.archive}
    p = _check_archive(expect, ev)
    p += _check_redis(ev, by_seq, redis_complete)
    p += _check_follower(expect, ev, by_seq)
    dup = sorted({a for a in ev.claims if ev.claims.count(a) > 1})
    if dup:
        p.append(f"attempts claimed more than once: {dup}")
    if max_attempts is not None and max(ev.attempt, len(set(ev.claims))) > max_attempts:
        p.append(
            f"executed {ev.attempt} times (claims {sorted(ev.claims)}), "
            f"at most {max_attempts} allowed"
        )
    return [f"run {run_id[:8]} ({expect.agent}): {x}" for x in p]


# -- gathering the evidence ------------------------------------------------------------------


async def _retry_redis(coro_fn: Any, timeout: float = 10.0) -> Any:
    """A Redis read that rides out a restart in progress."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await coro_fn()
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _events_of(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Ev]:
    return [Ev(int(eid.decode().split("-", 1)[1]), f[b"t"].decode(), f[b"d"]) for eid, f in entries]


async def replay_via_api(
    client: httpx.AsyncClient, run_id: str, timeout: float
) -> tuple[list[Ev], str | None]:
    """The whole log as `GET /runs/{id}/events` serves it (no Last-Event-ID), within `timeout`."""
    out: list[Ev] = []

    async def read() -> str | None:
        async with client.stream("GET", f"/runs/{run_id}/events") as resp:
            if resp.status_code != 200:
                body = (await resp.aread())[:200].decode(errors="replace")
                return f"API replay from the archive answered {resp.status_code}: {body}"
            async for f in aparse_lines(resp.aiter_lines()):
                if f.id is None:
                    continue
                out.append(Ev(int(f.id), f.event, f.data.encode()))
                if f.event in TERMINAL:
                    return None
        got = ranges([e.seq for e in out])
        return f"API replay from the archive ended without a terminal event: {got}"

    try:
        return out, await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        got = ranges([e.seq for e in out])
        return out, f"API replay from the archive (Redis keys deleted) hung: {got} in {timeout}s"
    except httpx.HTTPError as exc:
        return out, f"API replay from the archive failed: {type(exc).__name__}"


@dataclass
class Truth:
    """The runs of one test and what to expect of each; `settle_and_check` asserts."""

    runs: dict[str, Expect] = field(default_factory=dict)

    def expect(self, run_id: str, expect: Expect) -> None:
        self.runs[run_id] = expect

    async def wait_terminal(self, dsn: str, timeout: float) -> list[str]:
        """Poll Postgres until every run is terminal; returns those that are not."""
        deadline = time.monotonic() + timeout
        ids = [uuid.UUID(r) for r in self.runs]
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                try:
                    rows = await conn.fetch(
                        "SELECT run_id, status FROM runs WHERE run_id = ANY($1::uuid[])", ids
                    )
                finally:
                    await conn.close()
                active = [
                    str(r["run_id"])
                    for r in rows
                    if r["status"] not in ("succeeded", "failed", "cancelled")
                ]
            except (OSError, asyncpg.PostgresError, TimeoutError):
                active = list(self.runs)
            if not active or time.monotonic() > deadline:
                return active
            await asyncio.sleep(0.1)

    async def settle_and_check(
        self,
        *,
        dsn: str,
        redis_url: str,
        keys: Keys,
        api: httpx.AsyncClient,
        followers: Followers | None,
        worker_logs: Sequence[Any],
        redis_complete: bool = True,
        max_attempts: int | None = None,
        settle_timeout: float = 30.0,
        extra_problems: Sequence[str] = (),
    ) -> dict[str, int]:
        """Wait (bounded) for the runs to end and the queue to drain, gather the evidence,
        delete the runs' Redis keys, replay each from the archive through the API, and assert
        every invariant. Returns totals for the test's one-line summary."""
        problems = list(extra_problems)
        stuck = await self.wait_terminal(dsn, settle_timeout)
        if stuck:
            problems.append(f"{len(stuck)} runs not finished {settle_timeout}s after the fault")
        r = open_redis(redis_url)  # one server, a cluster or Sentinel's primary
        try:
            await self._wait_drained(r, keys, problems)
            late: list[str] = []
            if followers is not None:
                late = await followers.finish(timeout=5.0)
            redis_logs = {
                run: _events_of(await _retry_redis(lambda run=run: r.xrange(keys.events(run))))
                for run in self.runs
            }
            rows, archives = await self._archive(dsn)
            for run in self.runs:
                await r.delete(keys.events(run), keys.run_meta(run))
        finally:
            await r.aclose()
        replays = await asyncio.gather(*(replay_via_api(api, run, 3.0) for run in self.runs))
        history = History()
        history.read_worker_logs(list(worker_logs))
        totals = {"runs": len(self.runs), "resumes": 0, "attempts": 0, "reconnects": 0}
        for (run, expect), (replay, replay_problem) in zip(self.runs.items(), replays, strict=True):
            row = rows.get(run, {})
            f = followers.by_run.get(run) if followers is not None else None
            ev = Evidence(
                followed=None if f is None else f.received,
                follower_ended=f is not None and f.ended is not None and run not in late,
                redis=redis_logs[run],
                archive=archives.get(run, []),
                replay=replay,
                replay_problem=replay_problem,
                status=row.get("status"),
                attempt=int(row.get("attempt", 0)),
                claims=[a for rid, a, _ in history.claims if rid == run],
            )
            problems += check_run(
                run, expect, ev, redis_complete=redis_complete, max_attempts=max_attempts
            )
            totals["resumes"] += sum(1 for e in ev.archive if e.type == "resumed")
            totals["attempts"] += ev.attempt
            totals["reconnects"] += 0 if f is None else max(f.connects - 1, 0)
        assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:25])
        return totals

    @staticmethod
    async def _wait_drained(r: Any, keys: Keys, problems: list[str]) -> None:
        """Every queue entry acked and deleted (no attempt still running)."""
        deadline = time.monotonic() + 10
        left = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                left = await queue_backlog(r, keys)
                if left == 0:
                    return
            await asyncio.sleep(0.1)
        problems.append(f"the queue still holds {left} entries after every run ended")

    async def _archive(self, dsn: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[Ev]]]:
        ids = [uuid.UUID(r) for r in self.runs]
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT run_id, status, attempt FROM runs WHERE run_id = ANY($1::uuid[])", ids
            )
            events = await conn.fetch(
                "SELECT run_id, seq, type, data FROM run_events WHERE run_id = ANY($1::uuid[]) "
                "ORDER BY run_id, seq",
                ids,
            )
        finally:
            await conn.close()
        archives: dict[str, list[Ev]] = {}
        for e in events:
            archives.setdefault(str(e["run_id"]), []).append(
                Ev(e["seq"], e["type"], bytes(e["data"]))
            )
        return {str(r["run_id"]): dict(r) for r in rows}, archives
