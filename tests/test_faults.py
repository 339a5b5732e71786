"""Fault tests: workers killed, paused, drained and cut off from Redis; Redis flushed and
restarted; Postgres cut. Real worker processes, short leases (2 s), small counts. Every test
feeds the chaos history checker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import pytest

from shared.config import Settings
from shared.redis.keys import Keys
from tests.helpers import queue_backlog, read_events, submit, wait_for, wait_status
from tests.history import History, check
from tests.procs import WorkerProc, start_worker, stop_all
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TEST_AGENTS = (
    "side_effect=tests.agents:side_effect,crasher=tests.agents:crasher,"
    "raiser=tests.agents:raiser,sleeper=tests.agents:sleeper,chatty=tests.agents:chatty"
)


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    return settings.with_(agent_modules=tuple(TEST_AGENTS.split(",")))


@pytest.fixture
async def procs(tmp_path: Path):
    started: list[WorkerProc] = []

    async def make(s: Settings, name: str, **extra: str) -> WorkerProc:
        p = await start_worker(s, name, tmp_path, **extra)
        started.append(p)
        return p

    make.started = started  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        await stop_all(started)


@pytest.fixture
async def fclient(api_factory, fault_settings, api_key):
    import httpx

    srv = await api_factory(fault_settings)
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as c:
        yield c


async def pending_of(redis_client, settings: Settings, consumer: str) -> int:
    keys = Keys.from_settings(settings)
    try:
        info = await redis_client.xinfo_consumers(keys.queue, keys.group)
    except Exception:
        return 0
    for c in info:
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            return int(c["pending"])
    return 0


async def finish_history(h: History, client, procs_list: list[WorkerProc]) -> dict[str, int]:
    for run_id in h.submits:
        run = await wait_status(client, run_id, "succeeded", "failed", "cancelled", timeout=60)
        h.statuses[run_id] = run["status"]
        _, h.events[run_id] = await read_events(client, run_id)
    h.read_worker_logs([p.log_path for p in procs_list])
    return check(h)


async def test_kill_9_one_of_three_workers_mid_flight_loses_and_repeats_nothing(
    fclient, fault_settings, procs, redis_client
):
    # Given three workers and 24 ticker runs in flight (3 s each: still running when the
    # kill lands, even on a loaded machine)
    workers = [await procs(fault_settings, f"w{i}") for i in range(3)]
    h = History()
    for _ in range(24):
        rid = await submit(fclient, agent="ticker", params={"count": 15, "interval_ms": 200})
        h.submitted(rid, count=15)

    async def all_started() -> bool:
        held = [await pending_of(redis_client, fault_settings, w.name) for w in workers]
        return sum(held) == 24

    await wait_for(all_started, timeout=20)
    held_by = {w.name: await pending_of(redis_client, fault_settings, w.name) for w in workers}
    victim = max(workers, key=lambda w: held_by[w.name])
    held = held_by[victim.name]

    # When one of them is killed outright
    t0 = time.monotonic()
    victim.signal(signal.SIGKILL)

    # Then every run still succeeds once, gapless, tokens exactly 1..15
    totals = await finish_history(h, fclient, workers)
    recovery = time.monotonic() - t0
    assert held > 0
    assert totals["resumes"] >= 1
    print(
        f"kill -9: runs={totals['runs']} held_by_victim={held} resumes={totals['resumes']} "
        f"recovered_in={recovery:.1f}s"
    )


async def test_a_paused_worker_past_its_lease_cannot_write_when_it_wakes(
    fclient, fault_settings, procs, redis_client
):
    # Given a run on worker A
    a = await procs(fault_settings, "a")
    h = History()
    rid = await submit(fclient, agent="ticker", params={"count": 40, "interval_ms": 50})
    h.submitted(rid, count=40)
    _, _first = await read_events(fclient, rid, limit=3)
    # When A is frozen past its lease and B takes the run over
    a.signal(signal.SIGSTOP)
    b = await procs(fault_settings, "b")
    await wait_for(lambda: pending_of(redis_client, fault_settings, "b"), timeout=20)
    # And A wakes up while B is running it
    a.signal(signal.SIGCONT)

    # Then the run finishes once, under B, and A logged that it lost the lease
    totals = await finish_history(h, fclient, [a, b])
    assert totals["resumes"] == 1
    await wait_for(lambda: asyncio.sleep(0, '"lease_lost"' in a.log()), timeout=10)
    attempts = {(r, at, w) for r, at, w in h.claims}
    assert (rid, 1, "a") in attempts
    assert (rid, 2, "b") in attempts


async def test_sigterm_hands_runs_over_long_before_the_lease_expires(
    fclient, fault_settings, procs, redis_client
):
    # Given a long lease (60 s) and a short drain (1 s): waiting for the lease would be slow
    s = fault_settings.with_(lease_seconds=60.0, drain_seconds=1.0)
    a = await procs(s, "a")
    h = History()
    ids = []
    for _ in range(4):
        rid = await submit(fclient, agent="ticker", params={"count": 30, "interval_ms": 100})
        h.submitted(rid, count=30)
        ids.append(rid)
    await wait_for(lambda: pending_of(redis_client, s, "a"), timeout=20)
    b = await procs(s, "b")

    # When A is told to stop
    t0 = time.monotonic()
    a.signal(signal.SIGTERM)
    code = await a.wait(timeout=15)

    # Then it exits 0 within the drain time (plus start-up slack) and B finishes every run
    assert code == 0
    assert time.monotonic() - t0 < 8
    totals = await finish_history(h, fclient, [a, b])
    assert time.monotonic() - t0 < 30  # far below the 60 s lease
    assert totals["resumes"] >= 1
    assert '"run_handed_over"' in a.log()


async def test_a_worker_cut_off_from_redis_stops_its_runs_before_others_take_them(
    fclient, fault_settings, procs, redis_client
):
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    try:
        # Given worker A reaching Redis through a link we can cut, and worker B directly
        a_settings = fault_settings.with_(
            redis_url=proxy.url_for(fault_settings.redis_url), redis_socket_timeout=1.0
        )
        a = await procs(a_settings, "a")
        h = History()
        rid = await submit(fclient, agent="ticker", params={"count": 60, "interval_ms": 50})
        h.submitted(rid, count=60)
        await wait_for(lambda: pending_of(redis_client, fault_settings, "a"), timeout=20)
        b = await procs(fault_settings, "b")
        # When A's link is cut for longer than a lease
        proxy.cut()
        await wait_for(lambda: pending_of(redis_client, fault_settings, "b"), timeout=20)
        proxy.restore()
        # Then the run completes once, and A is alive and rejoins (takes new work)
        totals = await finish_history(h, fclient, [a, b])
        assert totals["resumes"] == 1
        assert a.proc.returncode is None
        b.signal(signal.SIGTERM)
        await b.wait(15)
        rid2 = await submit(fclient, agent="ticker", params={"count": 2, "interval_ms": 0})
        await wait_status(fclient, rid2, "succeeded", timeout=30)
        assert '"lease_lost"' in a.log() or '"heartbeat_failed"' in a.log()
    finally:
        await proxy.stop()


async def test_a_tool_with_a_side_effect_runs_once_per_call_across_crashes(
    fclient, fault_settings, procs, store
):
    async with store.db.conn() as c:
        await c.execute(
            "CREATE TABLE side_effects (key text PRIMARY KEY, run_id text, step int, "
            "duplicates int NOT NULL DEFAULT 0)"
        )
    s = fault_settings.with_(max_attempts=10)  # three crashes must not dead-letter it
    h = History()
    rid = await submit(fclient, agent="side_effect", params={"steps": 12, "delay_ms": 80})
    h.submitted(rid)
    workers = []
    # Crash the worker running it three times, mid-run
    for i in range(3):
        w = await procs(s, f"w{i}")
        workers.append(w)
        _, _seen = await read_events(fclient, rid, limit=3 + 4 * (i + 1))
        w.signal(signal.SIGKILL)
        await w.wait(10)
    last = await procs(s, "last")
    workers.append(last)
    totals = await finish_history(h, fclient, workers)

    async with store.db.conn() as c:
        rows = await c.fetch("SELECT step, duplicates FROM side_effects ORDER BY step")
        checkpoints = await c.fetchval("SELECT count(*) FROM run_checkpoints")
    assert [r["step"] for r in rows] == list(range(1, 13))
    tool_starts = [e for e in h.events[rid] if e.event == "tool_start"]
    # Checkpointed steps never run again; only a step cut mid-call is retried, and its
    # idempotency key makes the retry land on the same row.
    assert len(tool_starts) <= 12 + totals["resumes"]
    assert checkpoints == 12


async def test_a_poison_run_is_dead_lettered_after_max_attempts(
    fclient, fault_settings, procs, redis_client
):
    s = fault_settings.with_(max_attempts=2)
    rid = await submit(fclient, agent="crasher")
    keys = Keys.from_settings(s)
    workers = []
    # Each delivery kills its worker; start a new one until the run ends
    for i in range(5):
        w = await procs(s, f"w{i}")
        workers.append(w)
        done = await _wait_exit_or_status(w, fclient, rid)
        if done:
            break
    run = await wait_status(fclient, rid, "failed", timeout=30)
    assert run["error"]["code"] == "max_attempts"
    dead = await redis_client.xrange(keys.dead_letters)
    assert [f[b"run"].decode() for _, f in dead] == [rid]
    _, events = await read_events(fclient, rid)
    assert events[-1].event == "error"
    assert events[-1].data["code"] == "max_attempts"


async def _wait_exit_or_status(w: WorkerProc, client, rid: str) -> bool:
    while True:
        if w.proc.returncode is not None:
            return False
        run = (await client.get(f"/runs/{rid}")).json()
        if run["status"] == "failed":
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.proc.wait(), 0.2)


async def test_a_run_whose_agent_raises_fails_cleanly_and_the_worker_carries_on(
    fclient, worker_factory, fault_settings
):
    await worker_factory(fault_settings)
    bad = await submit(fclient, agent="raiser")
    good = await submit(fclient, agent="ticker", params={"count": 2, "interval_ms": 0})

    run = await wait_status(fclient, bad, "failed")
    assert run["error"]["code"] == "agent_crashed"
    assert (await wait_status(fclient, good, "succeeded"))["status"] == "succeeded"
    _, events = await read_events(fclient, bad)
    assert [e.event for e in events] == ["start", "token", "error"]


async def test_redis_flushed_while_runs_are_queued_the_reconciler_re_enqueues_them(
    fclient, fault_settings, procs, redis_client
):
    keys = Keys.from_settings(fault_settings)
    h = History()
    for _ in range(6):
        rid = await submit(fclient, agent="ticker", params={"count": 3, "interval_ms": 0})
        h.submitted(rid, count=3)
    # When Redis loses the queue before any worker ran
    async for k in redis_client.scan_iter(match=keys.all_pattern()):
        await redis_client.delete(k)
    assert await queue_backlog(redis_client, keys) == 0
    # Then a worker's reconciler re-enqueues them (they are older than two leases by then)
    w = await procs(fault_settings, "w")
    totals = await finish_history(h, fclient, [w])
    assert totals["runs"] == 6
    assert '"run_reenqueued"' in w.log()


async def test_a_run_over_its_time_limit_ends_with_a_timeout_error(
    fclient, worker_factory, fault_settings
):
    await worker_factory(fault_settings)
    rid = await submit(fclient, agent="sleeper", params={"timeout_seconds": 0.5})

    run = await wait_status(fclient, rid, "failed", timeout=15)

    assert run["error"]["code"] == "timeout"


async def test_a_run_over_the_event_cap_fails_clearly(fclient, worker_factory, fault_settings):
    await worker_factory(fault_settings.with_(max_events_per_run=20))
    rid = await submit(fclient, agent="chatty", params={"n": 100})

    run = await wait_status(fclient, rid, "failed", timeout=15)

    assert run["error"]["code"] == "event_cap_exceeded"
    _, events = await read_events(fclient, rid)
    assert len(events) == 21
    assert events[-1].event == "error"


async def test_a_run_whose_last_burst_passes_the_event_cap_fails_and_never_says_done(
    fclient, worker_factory, fault_settings
):
    """A ticker's 25 tokens at once are still pending when its `done` comes: over a cap of 20
    they must fail the run, not be dropped in front of a `done` that claims all 25."""
    await worker_factory(fault_settings.with_(max_events_per_run=20))
    rid = await submit(fclient, agent="ticker", params={"count": 25, "interval_ms": 0})

    run = await wait_status(fclient, rid, "succeeded", "failed", timeout=15)

    assert run["status"] == "failed"
    assert run["error"]["code"] == "event_cap_exceeded"
    _, events = await read_events(fclient, rid)
    assert [e.event for e in events][-1] == "error"
    tokens = [json.loads(e.data)["text"] for e in events if e.event == "token"]
    assert tokens == [str(i) for i in range(1, len(tokens) + 1)]  # a prefix, no hole
    assert len(events) <= 21


class PrivateRedis:
    """A redis-server of the test's own, so it can be killed and restarted empty."""

    def __init__(self, tmp: Path, *args: str) -> None:
        from tests.conftest import free_port

        self.args = args
        self.port = free_port()
        self.tmp = tmp
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.tmp),
            *self.args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        r = aioredis.Redis.from_url(self.url)
        try:
            await wait_for(lambda: _pings(r), timeout=10)
        finally:
            await r.aclose()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()


