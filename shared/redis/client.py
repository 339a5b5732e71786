"""Redis clients and Redis failures: the client factory (timeouts, a client name, one quick
retry), the start-up checks and probes, and the error classes the rest of the code catches
(`REDIS_DOWN`: Redis is away; `REDIS_ERRORS`: any Redis failure, expected or not).

Only `shared.redis` imports redis-py: elsewhere a client is an opaque `Redis` handed to the
io classes of this package, which send every command.

Three topologies (`RedisTarget`, read from `REDIS_URL` and `LONGRUN_REDIS_MODE`), each with
redis-py's own client:
- one server, `redis://[user:password@]host:port/db` (`rediss://` for TLS);
- a Redis Cluster, `redis+cluster://[user:password@]host:port[,host:port...]` (seed nodes; or
  a plain URL with `LONGRUN_REDIS_MODE=cluster`): `redis.asyncio.cluster.RedisCluster`, which
  routes each command by its key's slot and follows MOVED/ASK and failovers itself;
- Sentinel, `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`
  (`?sentinel_password=` when the sentinels want one of their own): the primary Sentinel names
  for `service`, through `Sentinel.master_for`, which asks the sentinels again after a failover.
What must be asked of every primary (the server run ids, the eviction policy) goes through
`primaries`; `is_cluster` tells the two client types apart where it matters.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.cluster
import redis.sentinel
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config import Settings
from shared.errors import ConfigError
from shared.redis.sentinel import (
    PinnedPool,
    SentinelConnection,
    SentinelRedis,
    SentinelSSLConnection,
)

# What the rest of the code holds: one server's (or Sentinel's primary's) client, or a
# cluster's. Both speak the same commands; the io classes of this package branch on
# `is_cluster` where a cluster needs another way (script pipelines, pub/sub, per-node reads).
Redis: TypeAlias = aioredis.Redis | RedisCluster

# Redis is away (down, unreachable, too slow): callers degrade or answer 503.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
# Redis' own "cannot reach it" errors, without the OSError other clients raise too (the CLI
# tells a Redis failure from a Postgres one with them); `RedisTimeout` is the timed-out one.
REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
RedisTimeout = RedisTimeoutError
# Any Redis failure, including replies the code does not expect (`MOVED` from a cluster node,
# `WRONGTYPE`, `OOM`, `NOPERM`), and the cluster client's own refusals (a command whose keys
# cross slots, no reachable node), which are not `RedisError`s: what a caller that must not
# crash catches.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


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


Mode = Literal["single", "cluster", "sentinel"]
_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to talk to it, parsed from `REDIS_URL` (+ `LONGRUN_REDIS_MODE`)."""

    mode: Mode
    url: str  # as given (a single server's client is built from it)
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seeds, or the sentinels
    service: str = ""  # Sentinel: the primary's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False

    @classmethod
    def parse(cls, url: str, mode: str = "auto") -> RedisTarget:
        """A ConfigError names what is wrong with the URL."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in _SCHEMES:
            raise ConfigError(
                f"REDIS_URL must start with one of {', '.join(s + '://' for s in _SCHEMES)}"
            )
        kind, ssl = _SCHEMES[scheme.lower()]
        if mode not in ("auto", kind):
            if not (kind == "single" and mode == "cluster" and scheme.lower() != "unix"):
                raise ConfigError(f"LONGRUN_REDIS_MODE={mode} does not fit a {scheme}:// URL")
            kind = "cluster"  # a plain URL naming one seed node of a cluster
        if kind == "single":
            return cls(mode="single", url=url, ssl=ssl)
        parts = urlsplit(f"x://{rest}")  # the netloc's commas keep urlsplit from reading ports
        netloc = parts.netloc
        creds, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, pw = creds.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if colon else None
        nodes = tuple(_host_port(h, url) for h in hosts.split(",") if h.strip())
        if not nodes:
            raise ConfigError("REDIS_URL names no Redis host")
        path = [p for p in parts.path.split("/") if p]
        query = parse_qs(parts.query)
        db = 0
        service = ""
        if kind == "cluster":
            if path and path != ["0"]:
                raise ConfigError("a Redis Cluster has only database 0: drop /db from REDIS_URL")
        else:
            if not path or len(path) > 2:
                raise ConfigError(
                    "a Sentinel REDIS_URL names its primary: redis+sentinel://host:port/mymaster[/db]"
                )
            service = unquote(path[0])
            if len(path) == 2:
                if not path[1].isdigit():
                    raise ConfigError(f"REDIS_URL: the database must be a number, got {path[1]!r}")
                db = int(path[1])
        return cls(
            mode=kind,
            url=url,
            nodes=nodes,
            service=service,
            db=db,
            username=username,
            password=password,
            sentinel_password=next(iter(query.get("sentinel_password", [])), None),
            ssl=ssl,
        )


def _host_port(text: str, url: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:7000
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not port:
        return host, 6379 if "sentinel" not in url.split("://")[0] else 26379
    if not port.isdigit():
        raise ConfigError(f"REDIS_URL: bad port in {text!r}")
    return host, int(port)


def target_of(settings: Settings) -> RedisTarget:
    return RedisTarget.parse(settings.redis_url, settings.redis_mode)


def is_cluster(r: Redis) -> bool:
    return isinstance(r, RedisCluster)


# How each cluster client was built, to build a sibling with another pool size.
_CLUSTER_BUILDS: weakref.WeakKeyDictionary[RedisCluster, Callable[[int], RedisCluster]] = (
    weakref.WeakKeyDictionary()
)


def create_redis(settings: Settings, name: str) -> Redis:
    """A pooled client with timeouts on connect and read, and a client name for CLIENT LIST.
    Blocking reads must use BLOCK well under `redis_socket_timeout`."""
    target = target_of(settings)
    common: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "health_check_interval": 30,
        "client_name": name,
        "decode_responses": False,
    }
    if target.mode == "cluster":

        def build(max_connections: int) -> RedisCluster:
            c = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                username=target.username,
                password=target.password,
                ssl=target.ssl,
                # Per node. A failover or a slot move is retried by the client (it reloads the
                # slot map), a few times with a short backoff.
                max_connections=max_connections,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                **common,
            )
            _CLUSTER_BUILDS[c] = build
            return c

        return build(settings.redis_max_connections)
    # One quick retry for a dropped idle connection; never retry a timed-out command.
    retry = {"retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1), "retry_on_timeout": False}
    if target.mode == "sentinel":
        sentinel = Sentinel(
            list(target.nodes),
            sentinel_kwargs={
                "password": target.sentinel_password,
                "socket_timeout": settings.redis_connect_timeout,
                "socket_connect_timeout": settings.redis_connect_timeout,
            },
        )
        client = sentinel.master_for(
            target.service,
            redis_class=SentinelRedis,
            connection_pool_class=PinnedPool,
            connection_class=SentinelSSLConnection if target.ssl else SentinelConnection,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            max_connections=settings.redis_max_connections,
            **retry,
            **common,
        )
        client.sentinel = sentinel
        client.pools = [client.connection_pool]
        return client
    single: Redis = aioredis.Redis.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections, **retry, **common
    )
    return single


def blocking_pool_of(r: Redis, connections: int, wait_seconds: float) -> Redis:
    """A client with `r`'s settings and name on a pool of its own of at most `connections`,
    where a caller waits (up to `wait_seconds`) for a free connection instead of opening one.
    On a cluster: a sibling client with at most `connections` per node (redis-py's cluster
    client has no waiting pool: past the cap a command fails at once)."""
    if isinstance(r, RedisCluster):
        build = _CLUSTER_BUILDS.get(r)
        if build is None:
            raise ConfigError("blocking_pool_of: a cluster client not made by create_redis")
        return build(connections)
    pool = r.connection_pool
    blocking = aioredis.BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=connections,
        timeout=wait_seconds,
        **pool.connection_kwargs,
    )
    if isinstance(r, SentinelRedis):
        r.pools.append(blocking)
    return aioredis.Redis.from_pool(blocking)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def primaries(r: Redis, *command: Any) -> dict[str, Any]:
    """One command sent to every primary: node (host:port) -> reply. On one server (or
    Sentinel's primary) that is one reply. Any node failing raises."""
    if isinstance(r, RedisCluster):
        await r.initialize()  # the slot map (a no-op once loaded)
        out: dict[str, Any] = {}
        for node in sorted(r.get_primaries(), key=lambda n: n.name):
            try:
                out[node.name] = await r.execute_command(*command, target_nodes=node)
            except RedisConnectionError:  # a pooled connection to a node that restarted
                out[node.name] = await r.execute_command(*command, target_nodes=node)
        return out
    return {"": await r.execute_command(*command)}


async def server_run_ids(r: Redis) -> str:
    """The run ids of the server(s) holding the data (`INFO server`), one string: it changes
    when any primary restarted, failed over to a replica, or the cluster's primaries changed."""
    infos = await primaries(r, "INFO", "server")
    if not is_cluster(r):
        return _run_id(infos[""])
    return ",".join(f"{node}={_run_id(info)}" for node, info in sorted(infos.items()))


def _run_id(info: Any) -> str:
    if isinstance(info, dict):
        return str(info.get("run_id", ""))
    for line in _s(info).splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    return ""


async def check_eviction_policy(r: Redis) -> None:
    """Refuse a Redis that may evict the queue: `allkeys-*` policies drop any key. Every
    primary of a cluster is asked."""
    try:
        replies = await primaries(r, "CONFIG", "GET", "maxmemory-policy")
    except ResponseError:  # CONFIG disabled (managed Redis): cannot check, carry on
        return
    for node, reply in replies.items():
        if not isinstance(reply, dict):  # RESP2 without redis-py's callback: a flat list
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        pairs = reply.items()
        policy = next((_s(v) for k, v in pairs if _s(k) == "maxmemory-policy"), "")
        if policy.startswith("allkeys"):
            where = f" (node {node})" if node else ""
            raise ConfigError(
                f"Redis maxmemory-policy is {policy}{where}: it may evict the run queue. "
                "Use noeviction (or a volatile-* policy)."
            )


def url_answers(url: str, timeout: float, shown_as: str, mode: str = "auto") -> bool:
    """True if the Redis at `url` answers PING (a cluster: its slot map loads; Sentinel: the
    sentinels name a primary that answers); False if nothing (usable) listens there. A Redis
    that answers but refuses our credentials is a ConfigError (naming it `shown_as`)."""
    target = RedisTarget.parse(url, mode)
    opts: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    client: Any
    sentinels: list[Any] = []
    if target.mode == "cluster":
        try:
            client = redis.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in target.nodes],
                username=target.username,
                password=target.password,
                ssl=target.ssl,
                **opts,
            )
        except redis.AuthenticationError as exc:
            raise ConfigError(f"Redis at {shown_as} refused our credentials: {exc}") from exc
        except (redis.RedisError, RedisClusterException, OSError):  # no seed, or no slot map
            return False
    elif target.mode == "sentinel":
        sentinel = redis.sentinel.Sentinel(
            list(target.nodes), sentinel_kwargs={"password": target.sentinel_password, **opts}
        )
        client = sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            **opts,
        )
        sentinels = list(sentinel.sentinels)
    else:
        client = redis.Redis.from_url(url, **opts)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis at {shown_as} refused our credentials: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, redis.RedisError, OSError):
        return False
    finally:
        client.close()
        for s in sentinels:
            s.close()
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
