"""Redis topologies started from the machine's `redis-server` for tests, on free ports in temp
dirs, killed and removed afterwards:

- `moved_node`: a private two-node Redis Cluster for tests of Redis errors the code does not
  expect: the node a test points at serves only the hash slots of the keys it is given, and
  answers `MOVED` for every other key (the second node holds the rest), as a cluster node does
  to a client that is not cluster-aware;
- `LocalCluster`: a real 3-primary Redis Cluster (`redis+cluster://` URL);
- `LocalSentinel`: a primary, a replica and three sentinels (`redis+sentinel://` URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from shared.config import Settings
from shared.redis.client import create_redis

SLOTS = 16384
# A cluster node also listens on its port + 10000 (the cluster bus), so its port is at most this.
MAX_PORT = 55535


def cluster_port() -> int:
    """A free port whose bus port (+10000) is free too."""
    while True:
        port = random.randint(20000, MAX_PORT)
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port


def cluster_ports(n: int, avoid: Sequence[int] = ()) -> list[int]:
    """`n` free ports whose bus ports are free too, none of them equal to another's port or bus
    port, nor to those of `avoid` (nodes chosen earlier): a node listens on both, and a port
    that is another node's bus port fails to bind once that node runs."""
    used = {q for p in avoid for q in (p, p + 10000)}
    out: list[int] = []
    while len(out) < n:
        port = cluster_port()
        if port in used or port + 10000 in used:
            continue
        used |= {port, port + 10000}
        out.append(port)
    return out


def _ranges(taken: set[int]) -> list[int]:
    """The slots not taken, as ADDSLOTSRANGE's flat start/end pairs."""
    out: list[int] = []
    start = None
    for slot in range(SLOTS + 1):
        free = slot < SLOTS and slot not in taken
        if free and start is None:
            start = slot
        elif not free and start is not None:
            out += [start, slot - 1]
            start = None
    return out


async def _state(r: aioredis.Redis) -> dict[str, str]:
    raw = await r.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