async def _pings(r) -> bool:
    try:
        return bool(await r.ping())
    except Exception:
        return False


async def test_redis_restarted_empty_and_postgres_cut_under_load_lose_and_duplicate_nothing(
    api_factory, fault_settings, procs, api_key, tmp_path
):
    import httpx

    redis_srv = PrivateRedis(tmp_path)
    await redis_srv.start()
    pg = await TcpProxy("127.0.0.1", 5432).start()
    try:
        s = fault_settings.with_(
            redis_url=redis_srv.url,
            database_url=pg.url_for(fault_settings.database_url),
            max_attempts=10,
        )
        srv = await api_factory(s)
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        ) as c:
            workers = [await procs(s, f"w{i}") for i in range(2)]
            h = History()
            for _ in range(16):
                rid = await submit(c, agent="ticker", params={"count": 40, "interval_ms": 50})
                h.submitted(rid, count=40)
            _, _seen = await read_events(c, rid, limit=5)
            # When Redis dies and comes back empty mid-run
            await redis_srv.kill()
            await redis_srv.start()
            # And a little later Postgres drops every connection for two seconds
            await asyncio.sleep(1.0)
            pg.cut()
            await asyncio.sleep(2.0)
            pg.restore()
            # Then every run still finishes exactly once with tokens 1..40
            totals = await finish_history(h, c, workers)
        assert totals["runs"] == 16
        print(
            f"redis restart + pg cut: runs={totals['runs']} claims={totals['claims']} "
            f"resumes={totals['resumes']}"
        )
    finally:
        await pg.stop()
        await redis_srv.kill()


