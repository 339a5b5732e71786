"""Redis clients and Redis failures: the client factory (timeouts, a client name, one quick
retry), the start-up checks and probes, and the error classes the rest of the code catches
(`REDIS_DOWN`: Redis is away; `REDIS_ERRORS`: any Redis failure, expected or not).

Only `shared.redis` imports redis-py: elsewhere a client is an opaque `Redis` handed to the
io classes of this package, which send every command.
"""

from __future__ import annotations

import socket
from typing import TypeAlias

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config import Settings
from shared.errors import ConfigError

Redis: TypeAlias = aioredis.Redis

# Redis is away (down, unreachable, too slow): callers degrade or answer 503.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
# Redis' own "cannot reach it" errors, without the OSError other clients raise too (the CLI
# tells a Redis failure from a Postgres one with them); `RedisTimeout` is the timed-out one.
REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
RedisTimeout = RedisTimeoutError
# Any Redis failure, including replies the code does not expect (`MOVED` from a cluster node,
# `WRONGTYPE`, `OOM`, `NOPERM`): what a caller that must not crash catches.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


def reply_word(exc: BaseException) -> str:
    """What a Redis failure was, for a log line: an error reply's first word (`MOVED`,
    `WRONGTYPE`, `NOGROUP`), else the exception's class name. Never the rest of the reply,
    which may quote data."""
    if isinstance(exc, ResponseError):
        # redis-py 8 strips the word of the errors it has a class for (`MOVED`, `ASK`, `OOM`,
        # `NOPERM` ...) and keeps it as `status_code`.
        code = getattr(exc, "status_code", None)
        word = code if isinstance(code, str) else str(exc).split(" ", 1)[0]
        if word.isupper() and word.isalpha():
            return word
    return type(exc).__name__


def group_lost(exc: BaseException) -> bool:
    """Redis lost the consumer group (restarted empty, flushed): make it again."""
    return isinstance(exc, ResponseError) and reply_word(exc) in ("NOGROUP", "UNBLOCKED")


def create_redis(settings: Settings, name: str) -> Redis:
    """A pooled client with timeouts on connect and read, and a client name for CLIENT LIST.
    Blocking reads must use BLOCK well under `redis_socket_timeout`."""
    client: Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        health_check_interval=30,
        client_name=name,
        max_connections=settings.redis_max_connections,
        # One quick retry for a dropped idle connection; never retry a timed-out command.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        retry_on_timeout=False,
        decode_responses=False,
    )
    return client


def blocking_pool_of(r: Redis, connections: int, wait_seconds: float) -> Redis:
    """A client with `r`'s settings and name on a pool of its own of at most `connections`,
    where a caller waits (up to `wait_seconds`) for a free connection instead of opening one."""
    pool = r.connection_pool
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=connections,
            timeout=wait_seconds,
            **pool.connection_kwargs,
        )
    )


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def check_eviction_policy(r: Redis) -> None:
    """Refuse a Redis that may evict the queue: `allkeys-*` policies drop any key."""
    try:
        reply = await r.config_get("maxmemory-policy")
    except ResponseError:  # CONFIG disabled (managed Redis): cannot check, carry on
        return
    policy = next((_s(v) for k, v in reply.items() if _s(k) == "maxmemory-policy"), "")
    if policy.startswith("allkeys"):
        raise ConfigError(
            f"Redis maxmemory-policy is {policy}: it may evict the run queue. "
            "Use noeviction (or a volatile-* policy)."
        )


def url_answers(url: str, timeout: float, shown_as: str) -> bool:
    """True if the Redis at `url` answers PING; False if nothing (usable) listens there. A Redis
    that answers but refuses our credentials is a ConfigError (naming it `shown_as`)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis at {shown_as} refused our credentials: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()
    return True


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis at host:port answers PING (not while it is still loading data): one
    raw RESP round trip, no client, for a server this process has just started."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
