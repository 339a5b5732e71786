"""Redis Cluster and Sentinel (issue 18): the URLs, one slot per script call, and the platform on
a real 3-primary Redis Cluster and a real Sentinel setup (tests/redis_cluster.py): runs end to
end, cancels over the shard channel, reads gathered from every primary, the eviction check on
every primary, a primary restarted empty noticed, a Sentinel failover followed."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.cluster import key_slot
from redis.exceptions import ClusterCrossSlotError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError

from cli.status import gather as status_gather
from shared.config import Settings
from shared.errors import ConfigError
from shared.metrics import as_dict, cluster_redis
from shared.models import Event, encode_event
from shared.redis import scripts
from shared.redis.breakers import BreakerIO
from shared.redis.client import (
    RedisTarget,
    check_eviction_policy,
    create_redis,
    server_run_ids,
    url_answers,
)
from shared.redis.group import GroupIO
from shared.redis.keys import Keys
from shared.redis.ops import OpsIO
from shared.redis.runs import RedisIO
from shared.store import EventBatch, Store
from tests.helpers import assert_gapless_ticker, queued_run, read_events, submit, wait_status
from tests.redis_cluster import LocalCluster, LocalSentinel
from worker.heal import RecentEnds, ShortTails, heal_recent_ends

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(scripts.__file__).parent


# -- REDIS_URL --------------------------------------------------------------------------------


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    t = RedisTarget.parse("redis+cluster://bob:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert t.mode == "cluster"
    assert t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (t.username, t.password, t.ssl) == ("bob", "s@cret", False)
    assert RedisTarget.parse("rediss+cluster://h:1").ssl


def test_a_plain_url_is_a_cluster_seed_with_the_mode_knob() -> None:
    t = RedisTarget.parse("redis://:pw@h:7000", "cluster")
    assert (t.mode, t.nodes, t.password) == ("cluster", (("h", 7000),), "pw")
    assert RedisTarget.parse("redis://h:7000").mode == "single"


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    t = RedisTarget.parse("redis+sentinel://:pw@s1:26379,s2/mymaster/2?sentinel_password=sp")
    assert t.mode == "sentinel"
    assert t.nodes == (("s1", 26379), ("s2", 26379))
    assert (t.service, t.db, t.password, t.sentinel_password) == ("mymaster", 2, "pw", "sp")


@pytest.mark.parametrize(
    ("url", "mode", "problem"),
    [
        ("http://h:1", "auto", "must start with"),
        ("redis+sentinel://s1:26379", "auto", "names its primary"),
        ("redis+sentinel://s1:26379/m/x", "auto", "must be a number"),
        ("redis+cluster://h:1/3", "auto", "only database 0"),
        ("redis+cluster://h:x", "auto", "bad port"),
        ("redis+cluster://h:1", "sentinel", "does not fit"),
        ("redis+cluster://", "auto", "names no Redis host"),
    ],
)
def test_a_bad_redis_url_is_a_config_error_naming_the_problem(
    url: str, mode: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        RedisTarget.parse(url, mode)


def test_the_mode_knob_takes_only_known_modes() -> None:
    assert Settings.from_env({"LONGRUN_REDIS_MODE": "Cluster"}).redis_mode == "cluster"
    with pytest.raises(ConfigError, match="LONGRUN_REDIS_MODE"):
        Settings.from_env({"LONGRUN_REDIS_MODE": "ring"})


# -- one slot per script call --------------------------------------------------------------

K = Keys(prefix="lr", queue="lr:queue", group="workers", shards=5)


# Every script, with the keys each call site passes (key builders of shared.redis.keys): a new
# script must be added here, and a call passing keys of two slots fails this table.
def _shard(value: str) -> int:
    """A shard for the value (several, so that every shard's key names are audited)."""
    return len(value) % 5


SCRIPT_KEYS = {
    "append": lambda v: [K.run_meta(v), K.events(v), K.run_channel(v)],  # runs.append_call
    "fence": lambda v: [K.run_meta(v), K.events(v)],  # runs._fence_call
    "renew": lambda v: [K.shard_queue(_shard(v))],
    "ack": lambda v: [K.shard_queue(_shard(v))],
    "ack_many": lambda v: [K.shard_queue(_shard(v))],
    "handoff": lambda v: [
        K.shard_queue(_shard(v)),
        K.held(_shard(v)),
        K.ring(_shard(v), "normal"),
        K.tenant_list(_shard(v), "normal", v),
    ],
    "enqueue": lambda v: [
        K.held(_shard(v)),
        K.ring(_shard(v), "high"),
        K.tenant_list(_shard(v), "high", v),
    ],
    "pull": lambda v: [
        K.shard_queue(_shard(v)),
        K.held(_shard(v)),
        K.skips(_shard(v)),
        *(K.ring(_shard(v), level) for level in ("high", "normal", "low")),
        K.tenant_list(_shard(v), "low", v),  # the lists pull.lua names from its prefix
    ],
    "rebuild": lambda v: [
        K.held(_shard(v)),
        *(K.ring(_shard(v), level) for level in ("high", "normal", "low")),
    ],
    "cancel": lambda v: [K.run_meta(v)],
    "bucket": lambda v: [K.submit_bucket(v)],
    "take_slot": lambda v: [K.sse_slots(v)],
    "refresh_slot": lambda v: [K.sse_slots(v)],
    "drop_idle_consumers": lambda v: [K.shard_queue(_shard(v))],
    "breaker_cas": lambda v: [K.breaker_state(v)],
    "release": lambda v: [K.reconcile_lock],
    "delay": lambda v: [K.delayed, K.delayed_who],
    "take_due": lambda v: [K.delayed, K.delayed_who],
}


def test_every_script_is_audited_with_the_keys_it_declares() -> None:
    assert set(SCRIPT_KEYS) == set(scripts.NAMES)
    for name, keys_of in SCRIPT_KEYS.items():
        used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", scripts.ALL[name])}
        # (fence.lua is passed the events key too, unused: a call's keys are its slot)
        assert used <= set(range(1, len(keys_of("x")) + 1)), name


@pytest.mark.parametrize("name", sorted(SCRIPT_KEYS))
def test_every_script_call_touches_one_slot(name: str) -> None:
    for value in ["r", "a:b", "{x}", str(uuid.uuid4()), *(uuid.uuid4().hex for _ in range(50))]:
        keys = SCRIPT_KEYS[name](value)
        assert len({key_slot(k.encode()) for k in keys}) == 1, (name, keys)


def test_no_transaction_in_the_redis_package() -> None:
    """MULTI/EXEC must stay in one slot: there is none (pipelines are transaction=False)."""
    package = SCRIPTS.parent
    for path in package.glob("*.py"):
        text = path.read_text()
        assert "transaction=True" not in text, path.name
        assert ".multi(" not in text, path.name


# -- the platform on a real cluster ------------------------------------------------------------


async def delete_prefix_everywhere(settings: Settings) -> None:
    r = create_redis(settings, "longrun-test-cleanup")
    try:
        async for key in r.scan_iter(match=f"{settings.key_prefix}:*", count=1000):
            await r.delete(key)
    finally:
        await r.aclose()


@pytest.fixture
async def on_cluster(settings: Settings, redis_cluster: LocalCluster) -> AsyncIterator[Settings]:
    s = settings.with_(redis_url=redis_cluster.url)
    try:
        yield s
    finally:
        await delete_prefix_everywhere(s)


@pytest.fixture
async def cluster_client(
    on_cluster: Settings, api_factory, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    api = await api_factory(on_cluster)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        yield c


async def test_a_cross_slot_script_call_is_refused_by_the_cluster_client(
    on_cluster: Settings,
) -> None:
    """What makes the runs below an audit too: the cluster client refuses a script call whose
    keys cross slots, so every script the platform ran there touched one slot."""
    r = create_redis(on_cluster, "t")
    try:
        script = r.register_script(scripts.FENCE)
        with pytest.raises((RedisClusterException, ClusterCrossSlotError)):
            await script(keys=[K.run_meta("a"), K.events("b")], args=[1, "w", 60, ""])
    finally:
        await r.aclose()


async def test_runs_on_a_cluster_succeed_and_replay_whole(
    on_cluster: Settings, cluster_client: httpx.AsyncClient, worker_factory, redis_cluster
) -> None:
    # Given a worker on a 3-primary cluster (runs' keys land on every primary)
    await worker_factory(on_cluster)
    keys = Keys.from_settings(on_cluster)
    # When 8 ticker runs are submitted
    ids = [
        await submit(cluster_client, agent="ticker", params={"count": 5, "interval_ms": 20})
        for _ in range(8)
    ]
    assert len({await redis_cluster.port_of(keys.events(i)) for i in ids}) > 1
    # Then every run succeeds once, and replays gapless
    for run_id in ids:
        run = await wait_status(cluster_client, run_id, "succeeded")
        assert run["attempts"] == 1
        status, events = await read_events(cluster_client, run_id)
        assert status == 200
        assert_gapless_ticker(events, 5)


async def test_a_cancel_reaches_the_worker_over_the_shard_channel(
    on_cluster: Settings, cluster_client: httpx.AsyncClient, worker_factory
) -> None:
    await worker_factory(on_cluster)
    run_id = await submit(cluster_client, agent="ticker", params={"count": 200, "interval_ms": 50})
    await wait_status(cluster_client, run_id, "running")
    resp = await cluster_client.post(f"/runs/{run_id}/cancel")
    assert resp.status_code in (200, 202), resp.text
    await wait_status(cluster_client, run_id, "cancelled", timeout=10)


async def test_cancels_travel_as_sharded_pubsub(
    on_cluster: Settings, redis_cluster: LocalCluster
) -> None:
    r = create_redis(on_cluster, "t")
    io = RedisIO(r, Keys.from_settings(on_cluster), on_cluster)
    try:
        async with io.group.cancels() as feed:
            # the feed is a shard subscriber on the node owning the channel's slot
            owner = redis_cluster.node(await redis_cluster.port_of(io.keys.cancel_channel))
            try:
                reply = await owner.execute_command("PUBSUB", "SHARDNUMSUB", io.keys.cancel_channel)
            finally:
                await owner.aclose()
            assert list(reply) in ([(io.keys.cancel_channel.encode(), 1)],
                                   [io.keys.cancel_channel.encode(), 1])  # fmt: skip
            await io.request_cancel("run-1")
            got = None
            for _ in range(20):
                got = got or await feed.next(0.2)
            assert got == "run-1"
    finally:
        await r.aclose()


async def test_reads_gather_from_every_primary(on_cluster: Settings, redis_cluster) -> None:
    r = create_redis(on_cluster, "t")
    keys = Keys.from_settings(on_cluster)
    try:
        breakers = BreakerIO(r, keys)
        models = [f"model-{i}" for i in range(12)]
        assert len({await redis_cluster.port_of(keys.breaker_state(m)) for m in models}) == 3
        for m in models:
            assert await breakers.compare_and_set(m, 0, ["open", 1, 0, 0], 60)
        # the breaker states: a SCAN of every primary
        assert await breakers.states(100) == dict.fromkeys(models, "open")
        # the server run ids: one per primary
        ids = await server_run_ids(r)
        assert ids.count("=") == 3
        # the status snapshot (`/metrics`, `longrun status`)
        snap = as_dict(await cluster_redis(OpsIO(r, keys), on_cluster), on_cluster)
        assert snap["breakers"] == dict.fromkeys(models, "open")
        figures = await status_gather(on_cluster)  # `longrun status`'s own client
        assert figures.breakers == dict.fromkeys(models, "open")
    finally:
        await r.aclose()


async def test_an_allkeys_policy_on_any_primary_is_refused(on_cluster: Settings, redis_cluster):
    r = create_redis(on_cluster, "t")
    last = redis_cluster.node(redis_cluster.ports[-1])
    try:
        await check_eviction_policy(r)
        await last.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(
            ConfigError, match=f"allkeys-lru \\(node 127.0.0.1:{redis_cluster.ports[-1]}"
        ):
            await check_eviction_policy(r)
    finally:
        await last.config_set("maxmemory-policy", "noeviction")
        await last.aclose()
        await r.aclose()


async def test_the_probes_answer_for_a_cluster_and_sentinel(redis_cluster, redis_sentinel) -> None:
    assert await asyncio.to_thread(url_answers, redis_cluster.url, 2, "c")
    assert await asyncio.to_thread(url_answers, redis_sentinel.url, 2, "s")
    assert not await asyncio.to_thread(url_answers, "redis+cluster://127.0.0.1:1", 0.5, "x")
    assert not await asyncio.to_thread(url_answers, "redis+sentinel://127.0.0.1:1/m", 0.5, "x")


@pytest.mark.timeout(90)
async def test_a_primary_restarted_empty_changes_the_run_ids_the_reconciler_watches(
    on_cluster: Settings, redis_cluster: LocalCluster
) -> None:
    r = create_redis(on_cluster, "t")
    group = GroupIO(r, Keys.from_settings(on_cluster))
    try:
        before = await group.server_run_id()
        port = redis_cluster.ports[1]
        await redis_cluster.restart_node_empty(port)
        await redis_cluster.until_ok()
        after = await group.server_run_id()
        changed = [a for a, b in zip(before.split(","), after.split(","), strict=True) if a != b]
        assert len(changed) == 1
        assert f":{port}=" in changed[0]
    finally:
        await r.aclose()


# -- Sentinel ---------------------------------------------------------------------------------


async def test_a_sentinel_client_follows_a_failover(
    settings: Settings, redis_sentinel: LocalSentinel
) -> None:
    s = settings.with_(redis_url=redis_sentinel.url)
    r = create_redis(s, "t")
    io = RedisIO(r, Keys.from_settings(s), s)
    try:
        await io.fence("run-a", 1, "w", "")
        await io.append("run-a", 1, [Event(seq=1, type="x", data="{}")])
        assert await r.execute_command("WAIT", 1, 5000) == 1  # the replica has the events
        before = await io.group.server_run_id()
        await redis_sentinel.failover()
        # The client reaches the new primary (the replica had the events); its run id is new
        for _ in range(100):
            try:
                events = await io.events_after("run-a", 0)
                break
            except Exception:  # the old connections fail once
                await asyncio.sleep(0.1)
        assert [e.seq for e in events] == [1]
        assert await io.group.server_run_id() != before
    finally:
        await r.aclose()


# -- deploy/compose.cluster.yaml -----------------------------------------------------------------


def test_the_cluster_compose_file_runs_the_platform_on_a_3_primary_cluster() -> None:
    import yaml

    doc = yaml.safe_load((Path(__file__).parent.parent / "deploy/compose.cluster.yaml").read_text())
    services = doc["services"]
    nodes = {
        name: s["networks"]["redis"]["ipv4_address"]
        for name, s in services.items()
        if name.startswith("redis-") and name != "redis-cluster-init"
    }
    assert len(nodes) == 6
    for name in nodes:
        cmd = services[name]["command"]
        assert cmd[cmd.index("--cluster-enabled") + 1] == "yes"
        assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    init = " ".join(services["redis-cluster-init"]["command"])
    assert "--cluster-replicas 1" in init
    assert all(f"{ip}:6379" in init for ip in nodes.values())  # 6 nodes, 1 replica: 3 primaries
    for svc in ("migrate", "api", "worker"):
        target = RedisTarget.parse(services[svc]["environment"]["REDIS_URL"])
        assert target.mode == "cluster"
        assert {h for h, _ in target.nodes} <= set(nodes.values())
    for svc in ("api", "worker"):
        assert services[svc]["depends_on"]["redis-cluster-init"] == {
            "condition": "service_completed_successfully"
        }


def test_cluster_and_sentinel_urls_print_without_their_passwords() -> None:
    from cli.config import redacted

    assert redacted("redis+cluster://u:pw@h1:1,h2:2") == "redis+cluster://u:***@h1:1,h2:2"
    shown = redacted("redis+sentinel://:pw@s1,s2/m/0?sentinel_password=zz")
    assert shown == "redis+sentinel://:***@s1,s2/m/0?sentinel_password=***"


# -- what a failover lost of runs that ended ---------------------------------------------------


async def _ended_with_a_short_tail(store: Store, rio: RedisIO, in_redis: int = 3) -> str:
    """A run ended at seq 5 (archived) of which Redis holds the first `in_redis` events (after
    a failover lost the rest)."""
    run_id = (await queued_run(store)).run_id
    log = [encode_event(1, {"type": "start", "agent": "ticker"})]
    log += [encode_event(i, {"type": "token", "text": str(i)}) for i in (2, 3, 4)]
    log.append(encode_event(5, {"type": "done", "output": {}}))
    await store.runs.claim(run_id, reclaim=False)
    assert await store.events.append_many([EventBatch(run_id, 1, log)]) == [None]
    if in_redis:
        await rio.fence(run_id, 1, "w", "")
        await rio.append(run_id, 1, log[:in_redis])
    return run_id


class _Away:
    """Redis as a demoted or failing-over primary answers: not at all."""

    async def last_events(self, *_: object, **__: object) -> list[Event]:
        raise RedisConnectionError("Connection closed by server.")


async def test_a_failover_losing_an_ended_runs_tail_is_healed_from_the_archive(
    settings: Settings, store
) -> None:

    r = create_redis(settings, "t")
    rio = RedisIO(r, Keys.from_settings(settings), settings)
    try:
        # Given two runs that ended at seq 5 (archived), of which Redis kept, after a failover,
        # the first three events of one and nothing of the other
        ids = [await _ended_with_a_short_tail(store, rio, in_redis=n) for n in (3, 0)]
        ends = RecentEnds()
        for run_id in ids:
            ends.add(run_id, 5)

        # When the worker that ended them heals what it ended lately
        healed = await heal_recent_ends(settings, store, rio, ends, ShortTails())

        # Then the first run's log is whole in Redis again, closed by its end; the one Redis
        # lost entirely is left to the archive; a second pass finds nothing to do
        assert healed == 1
        assert [e.seq for e in await rio.events_after(ids[0], 0)] == [1, 2, 3, 4, 5]
        assert await r.hget(rio.keys.run_meta(ids[0]), "closed") == b"5"
        assert await r.ttl(rio.keys.events(ids[0])) > 0
        assert await rio.events_after(ids[1], 0) == []
        assert await heal_recent_ends(settings, store, rio, ends, ShortTails()) == 0
    finally:
        await r.aclose()


async def test_an_end_redis_did_not_take_is_mended_at_a_later_heartbeat(
    settings: Settings, store
) -> None:
    """A run that ended while Redis was away or failing over, after the worker had noticed the
    failover and healed what it had ended: its terminal copy failed, and nothing else would
    ever copy it (found by the Sentinel failover test under the full suite's load)."""
    r = create_redis(settings, "t")
    rio = RedisIO(r, Keys.from_settings(settings), settings)
    try:
        # Given a run ended at seq 5 (archived) of which Redis holds the first three events
        run_id = await _ended_with_a_short_tail(store, rio)
        tails = ShortTails()
        tails.add(run_id, 5)

        # When the first heartbeat after its end finds Redis still away
        assert await tails.mend(settings, store, _Away()) == 0  # type: ignore[arg-type]
        # Then the run is kept, and the next heartbeat copies its tail, closed by its end
        assert len(tails) == 1
        assert await tails.mend(settings, store, rio) == 1
        assert len(tails) == 0
        assert [e.seq for e in await rio.events_after(run_id, 0)] == [1, 2, 3, 4, 5]
        assert await r.hget(rio.keys.run_meta(run_id), "closed") == b"5"
    finally:
        await r.aclose()


async def test_a_heal_that_meets_redis_away_is_retried_as_a_short_tail(
    settings: Settings, store
) -> None:
    """The heal runs as the failover is noticed; under Sentinel that may be the moment the
    demoted primary closes its clients (tests/chaos/test_truth_sentinel.py, the frozen primary).
    A run whose heal fails then was left short in Redis for good."""
    r = create_redis(settings, "t")
    rio = RedisIO(r, Keys.from_settings(settings), settings)
    try:
        # Given a run ended at seq 5 (archived) of which Redis holds the first three events
        run_id = await _ended_with_a_short_tail(store, rio)
        ends = RecentEnds()
        ends.add(run_id, 5)
        tails = ShortTails()

        # When the heal after a failover meets Redis closing its connection
        assert await heal_recent_ends(settings, store, _Away(), ends, tails) == 0  # type: ignore[arg-type]
        # Then the run is kept as a short tail, and the next heartbeat's mend copies its tail
        assert len(tails) == 1
        assert await tails.mend(settings, store, rio) == 1
        assert [e.seq for e in await rio.events_after(run_id, 0)] == [1, 2, 3, 4, 5]
        assert await r.hget(rio.keys.run_meta(run_id), "closed") == b"5"
    finally:
        await r.aclose()


def test_a_statement_postgres_rolled_back_to_break_a_deadlock_is_retried_as_unavailable() -> None:
    """Workers' batched statements lock many runs' rows; a burst of re-claims after a failover
    crossed two of them, and the run failed `agent_crashed`. Nothing was written: retry."""
    import asyncpg

    from shared.errors import Unavailable
    from shared.store.pool import _mapped

    for exc in (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError):
        with pytest.raises(Unavailable, match="rolled back"), _mapped():
            raise exc("rolled back")