async def _until_up(r: aioredis.Redis, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await r.ping()
            return
        except (OSError, aioredis.ConnectionError):
            if time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise AssertionError(f"redis-server did not start: {text[-2000:]}") from None
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def moved_node(tmp: Path, local_keys: Sequence[str] = ()) -> AsyncIterator[str]:
    """A plain `redis://` URL of a cluster node holding only `local_keys`' slots."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    ports = cluster_ports(2)
    procs = []
    clients: list[aioredis.Redis] = []
    try:
        for port in ports:
            work = tmp / f"node-{port}"
            work.mkdir()
            procs.append(
                await asyncio.create_subprocess_exec(
                    binary,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(work / "nodes.conf"),
                    "--cluster-node-timeout", "2000",
                    "--dir", str(work),
                    "--save", "",
                    "--appendonly", "no",
                    "--logfile", str(work / "redis.log"),
                )
            )  # fmt: skip
            clients.append(aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5))
        node, other = clients
        for c, port in zip(clients, ports, strict=True):
            await _until_up(c, tmp / f"node-{port}" / "redis.log")
        slots = {int(await node.execute_command("CLUSTER", "KEYSLOT", k)) for k in local_keys}
        if slots:
            await node.execute_command("CLUSTER", "ADDSLOTS", *sorted(slots))
        await other.execute_command("CLUSTER", "ADDSLOTSRANGE", *_ranges(slots))
        await node.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[1])
        for _ in range(500):
            states = [await _state(c) for c in clients]
            if all(s.get("cluster_state") == "ok" and s.get("cluster_known_nodes") == "2"
                   for s in states):  # fmt: skip
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the cluster did not form: {states}")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for c in clients:
            await c.aclose()
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()


# -- a real Redis Cluster and a real Sentinel setup ------------------------------------------


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _spawn(args: list[str], work: Path) -> subprocess.Popen[bytes]:
    """A `redis-server` (a plain process, not an asyncio one: the session fixtures outlive
    any one test's event loop)."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    return subprocess.Popen(
        [binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(work)
    )


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


async def follows(c: aioredis.Redis, primary: int) -> bool:
    """Whether the node `c` talks to replicates `primary`, its link up (`c` is closed)."""
    try:
        info = await c.info("replication")
    finally:
        await c.aclose()
    return info.get("master_link_status") == "up" and int(info.get("master_port", 0)) == primary


async def _wait(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, aioredis.RedisError):
            if await check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class LocalCluster:
    """A real Redis Cluster of `primaries` primaries (no replicas) on free ports in `root`,
    slots split evenly (CLUSTER ADDSLOTSRANGE, then MEET): ready in about a second. No
    persistence: a node restarted (`restart_empty`) keeps its identity and slots (its
    nodes.conf) and loses its data, as a primary restarted without persistence does."""

    def __init__(self, root: Path, primaries: int = 3) -> None:
        self.root = root
        self.ports = cluster_ports(primaries)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.node_timeout_ms = 5000

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _work(self, port: int) -> Path:
        return self.root / f"cluster-{port}"

    def node(self, port: int) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    async def _start_node(self, port: int) -> None:
        work = self._work(port)
        work.mkdir(parents=True, exist_ok=True)
        self.procs[port] = _spawn(
            [
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(work / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--dir", str(work),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(work / "redis.log"),
            ],
            work,
        )  # fmt: skip
        c = self.node(port)
        try:
            await _until_up(c, work / "redis.log")
        finally:
            await c.aclose()

    async def start(self) -> None:
        await asyncio.gather(*(self._start_node(p) for p in self.ports))
        n = len(self.ports)
        bounds = [SLOTS * i // n for i in range(n + 1)]
        for i, port in enumerate(self.ports):
            c = self.node(port)
            try:
                await c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
                if i:
                    await c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            finally:
                await c.aclose()
        await self.until_ok()

    async def until_ok(self, timeout: float = 30.0) -> None:
        """Until every node sees every node, every slot covered and the cluster ok."""

        async def ok() -> bool:
            for port in self.ports:
                c = self.node(port)
                try:
                    s = await _state(c)
                finally:
                    await c.aclose()
                if not (
                    s.get("cluster_state") == "ok"
                    and s.get("cluster_known_nodes") == str(len(self.ports))
                    and s.get("cluster_slots_ok") == str(SLOTS)
                ):
                    return False
            return True

        await _wait(ok, "the cluster to be ok", timeout)

    async def port_of(self, key: str) -> int:
        """The port of the primary holding `key`'s slot."""
        c = self.node(self.ports[0])
        try:
            slot = int(await c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in await c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        finally:
            await c.aclose()
        raise AssertionError(f"no node holds slot {slot}")

    def kill_node(self, port: int) -> None:
        _kill(self.procs.get(port))

    async def restart_node_empty(self, port: int) -> None:
        self.kill_node(port)
        await self._start_node(port)

    async def restart_empty(self) -> None:
        """Every primary killed and restarted empty (same identities and slots)."""
        for port in self.ports:
            self.kill_node(port)
        await asyncio.gather(*(self._start_node(p) for p in self.ports))
        await self.until_ok()

    async def run_ids(self) -> dict[int, str]:
        out = {}
        for port in self.ports:
            c = self.node(port)
            try:
                out[port] = str((await c.info("server"))["run_id"])
            finally:
                await c.aclose()
        return out

    def stop(self) -> None:
        for port in self.ports:
            self.kill_node(port)
        shutil.rmtree(self.root, ignore_errors=True)


SENTINEL_SERVICE = "lrprimary"


class LocalSentinel:
    """A real Sentinel setup in `root`: a primary, one replica and three sentinels (quorum 2,
    `down-after-milliseconds` 1000), on free ports, no persistence. `url` is the
    `redis+sentinel://` URL naming the sentinels and the service."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_ports = cluster_ports(2)  # primary, replica at start
        self.sentinel_ports = cluster_ports(3, avoid=self.data_ports)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def _work(self, port: int) -> Path:
        work = self.root / f"sentinel-setup-{port}"
        work.mkdir(parents=True, exist_ok=True)
        return work

    async def _start_data(self, port: int, replica_of: int | None) -> None:
        work = self._work(port)
        args = [
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(work),
            "--save", "",
            "--appendonly", "no",
            # A replica's first sync at once (Redis waits 5 s for more replicas by default)
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(work / "redis.log"),
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs[port] = _spawn(args, work)
        c = self.node(port)
        try:
            await _until_up(c, work / "redis.log")
        finally:
            await c.aclose()

    async def _start_sentinel(self, port: int, primary: int) -> None:
        work = self._work(port)
        conf = work / "sentinel.conf"
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {work}\n"
            f"logfile {work / 'sentinel.log'}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 4000\n"
            f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
        )
        self.procs[port] = _spawn([str(conf), "--sentinel"], work)
        c = self.node(port)
        try:
            await _until_up(c, work / "sentinel.log")
        finally:
            await c.aclose()

    def node(self, port: int) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    async def start(self) -> None:
        primary, replica = self.data_ports
        await self._start_data(primary, None)
        await self._start_data(replica, primary)
        await self._until_replicating(primary, replica)
        await asyncio.gather(*(self._start_sentinel(p, primary) for p in self.sentinel_ports))
        await self.until_settled(primary)

    async def _until_replicating(self, primary: int, replica: int, timeout: float = 20.0) -> None:
        await _wait(
            lambda: self._follows(replica, primary),
            f"the replica {replica} to follow {primary}",
            timeout,
        )

    async def until_settled(self, primary: int, timeout: float = 30.0) -> None:
        """Until every sentinel names `primary`, knows its replica and the two other sentinels."""

        async def settled() -> bool:
            for port in self.sentinel_ports:
                c = self.node(port)
                try:
                    m = await c.execute_command("SENTINEL", "MASTER", SENTINEL_SERVICE)
                finally:
                    await c.aclose()
                fields = dict(zip(m[::2], m[1::2], strict=True)) if isinstance(m, list) else m
                f = {_text(k): _text(v) for k, v in fields.items()}
                if not (
                    f.get("port") == str(primary)
                    and f.get("num-slaves") == "1"
                    and f.get("num-other-sentinels") == "2"
                    and "s_down" not in f.get("flags", "")
                ):
                    return False
            return True

        await _wait(settled, f"the sentinels to agree on primary {primary}", timeout)

    async def primary_port(self) -> int:
        c = self.node(self.sentinel_ports[0])
        try:
            _, port = await c.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
            )
        finally:
            await c.aclose()
        return int(port)

    async def failover(self) -> int:
        """The primary killed (SIGKILL): the sentinels see it down after a second, agree and
        promote the replica; whatever the replica had not received is lost. The old primary
        is then started again, empty, as the new one's replica (as an operator or an orchestrator
        would), so the setup keeps a replica. Returns the new primary's port once every
        sentinel names it and it takes writes."""
        old = await self.primary_port()
        (new,) = [p for p in self.data_ports if p != old]
        self.kill(old)
        await _wait(lambda: self._promoted(new), f"the sentinels to promote {new}", 30)
        await self._start_data(old, new)
        await self._until_replicating(new, old)
        return new

    async def freeze_primary(self) -> tuple[int, int]:
        """The primary frozen (SIGSTOP) until the sentinels promote its replica, then thawed
        (SIGCONT): it wakes still a primary and takes the writes of clients that kept a
        connection to it, until the sentinels turn it into the new primary's replica, when it
        drops them (a split brain, as a paused VM makes). Returns (old, new) once the old one
        replicates the new one and every sentinel agrees."""
        old = await self.primary_port()
        (new,) = [p for p in self.data_ports if p != old]
        self.procs[old].send_signal(signal.SIGSTOP)
        try:
            await _wait(lambda: self._promoted(new), f"the sentinels to promote {new}", 30)
        finally:
            self.procs[old].send_signal(signal.SIGCONT)
        await self._until_replicating(new, old, timeout=40)  # the sentinels demote it
        await self.until_settled(new)
        return old, new

    async def _promoted(self, new: int) -> bool:
        """Every sentinel names `new` the primary, and it says it is one."""
        for port in self.sentinel_ports:
            c = self.node(port)
            try:
                _, p = await c.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
                )
            finally:
                await c.aclose()
            if int(p) != new:
                return False
        c = self.node(new)
        try:
            return (await c.info("replication")).get("role") == "master"
        finally:
            await c.aclose()

    async def _follows(self, replica: int, primary: int) -> bool:
        return await follows(self.node(replica), primary)

    def kill(self, port: int) -> None:
        _kill(self.procs.get(port))

    def stop(self) -> None:
        for proc in self.procs.values():
            _kill(proc)
        shutil.rmtree(self.root, ignore_errors=True)


Topology = TypeVar("Topology", bound="LocalCluster | LocalSentinel")


def started(topology: Topology) -> Iterator[Topology]:
    """A session fixture's body: the topology started, yielded, and stopped however it ends."""
    try:
        asyncio.run(topology.start())
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3-primary Redis Cluster for the session (tests use their own key prefixes)."""
    yield from started(LocalCluster(tmp_path_factory.mktemp("redis-cluster")))


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    """A real Sentinel setup (primary, replica, three sentinels) for the session."""
    yield from started(LocalSentinel(tmp_path_factory.mktemp("redis-sentinel")))


def open_redis(url: str) -> Any:
    """A client for a test's REDIS_URL of any topology (`redis://`, `redis+cluster://`,
    `redis+sentinel://`), built as the platform builds its own."""
    return create_redis(Settings.from_env({"REDIS_URL": url}), "longrun-test")


class LentTopology:
    """A session topology (`LocalCluster`, `LocalSentinel`) lent to one chaos `Stack`, which
    uses its own key prefix there: `stop` deletes that prefix's keys and leaves the servers
    running; `restart_empty` restarts every primary empty (a cluster)."""

    def __init__(self, topology: LocalCluster | LocalSentinel, prefix: str) -> None:
        self.topology = topology
        self.prefix = prefix

    @property
    def url(self) -> str:
        return self.topology.url

    async def restart_empty(self) -> None:
        assert isinstance(self.topology, LocalCluster)
        await self.topology.restart_empty()

    async def stop(self) -> None:
        r = open_redis(self.url)
        try:
            async for key in r.scan_iter(match=f"{self.prefix}:*", count=1000):
                await r.delete(key)
        finally:
            await r.aclose()
