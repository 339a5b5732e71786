"""The circuit breakers' shared state in Redis, so every worker sees one breaker per model.

Keys (all from `Keys.scoped`): `<prefix>:breaker:<model>:state`, a hash (`v` version, `status`,
`epoch`, `opened_at`, `probe_at`) changed only by a compare-and-set script and expiring after a
day idle; `<prefix>:breaker:<model>:w:<epoch>:<bucket>`, a hash of `calls` and `failures` for one
time bucket, expiring after two windows. Redis errors become `BreakerStoreDown`.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.keys import Keys
from shared.llm.breaker import BreakerState, BreakerStatus, BreakerStoreDown, Tally

STATE_TTL_SECONDS = 86_400

_CAS = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'status', ARGV[2], 'epoch', ARGV[3],
           'opened_at', ARGV[4], 'probe_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
"""


def _text(raw: bytes | str | None, default: str) -> str:
    if raw is None:
        return default
    return raw.decode() if isinstance(raw, bytes) else raw


def parse_state(fields: dict[bytes, bytes] | dict[str, str]) -> BreakerState:
    """A stored hash as a state; an empty or unreadable one is a fresh closed breaker."""
    get = {_text(k, ""): _text(v, "") for k, v in fields.items()}
    try:
        return BreakerState(
            status=BreakerStatus(get.get("status", "closed")),
            epoch=int(get.get("epoch", "0")),
            opened_at=float(get.get("opened_at", "0")),
            probe_at=float(get.get("probe_at", "0")),
            version=int(get.get("v", "0")),
        )
    except ValueError:
        return BreakerState()


def _tally(values: list[bytes | None]) -> Tally:
    calls, failures = (float(_text(v, "0")) for v in values)
    return Tally(calls=calls, failures=failures)


class RedisBreakerStore:
    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._cas = r.register_script(_CAS)

    def state_key(self, model: str) -> str:
        return self.keys.scoped("breaker", model, "state")

    def bucket_key(self, model: str, epoch: int, bucket: int) -> str:
        return self.keys.scoped("breaker", model, "w", str(epoch), str(bucket))

    async def load(self, model: str) -> BreakerState:
        try:
            fields = await self.r.hgetall(self.state_key(model))
        except (RedisError, OSError) as exc:
            raise BreakerStoreDown(str(exc)) from exc
        return parse_state(fields)

    async def compare_and_set(self, model: str, expected: int, new: BreakerState) -> bool:
        args = [expected, str(new.status), new.epoch, repr(new.opened_at), repr(new.probe_at)]
        try:
            won = await self._cas(keys=[self.state_key(model)], args=[*args, STATE_TTL_SECONDS])
        except (RedisError, OSError) as exc:
            raise BreakerStoreDown(str(exc)) from exc
        return bool(won)

    async def count(
        self, model: str, epoch: int, bucket: int, ok: bool, ttl_seconds: float
    ) -> tuple[Tally, Tally]:
        cur = self.bucket_key(model, epoch, bucket)
        prev = self.bucket_key(model, epoch, bucket - 1)
        try:
            async with self.r.pipeline(transaction=False) as p:
                p.hincrby(cur, "calls", 1)
                p.hincrby(cur, "failures", 0 if ok else 1)
                p.expire(cur, max(1, int(ttl_seconds + 0.999)))
                p.hmget(prev, ["calls", "failures"])
                p.hmget(cur, ["calls", "failures"])
                replies = await p.execute()
        except (RedisError, OSError) as exc:
            raise BreakerStoreDown(str(exc)) from exc
        return _tally(replies[3]), _tally(replies[4])
