"""A real Redis Cluster whose primaries each have a replica (`ReplicatedCluster`), for the fault
tests of a cluster failover: a primary killed, or frozen (SIGSTOP) until the cluster promotes
its replica, then thawed, when it wakes still a primary until the cluster's gossip turns it
into the new primary's replica. Started from the machine's `redis-server` like
`tests.redis_cluster`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis_cluster import (
    LocalCluster,
    _kill,
    _state,
    _text,
    _wait,
    cluster_ports,
    follows,
    started,
)

# Short, so a frozen primary's replica takes over within a few seconds (the cluster marks a
# node failing after this long without a ping, then its replicas hold an election).
NODE_TIMEOUT_MS = 2000


class ReplicatedCluster(LocalCluster):
    """`primaries` primaries with their slots, and one replica each (CLUSTER REPLICATE).
    `ports` names every node, replicas too (the URL's seeds, and `until_ok`'s count)."""

    def __init__(self, root: Path, primaries: int = 3) -> None:
        super().__init__(root, primaries)
        self.node_timeout_ms = NODE_TIMEOUT_MS
        self.replica_ports = cluster_ports(primaries, avoid=self.ports)

    async def start(self) -> None:
        await super().start()  # the primaries, their slots, ok
        primaries = list(self.ports)
        ids = {p: await self.node_id(p) for p in primaries}
        await asyncio.gather(*(self._start_node(p) for p in self.replica_ports))
        for replica, primary in zip(self.replica_ports, primaries, strict=True):
            c = self.node(replica)
            try:
                await c.execute_command("CLUSTER", "MEET", "127.0.0.1", primary)
            finally:
                await c.aclose()
        self.ports = primaries + self.replica_ports
        await self.until_ok()  # every node knows every node
        for replica, primary in zip(self.replica_ports, primaries, strict=True):
            c = self.node(replica)
            try:
                await c.execute_command("CLUSTER", "REPLICATE", ids[primary])
            finally:
                await c.aclose()
        for replica, primary in zip(self.replica_ports, primaries, strict=True):
            await _wait(lambda r=replica, p=primary: self.follows(r, p), "a replica to sync", 30)

    async def node_id(self, port: int) -> str:
        c = self.node(port)
        try:
            return _text(await c.execute_command("CLUSTER", "MYID"))
        finally:
            await c.aclose()

    async def follows(self, replica: int, primary: int) -> bool:
        return await follows(self.node(replica), primary)

    async def replica_of(self, primary: int) -> int:
        """The port of the node replicating `primary`."""
        for port in self.ports:
            if port != primary and await self.follows(port, primary):
                return port
        raise AssertionError(f"no replica follows {primary}")

    async def is_primary(self, port: int) -> bool:
        c = self.node(port)
        try:
            return (await c.info("replication")).get("role") == "master"
        finally:
            await c.aclose()

    async def freeze_primary(self, port: int) -> int:
        """`port`'s primary frozen (SIGSTOP) until its replica is promoted and the cluster is
        ok again, then thawed (SIGCONT): it wakes still a primary and answers its clients until
        the cluster's gossip demotes it. Returns the new primary's port once the old one
        replicates it and every node says the cluster is ok."""
        proc = self.procs[port]
        return await self._fail_over(
            port, lambda: proc.send_signal(signal.SIGSTOP), lambda: proc.send_signal(signal.SIGCONT)
        )

    async def kill_primary(self, port: int) -> int:
        """`port`'s primary killed (SIGKILL): its replica is promoted, and what it had not
        received yet is lost. The old node is started again, empty; its nodes.conf keeps its
        identity, and it rejoins as the new primary's replica. Returns the new primary's port
        once the old one replicates it and every node says the cluster is ok."""
        return await self._fail_over(port, lambda: self.kill_node(port), None, restart=True)

    async def _fail_over(
        self,
        port: int,
        fault: Callable[[], None],
        recover: Callable[[], None] | None,
        restart: bool = False,
    ) -> int:
        new = await self.replica_of(port)
        fault()
        try:
            await _wait(lambda: self.is_primary(new), f"{new} to be promoted", 30)
            await _wait(lambda: self._ok_without(port), "the cluster to be ok without it", 30)
        finally:
            if recover is not None:
                recover()
        if restart:
            await self._start_node(port)
        await _wait(lambda: self.follows(port, new), f"{port} to follow {new}", 30)
        await self.until_ok()
        return new

    def stop(self) -> None:
        for proc in self.procs.values():  # replicas too, however far `start` got
            _kill(proc)
        super().stop()

    async def _ok_without(self, frozen: int) -> bool:
        for port in self.ports:
            if port == frozen:
                continue
            c = self.node(port)
            try:
                if (await _state(c)).get("cluster_state") != "ok":
                    return False
            finally:
                await c.aclose()
        return True


@pytest.fixture(scope="session")
def redis_cluster_replicated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ReplicatedCluster]:
    """A real 3-primary Redis Cluster with a replica per primary, for the session."""
    yield from started(ReplicatedCluster(tmp_path_factory.mktemp("redis-cluster-replicated")))
