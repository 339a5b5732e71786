"""Fixtures of the fault suite: one private Postgres cluster per session (each test clones its own
database from a migrated template) and a per-test deployment (`Stack`) torn down however the
test ends. Without the Postgres binaries the suite is skipped locally and fails in CI."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.servers import PostgresCluster, postgres_available
from tests.chaos.stack import Stack, build_stack, teardown_stack
from tests.redis_cluster import LentTopology


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    missing = postgres_available()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the fault suite needs a private Postgres cluster: {missing}")
        pytest.skip(f"no private Postgres cluster: {missing}")
    cluster = PostgresCluster()
    try:
        cluster.init()
        asyncio.run(cluster.make_template())
        yield cluster
    finally:
        cluster.destroy()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(pg_cluster: PostgresCluster, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """`await make_stack(workers=3, aof=False, redis=None, **env)`: the API started, `workers`
    workers started, SSE followers ready (`stack.followers`); `redis`: a session cluster or
    Sentinel setup lent to the stack (else a private Redis server)."""
    built: list[tuple[Stack | None, str | None]] = []

    async def make(
        workers: int = 3, aof: bool = False, redis: LentTopology | None = None, **env: str
    ) -> Stack:
        stack, db = await build_stack(pg_cluster, tmp_path, aof=aof, redis=redis, **env)
        built.append((stack, db))
        # The API and the workers start together: each is a Python process importing the
        # same modules (about a second of CPU each).
        await asyncio.gather(stack.api.start(), stack.add_workers(workers))
        await stack.workers_ready()
        stack.follow()
        return stack

    try:
        yield make
    finally:
        for stack, db in built:
            await teardown_stack(stack, pg_cluster, db)
