"""A private two-node Redis Cluster for tests of Redis errors the code does not expect: the
node a test points at serves only the hash slots of the keys it is given, and answers `MOVED`
for every other key (the second node holds the rest), as a cluster node does to a client that is
not cluster-aware."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import redis.asyncio as aioredis

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
    ports = [cluster_port(), cluster_port()]
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
