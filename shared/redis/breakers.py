"""The circuit breakers' shared state in Redis: per model a state hash changed only by a
compare-and-set (breaker_cas.lua), and per time bucket a hash of calls and failures. The breaker
logic is `shared.llm.breaker`'s; `shared.llm.breaker_store` adapts it to this module."""

from __future__ import annotations

from shared.redis import scripts
from shared.redis.client import Redis
from shared.redis.codec import text, text_map
from shared.redis.keys import Keys

Tally = tuple[float, float]  # calls, failures


def _tally(values: list[bytes | None]) -> Tally:
    calls, failures = (float(text(v) or "0") for v in values)
    return calls, failures


class BreakerIO:
    def __init__(self, r: Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._cas = r.register_script(scripts.BREAKER_CAS)

    async def load(self, model: str) -> dict[str, str]:
        """The model's state hash (empty when none is stored)."""
        return text_map(await self.r.hgetall(self.keys.breaker_state(model)))

    async def compare_and_set(
        self, model: str, expected: int, fields: list[str | int], ttl_seconds: int
    ) -> bool:
        """Write `fields` (status, epoch, opened_at, probe_at) if the stored version is
        `expected`; the hash expires after `ttl_seconds` idle."""
        won = await self._cas(
            keys=[self.keys.breaker_state(model)], args=[expected, *fields, ttl_seconds]
        )
        return bool(won)

    async def count(
        self, model: str, epoch: int, bucket: int, ok: bool, ttl_seconds: float
    ) -> tuple[Tally, Tally]:
        """Count one call in `bucket`; the previous bucket's and this one's tallies after it."""
        cur = self.keys.breaker_window(model, epoch, bucket)
        prev = self.keys.breaker_window(model, epoch, bucket - 1)
        async with self.r.pipeline(transaction=False) as p:
            p.hincrby(cur, "calls", 1)
            p.hincrby(cur, "failures", 0 if ok else 1)
            p.expire(cur, max(1, int(ttl_seconds + 0.999)))
            p.hmget(prev, ["calls", "failures"])
            p.hmget(cur, ["calls", "failures"])
            replies = await p.execute()
        return _tally(replies[3]), _tally(replies[4])

    async def states(self, cap: int) -> dict[str, str]:
        """Model -> breaker status, for at most `cap` breakers (a SCAN, then one read each)."""
        found: list[str] = []
        async for raw in self.r.scan_iter(match=self.keys.breaker_states, count=200):
            found.append(text(raw))
            if len(found) >= cap:
                break
        out: dict[str, str] = {}
        for key in sorted(found):
            model = self.keys.breaker_model(key)
            if model is not None:  # skip anything that is not a breaker's state hash
                out[model] = text(await self.r.hget(key, "status")) or "closed"
        return out
