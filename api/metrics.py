"""`GET /metrics`: Prometheus text for the whole cluster, from any API instance.

Cluster-wide figures are aggregated through Redis and Postgres (see `shared.metrics`): workers
publish their heartbeat, in-flight counts and counters in Redis, the statements that end runs
count them and their cost in Postgres, and every API process reads them back at scrape time.
Workers expose no endpoint of their own. Figures that only exist inside one API process are
local to it (sum them across instances): submit latency, event delivery lag, SSE subscribers.

A scrape does not query on every request: the Redis figures are cached for `REDIS_TTL` (about
a dozen bounded commands), the Postgres ones (`store.ops.run_figures`: the finished-run
counters and the active runs, both bounded) for `POSTGRES_TTL`, each read under a short timeout
and shared by concurrent scrapes.
When a store does not answer, its figures are left out and `longrun_metrics_source_up{source}`
says 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.config import Settings
from shared.metrics import BREAKER_VALUES, RedisFigures, cluster_redis
from shared.redis.client import REDIS_DOWN
from shared.redis.ops import OpsIO
from shared.store import RunFigures, Store
from shared.store.schedules import ScheduleFigures

REDIS_TTL = 1.0
POSTGRES_TTL = 10.0
QUERY_TIMEOUT = 2.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

T = TypeVar("T")

_COUNTER_HELP = {
    "reclaims": "Queue entries re-claimed from a worker whose lease expired",
    "lease_losses": "Attempts stopped because their worker lost the lease",
    "handoffs": "Runs handed over to other workers by a draining worker",
    "provider_errors": "Failed model provider calls (retried or final)",
}


@dataclass
class Cached(Generic[T]):
    """A value read at most once per `ttl`; concurrent readers share one read."""

    ttl: float
    value: T | None = None
    at: float = float("-inf")
    ok: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fresh(self, now: float, max_age: float | None = None) -> bool:
        return now - self.at < (self.ttl if max_age is None else max_age)

    async def get(self, read: Callable[[], Any], max_age: float | None = None) -> T | None:
        if self.fresh(time.monotonic(), max_age):
            return self.value
        async with self.lock:
            if self.fresh(time.monotonic(), max_age):
                return self.value
            try:
                self.value = await asyncio.wait_for(read(), QUERY_TIMEOUT)
                self.ok = True
            except Exception:
                # A store that does not answer: report it down, keep no stale figures.
                self.value, self.ok = None, False
            self.at = time.monotonic()
            return self.value


class ClusterCollector(Collector):
    """Renders the cached cluster figures; `refresh()` (async) must run before a scrape."""

    def __init__(self) -> None:
        self.redis: Cached[RedisFigures] = Cached(REDIS_TTL)
        self.postgres: Cached[RunFigures] = Cached(POSTGRES_TTL)
        self.schedules: Cached[ScheduleFigures] = Cached(POSTGRES_TTL)
        self.subscribers: Callable[[], int] = lambda: 0

    async def refresh(self, ops: OpsIO, settings: Settings, store: Store) -> None:
        await asyncio.gather(
            self.redis.get(lambda: cluster_redis(ops, settings)),
            self.postgres.get(store.ops.run_figures),
            self.schedules.get(store.schedules.figures),
        )

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "longrun_metrics_source_up",
            "Whether the store behind these figures answered the last read (1) or not (0)",
            labels=["source"],
        )
        up.add_metric(["redis"], 1.0 if self.redis.ok else 0.0)
        up.add_metric(["postgres"], 1.0 if self.postgres.ok else 0.0)
        yield up
        yield _gauge(
            "longrun_sse_subscribers",
            "Open SSE event streams on this API process",
            self.subscribers(),
        )
        if self.redis.value is not None:
            yield from _redis_metrics(self.redis.value)
        if self.postgres.value is not None:
            yield from _postgres_metrics(self.postgres.value)
        if self.schedules.value is not None:
            yield from _schedule_metrics(self.schedules.value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _redis_metrics(f: RedisFigures) -> Iterator[Metric]:
    yield _gauge(
        "longrun_queue_depth",
        "Entries in every queue shard's ready and held streams (XLEN): queued plus in flight, "
        "the backlog",
        f.backlog,
    )
    shard_depth = GaugeMetricFamily(
        "longrun_queue_shard_depth",
        "Entries in one queue shard's stream: ready (in flight, or promoted for a worker) and "
        "held (queued, waiting for their turn); their sum over shards is longrun_queue_depth",
        labels=["shard", "stream"],
    )
    for x in f.shards:
        shard_depth.add_metric([str(x.shard), "ready"], x.ready)
        shard_depth.add_metric([str(x.shard), "held"], x.held)
    yield shard_depth
    yield _gauge(
        "longrun_queue_waiting", "Queue entries no worker has read yet (group lag)", f.waiting
    )
    if f.group.lag is not None:
        yield _gauge(
            "longrun_group_lag", "The consumer group's lag as Redis 7 reports it", f.group.lag
        )
    yield _gauge(
        "longrun_group_pending",
        "Entries delivered to a worker and not yet acknowledged",
        f.group.pending,
    )
    yield _gauge(
        "longrun_queue_oldest_waiting_age_seconds",
        "Age of the oldest queue entry no worker has read yet (0 when none waits)",
        f.oldest_waiting_age_seconds or 0.0,
    )
    yield _gauge(
        "longrun_runs_scheduled",
        "Delayed runs waiting for their start (queued, not in the queue stream: not backlog)",
        f.scheduled,
    )
    yield _gauge("longrun_workers_live", "Workers that heartbeat within a lease", f.workers_alive)
    yield _gauge("longrun_runs_in_flight", "Runs executing on live workers", f.in_flight)
    yield _gauge("longrun_free_slots", "Free run slots on all live workers", f.free_slots)
    in_flight = GaugeMetricFamily(
        "longrun_worker_runs_in_flight", "Runs executing on one worker", labels=["worker"]
    )
    free = GaugeMetricFamily(
        "longrun_worker_free_slots", "Free run slots on one worker", labels=["worker"]
    )
    beat = GaugeMetricFamily(
        "longrun_worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat",
        labels=["worker"],
    )
    for w in f.workers:
        in_flight.add_metric([w.name], w.in_flight)
        free.add_metric([w.name], w.free_slots)
        beat.add_metric([w.name], w.heartbeat_age_seconds)
    yield in_flight
    yield free
    yield beat
    yield _gauge("longrun_dead_letters", "Entries in the dead-letter stream", f.dead_letters)
    yield _gauge(
        "longrun_dead_letters_unacknowledged",
        "Dead letters newer than the operator's watermark (longrun dlq ack)",
        f.dead_letters_unacked,
    )
    for name, value in sorted(f.counters.items()):
        yield CounterMetricFamily(
            f"longrun_{name}", _COUNTER_HELP.get(name, name.replace("_", " ")), value=value
        )
    breaker = GaugeMetricFamily(
        "longrun_breaker_state",
        "Provider circuit breakers: 1 for the model's current state",
        labels=["model", "state"],
    )
    for model, state in sorted(f.breakers.items()):
        for name in BREAKER_VALUES:
            breaker.add_metric([model, name], 1.0 if state == name else 0.0)
    yield breaker


def _schedule_metrics(f: ScheduleFigures) -> Iterator[Metric]:
    yield _gauge("longrun_schedules", "Live cron schedules (Postgres)", f.live)
    yield CounterMetricFamily(
        "longrun_schedule_ticks", "Runs made by schedules' ticks (Postgres)", value=f.ticks
    )


def _postgres_metrics(f: RunFigures) -> Iterator[Metric]:
    active = GaugeMetricFamily(
        "longrun_runs_active",
        "Runs queued, running or waiting for a person (Postgres)",
        labels=["status"],
    )
    finished = CounterMetricFamily(
        "longrun_runs_finished",
        "Runs that ended, by terminal status (counted by the commits that end them)",
        labels=["status"],
    )
    for status in ("queued", "running", "waiting"):
        active.add_metric([status], f.active.get(status, 0))
    for status in ("succeeded", "failed", "cancelled"):
        finished.add_metric([status], f.finished.get(status, 0))
    yield active
    yield GaugeMetricFamily(
        "longrun_oldest_wait_seconds",
        "How long the longest-waiting run has waited for a person (0: none waits)",
        value=f.oldest_wait_seconds,
    )
    yield finished
    yield CounterMetricFamily(
        "longrun_cost_usd",
        "Model spend recorded by runs' terminal commits, in US dollars",
        value=f.cost_usd,
    )
    hooks = GaugeMetricFamily(
        "longrun_webhook_deliveries",
        "Webhook deliveries still to be made (pending), and given up in the last day (failed)",
        labels=["state"],
    )
    hooks.add_metric(["pending"], f.webhooks_pending)
    hooks.add_metric(["failed"], f.webhooks_failed_day)
    yield hooks


GROUP_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ApiMetrics:
    """The API process's registry: local histograms plus the cluster collector."""

    registry: CollectorRegistry
    cluster: ClusterCollector
    submit_seconds: Histogram
    delivery_lag_seconds: Histogram
    submit_group_size: Histogram
    submit_group_seconds: Histogram

    def observe_submit_group(self, size: int, seconds: float) -> None:
        self.submit_group_size.observe(size)
        self.submit_group_seconds.observe(seconds)

    @classmethod
    def create(cls) -> ApiMetrics:
        registry = CollectorRegistry(auto_describe=False)
        cluster = ClusterCollector()
        registry.register(cluster)
        return cls(
            registry=registry,
            cluster=cluster,
            submit_seconds=Histogram(
                "longrun_submit_duration_seconds",
                "Time to answer POST /runs on this API process, by status code",
                ["code"],
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            submit_group_size=Histogram(
                "longrun_submit_group_size",
                "Submits committed together in one group (api/submit/groups.py)",
                registry=registry,
                buckets=GROUP_SIZE_BUCKETS,
            ),
            submit_group_seconds=Histogram(
                "longrun_submit_group_duration_seconds",
                "Time to admit, insert and enqueue one group of submits",
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            delivery_lag_seconds=Histogram(
                "longrun_event_delivery_lag_seconds",
                "From the hub reading an event from Redis to handing it to a client's stream",
                registry=registry,
                buckets=LAG_BUCKETS,
            ),
        )


class SubmitTimer:
    """Pure ASGI middleware timing `POST /runs` from request to the last body byte."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/runs":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = "500"

        async def timed(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            self.metrics.submit_seconds.labels(code).observe(time.perf_counter() - start)


def metrics_of(request: Request) -> ApiMetrics:
    m: ApiMetrics = request.app.state.metrics
    return m


async def cluster_figures(request: Request, max_age: float) -> RedisFigures | None:
    """The cluster's Redis figures from a snapshot at most `max_age` old, or None when Redis
    does not answer (for `/health`, which must not fail on Redis)."""
    state = request.app.state.longrun
    cached = metrics_of(request).cluster.redis
    try:
        figures = await cached.get(
            lambda: cluster_redis(OpsIO(state.redis, state.keys), state.settings), max_age=max_age
        )
    except REDIS_DOWN:
        return None
    return figures


router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    state = request.app.state.longrun
    m = metrics_of(request)
    m.cluster.subscribers = lambda: state.hub.subscribers
    await m.cluster.refresh(OpsIO(state.redis, state.keys), state.settings, state.store)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
