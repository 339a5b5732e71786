"""What a started worker talks to (`Clients`): Postgres (its schema checked first), Redis (its
eviction policy checked, the consumer groups made), the LLM services and the attempts'
dependencies built over them; opened together, closed together, each close step on its own so
one that fails does not keep the next from closing."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import structlog

from shared.agents import load_agents
from shared.config import Settings
from shared.llm.breaker_store import RedisBreakerStore
from shared.llm.budget import PatientLedger
from shared.llm.services import LLM_SERVICE, LLMServices, build_llm_services
from shared.migrate import check_schema
from shared.redis.client import check_eviction_policy, create_redis
from shared.redis.failover import FailoverWatch
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store, connect
from shared.tools import load_tools
from worker.attempt import Deps
from worker.attempt.state import outage_seconds
from worker.batches import RunWrites

log = structlog.get_logger("longrun.worker")


@dataclass(frozen=True)
class Clients:
    """What a started worker talks to: Postgres, Redis, the LLM services, and the attempts'
    dependencies built over them. Opened together by `open`, closed together by `close`."""

    store: Store
    rio: RedisIO
    llm: LLMServices
    deps: Deps
    failovers: FailoverWatch  # Sentinel's failover notices (a no-op on other topologies)

    @classmethod
    async def open(cls, s: Settings, keys: Keys, name: str) -> Clients:
        conn = await connect(s, "longrun-worker")
        try:
            await check_schema(conn)
        finally:
            await conn.close()
        store = await Store.open(s, f"longrun-worker:{name}")
        r = create_redis(s, f"longrun-worker:{name}")
        rio = RedisIO(r, keys, s, batched=True)
        try:
            await check_eviction_policy(r)
            await rio.ensure_group()
        except BaseException:
            await rio.aclose()
            await store.close()
            raise
        # One set of LLM services per process: breakers shared through Redis, daily spend
        # through Postgres, so ceilings and breakers hold across every worker.
        llm = build_llm_services(
            s,
            breaker_store=RedisBreakerStore(r, keys),
            # A Postgres outage pauses a run's spending like its event writes, not fail it.
            ledger=PatientLedger(store.users, outage_seconds(s)),
        )
        deps = Deps(
            settings=s,
            store=store,
            rio=rio,
            writes=RunWrites(store, rio, name),
            agents=load_agents(s.agent_modules),
            consumer=name,
            tools=load_tools(s.tool_modules),
            services={LLM_SERVICE: llm},
        )
        return cls(store, rio, llm, deps, FailoverWatch(r).start())

    @property
    def idle(self) -> bool:
        """No grouped write is waiting or in flight (the clients may close)."""
        return self.rio.idle and self.deps.writes.idle

    async def close(self) -> None:
        """Close each; one that fails is logged and the next one still closes."""
        await logged("close_failover_watch", self.failovers.aclose())
        await logged("close_writes", self.deps.writes.close())
        await logged("close_redis", self.rio.aclose())
        await logged("close_llm", self.llm.aclose())
        await logged("close_store", self.store.close())


async def logged(step: str, closing: Awaitable[object]) -> None:
    """Await one shutdown step; a failure is logged, not raised, so the next step runs."""
    try:
        await closing
    except Exception as exc:
        log.warning("shutdown_step_failed", step=step, error=type(exc).__name__)