async def test_diagnostics_explain_who_holds_a_run_and_when_it_would_move(
    fclient, worker_factory, fault_settings, api, store
):
    import httpx

    await worker_factory(fault_settings)
    rid = await submit(fclient, agent="side_effect", params={"steps": 0})
    await wait_status(fclient, rid, "succeeded")
    slow = await submit(fclient, agent="sleeper")
    await wait_status(fclient, slow, "running")

    # (a first attempt's fence, with its queue entry, goes up with its first copy to Redis,
    # a moment after the claim Postgres shows)
    async def fenced() -> dict | None:
        diag = (await fclient.get(f"/runs/{slow}/diagnostics")).json()
        return diag if diag["entry_id"] else None

    diag = await wait_for(fenced, timeout=10)

    assert diag["status"] == "running"
    assert diag["attempt"] == 1
    assert diag["pending"]["deliveries"] == 1
    assert diag["pending"]["consumer"] == diag["owner"]
    assert 0 <= diag["pending"]["reclaimable_in_ms"] <= 2000
    assert diag["owner_heartbeat_age_s"] < 2
    _, other_key = await store.users.create_key("mallory")
    async with httpx.AsyncClient(
        base_url=str(fclient.base_url), headers={"Authorization": f"Bearer {other_key}"}
    ) as other:
        assert (await other.get(f"/runs/{slow}/diagnostics")).status_code == 404


