"""The FastAPI application: lifespan (Postgres pool, Redis clients, event hub, security state),
error handling, the middleware stack, and the health, readiness and metrics endpoints.

Middleware, outermost first: the submit lane (`api.submit.lane`: the common `POST /runs`,
answered past every layer below), request ids (so every answer carries one), CORS (only when
origins are configured), body limits, the submit timer, the SSE reconnect hint. Nothing here
logs a request line: the query string of an `events_url` holds a stream token.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from api import (
    console,
    diagnostics,
    docs,
    errors,
    events,
    interrupts,
    ops,
    runs,
    schedules,
    threads,
    wait,
    webhooks,
)
from api.auth import Security
from api.errors import ERROR_RESPONSES, JSONResp
from api.hub import Hub
from api.limits import BodyLimit
from api.metrics import ApiMetrics, SubmitTimer, cluster_figures
from api.metrics import router as metrics_router
from api.middleware import RequestId, install_log_redaction
from api.schemas import declare_agents, drop_null_parameters
from api.shutdown import ReconnectHint
from api.state import AppState, StreamGate
from api.submit import route as submit_route
from api.submit import stream as submit_stream
from api.submit.groups import SubmitGroups
from api.submit.lane import SubmitLane
from shared.agents import load_agents
from shared.config import Settings
from shared.migrate import check_schema
from shared.redis.client import REDIS_ERRORS, create_redis
from shared.redis.failover import FailoverWatch
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store, connect
from shared.tools import load_tools

READY_TIMEOUT = 1.0
HEALTH_MAX_AGE = 0.5  # /health follows a freed slot within about a second (issue 12)
REDIS_OR_TIMEOUT: tuple[type[BaseException], ...] = (TimeoutError, *REDIS_ERRORS)
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-ID"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conn = await connect(settings, "longrun-api")
        try:
            await check_schema(conn)
        finally:
            await conn.close()
        keys = Keys.from_settings(settings)
        store = await Store.open(settings, "longrun-api")
        r = create_redis(settings, "longrun-api")
        # The hub's pub/sub client holds one connection; its readers keep their own small pool.
        hub_redis = create_redis(settings.with_(redis_max_connections=1), "longrun-api-hub")
        hub = Hub(hub_redis, keys)
        # Under Sentinel, a failover it announces closes these clients' connections to the
        # old primary at once (`shared.redis.failover`).
        failovers = FailoverWatch(r, hub_redis).start()
        hub.on_delivery = app.state.metrics.delivery_lag_seconds.observe
        await hub.start()
        state = AppState(
            settings=settings,
            keys=keys,
            store=store,
            redis=r,
            rio=RedisIO(r, keys, settings),
            hub=hub,
            agents=load_agents(settings.agent_modules),
            tools=load_tools(settings.tool_modules),
            streams=StreamGate(settings.max_streams_per_process),
        )
        app.state.longrun = state
        app.state.security = Security.build(settings, keys, r, store)
        await app.state.security.revocations.start()
        state.submits = SubmitGroups(store, r, keys, app.state.security.admission, settings)
        state.submits.on_group = app.state.metrics.observe_submit_group
        # What start-up built lives as long as the process: out of the collector's sight, so
        # a full collection walks only what requests allocate (gen-2 passes over the whole
        # heap were the 50-100 ms stalls in bench.submit's p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            state.shutting_down = True
            await app.state.security.revocations.close()
            await failovers.aclose()
            await hub.close()
            await state.rio.aclose()
            await store.close()

    app = FastAPI(
        title="longrun",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResp,
        responses=ERROR_RESPONSES,
        # A path with a stray slash is a 404: the redirect Starlette makes instead would be
        # built from the request's Host header (see `api.links`).
        redirect_slashes=False,
        # served from the package by `api.docs`, not from a CDN
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    app.state.metrics = ApiMetrics.create()
    app.add_middleware(ReconnectHint)
    app.add_middleware(SubmitTimer, metrics=app.state.metrics)
    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=CORS_HEADERS,
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "Location",
                "Content-Location",  # the run of a POST /runs/stream answer
                "Idempotent-Replayed",
            ],
            max_age=600,
        )
    app.add_middleware(RequestId)
    # Outermost of ours: the common POST /runs, past every other layer (api/submit/lane.py).
    app.add_middleware(
        SubmitLane,
        max_bytes=settings.max_body_bytes,
        metrics=app.state.metrics,
        cors=bool(settings.cors_origins),
    )
    install_log_redaction()
    app.include_router(submit_route.router)  # first: the schema lists POST /runs first, as before
    app.include_router(submit_stream.router)
    app.include_router(runs.router)
    app.include_router(interrupts.router)
    app.include_router(events.router)
    app.include_router(wait.router)
    app.include_router(diagnostics.router)
    app.include_router(threads.router)
    app.include_router(webhooks.router)
    app.include_router(schedules.router)
    app.include_router(ops.router)
    docs.install(app)
    console.install(app)

    @app.get("/health")
    async def health(request: Request) -> dict[str, object]:
        state: AppState = request.app.state.longrun
        figures = await cluster_figures(request, max_age=HEALTH_MAX_AGE)
        return {
            "status": "ok",
            "shutting_down": state.shutting_down,
            "sse_subscribers": state.hub.subscribers,
            # `POST /runs/stream` answers in flight here, and the cap past which they get 503
            "streams": {"in_flight": state.streams.in_flight, "cap": state.streams.cap},
            "waiters": state.hub.waiters,
            # cluster-wide, from the workers' heartbeats; null when Redis does not answer
            "runs_in_flight": None if figures is None else figures.in_flight,
            # delayed runs waiting for their start (not in the backlog); null likewise
            "runs_scheduled": None if figures is None else figures.scheduled,
        }

    @app.get("/ready", responses={503: {"description": "Redis or Postgres is not answering"}})
    async def ready(request: Request) -> JSONResp:
        state: AppState = request.app.state.longrun
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(state.rio.ping(), READY_TIMEOUT)
            checks["redis"] = "ok"
        except REDIS_OR_TIMEOUT:
            checks["redis"] = "down"
        try:
            await asyncio.wait_for(state.store.ping(), READY_TIMEOUT)
            checks["postgres"] = "ok"
        except Exception:
            checks["postgres"] = "down"
        if state.shutting_down:
            checks["shutdown"] = "in progress"
        ok = all(v == "ok" for v in checks.values())
        return JSONResp(
            {"status": "ready" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    app.include_router(metrics_router)

    schema_of = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = schema_of()
            declare_agents(schema, list(load_agents(settings.agent_modules)))
            drop_null_parameters(schema)
        return schema_of()

    app.openapi = openapi  # type: ignore[method-assign]
    return app
