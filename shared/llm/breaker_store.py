"""The circuit breakers' shared state in Redis, so every worker sees one breaker per model: the
`BreakerStore` of `shared.llm.breaker` over `shared.redis.breakers` (keys `Keys.breaker_state`
and `Keys.breaker_window`). Stored hashes become `BreakerState`s here; Redis errors become
`BreakerStoreDown`.
"""

from __future__ import annotations

from shared.llm.breaker import BreakerState, BreakerStatus, BreakerStoreDown, Tally
from shared.redis.breakers import BreakerIO
from shared.redis.client import REDIS_ERRORS, Redis
from shared.redis.keys import Keys

STATE_TTL_SECONDS = 86_400


def parse_state(fields: dict[str, str]) -> BreakerState:
    """A stored hash as a state; an empty or unreadable one is a fresh closed breaker."""
    try:
        return BreakerState(
            status=BreakerStatus(fields.get("status", "closed")),
            epoch=int(fields.get("epoch", "0")),
            opened_at=float(fields.get("opened_at", "0")),
            probe_at=float(fields.get("probe_at", "0")),
            version=int(fields.get("v", "0")),
        )
    except ValueError:
        return BreakerState()


class RedisBreakerStore:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.io = BreakerIO(r, keys)

    async def load(self, model: str) -> BreakerState:
        try:
            fields = await self.io.load(model)
        except REDIS_ERRORS as exc:
            raise BreakerStoreDown(str(exc)) from exc
        return parse_state(fields)

    async def compare_and_set(self, model: str, expected: int, new: BreakerState) -> bool:
        fields: list[str | int] = [
            str(new.status),
            new.epoch,
            repr(new.opened_at),
            repr(new.probe_at),
        ]
        try:
            return await self.io.compare_and_set(model, expected, fields, STATE_TTL_SECONDS)
        except REDIS_ERRORS as exc:
            raise BreakerStoreDown(str(exc)) from exc

    async def count(
        self, model: str, epoch: int, bucket: int, ok: bool, ttl_seconds: float
    ) -> tuple[Tally, Tally]:
        try:
            prev, cur = await self.io.count(model, epoch, bucket, ok, ttl_seconds)
        except REDIS_ERRORS as exc:
            raise BreakerStoreDown(str(exc)) from exc
        return Tally(*prev), Tally(*cur)