async def test_a_run_lasting_many_leases_on_a_live_worker_is_never_taken(
    fclient, fault_settings, procs
):
    # Given a 0.5 s lease and a run of 4 s (eight leases) on one of two live workers
    s = fault_settings.with_(lease_seconds=0.5)
    workers = [await procs(s, "a"), await procs(s, "b")]
    h = History()
    rid = await submit(fclient, agent="ticker", params={"count": 40, "interval_ms": 100})
    h.submitted(rid, count=40)

    totals = await finish_history(h, fclient, workers)

    # Then the heartbeat kept it: one attempt, no resume
    assert totals["resumes"] == 0
    assert next(c for c in h.claims if c[0] == rid)[1] == 1
    assert len([c for c in h.claims if c[0] == rid]) == 1


async def test_a_worker_refuses_a_redis_that_may_evict_the_queue(settings, tmp_path):
    from shared.errors import ConfigError
    from worker.main import Worker

    evicting = PrivateRedis(tmp_path, "--maxmemory-policy", "allkeys-lru")
    await evicting.start()
    try:
        w = Worker(settings.with_(redis_url=evicting.url))
        with pytest.raises(ConfigError, match="allkeys-lru"):
            await w.start()
        # (it closed what it had opened: nothing is left half-started)
        with pytest.raises(RuntimeError, match="not started"):
            _ = w.store
    finally:
        await evicting.kill()
