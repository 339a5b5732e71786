"""Settings: every knob longrun reads from the environment, declared once, parsed once.

Each knob is one line of the `Settings` table below: its name, type, default, environment
variable, lower bound and the concern it belongs to (`shared.knobs`: how a knob is declared,
parsed and documented). `Settings.from_env()` is called
by an entry point (the CLI, or a test) and the frozen result is passed down; nothing else in the
code base reads `os.environ`. A malformed or out-of-bounds value fails at start-up with a
message naming the variable. `Settings.to_env()` is the inverse, for starting child processes.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, fields, replace
from functools import cache
from typing import Any

from shared.knobs import GROUPS, Knob, base_url, choice, hosts, knob, read, written
from shared.knobs import markdown as knobs_doc

__all__ = ["GROUPS", "Knob", "Settings", "by_group", "knobs", "markdown"]


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one process. Frozen: derive variants with `with_()`."""

    # -- servers ---------------------------------------------------------------------------
    redis_url: str = knob("redis://127.0.0.1:6379/0", "REDIS_URL", "servers", "Redis")
    # How REDIS_URL is read: `auto` by its scheme (`redis://` one server, `redis+cluster://`
    # a Redis Cluster, `redis+sentinel://` a Sentinel-watched primary); `cluster` makes a plain
    # `redis://host:port` URL a cluster's seed node.
    redis_mode: str = knob(
        "auto",
        "LONGRUN_REDIS_MODE",
        "servers",
        "Redis topology: auto, single, cluster or sentinel",
        parse=lambda env, raw: choice(env, raw, ("auto", "single", "cluster", "sentinel")),
    )
    database_url: str = knob(
        "postgresql://postgres@127.0.0.1:5432/longrun", "DATABASE_URL", "servers", "Postgres"
    )
    # -- the HTTP edge ---------------------------------------------------------------------
    # Time a connection has to send a whole request head (from its first byte, or from the
    # connection's start), idle time between requests on a kept-alive connection, and open
    # connections per API process (0: the process's file-descriptor limit less a reserve).
    head_timeout_seconds: float = knob(
        10.0, "LONGRUN_HEAD_TIMEOUT_SECONDS", "http", "time to send a request head", minimum=0.05
    )
    keepalive_seconds: float = knob(
        5.0, "LONGRUN_KEEPALIVE_SECONDS", "http", "idle keep-alive time", minimum=0.05
    )
    max_connections: int = knob(
        0,
        "LONGRUN_MAX_CONNECTIONS",
        "http",
        "open connections per API process (0: the fd limit less a reserve)",
        minimum=0,
    )
    # Public links (`url`, `events_url`) start with this URL, e.g. "https://api.example.com";
    # without it, with the request's Host when it is one of `trusted_hosts`; else the address
    # the connection arrived at.
    public_url: str | None = knob(
        None,
        "LONGRUN_PUBLIC_URL",
        "http",
        "base of public links (https://api.example.com)",
        parse=lambda env, raw: base_url(env, raw),
    )
    trusted_hosts: tuple[str, ...] = knob(
        (),
        "LONGRUN_TRUSTED_HOSTS",
        "http",
        "Host headers links may be built from",
        parse=lambda env, raw: hosts(env, raw),
    )
    # -- queue -----------------------------------------------------------------------------
    key_prefix: str = knob(
        "longrun", "LONGRUN_KEY_PREFIX", "queue", "prefix of every Redis key (tests: one each)"
    )
    queue: str = knob(
        "longrun:runs", "LONGRUN_QUEUE", "queue", "the queue stream (default <prefix>:runs)"
    )
    group: str = knob("workers", "LONGRUN_GROUP", "queue", "the consumer group")
    queue_shards: int = knob(
        1,
        "LONGRUN_QUEUE_SHARDS",
        "queue",
        "queue shards: streams (each its own group and hash slot) runs are spread over",
        minimum=1,
    )
    fair: bool = knob(
        True,
        "LONGRUN_FAIR",
        "queue",
        "dispatch round-robin across users with queued runs (off: one FIFO per priority)",
    )
    priority_starvation: int = knob(
        10,
        "LONGRUN_PRIORITY_STARVATION",
        "queue",
        "a waiting lower priority gets a run after this many higher picks in a row",
        minimum=1,
    )
    concurrency: int = knob(
        32, "LONGRUN_CONCURRENCY", "queue", "runs in flight per worker process", minimum=1
    )
    max_attempts: int = knob(
        3, "LONGRUN_MAX_ATTEMPTS", "queue", "deliveries before dead-lettering", minimum=1
    )
    reconcile_seconds: float = knob(
        10.0,
        "LONGRUN_RECONCILE_SECONDS",
        "queue",
        "how often one worker re-enqueues runs Redis lost",
        minimum=0.1,
    )
    # Delayed runs (`start_after` / `start_at`): every worker looks for due ones this often,
    # and whichever takes a due one from the set enqueues it (so a run starts within about
    # this long of its time).
    delay_poll_seconds: float = knob(
        0.25,
        "LONGRUN_DELAY_POLL_SECONDS",
        "queue",
        "how often each worker promotes due delayed runs",
        minimum=0.01,
    )
    # -- leases ----------------------------------------------------------------------------
    lease_seconds: float = knob(
        30.0,
        "LONGRUN_LEASE_SECONDS",
        "leases",
        "a silent worker's runs move after this",
        minimum=0.3,
    )
    drain_seconds: float = knob(
        20.0, "LONGRUN_DRAIN_SECONDS", "leases", "SIGTERM grace before hand-over", minimum=0.0
    )
    run_timeout_seconds: float = knob(
        3600.0,
        "LONGRUN_RUN_TIMEOUT_SECONDS",
        "leases",
        "run time limit (params.timeout_seconds may ask for more, up to the max)",
        minimum=0.1,
    )
    max_run_timeout_seconds: float = knob(
        6 * 3600.0,
        "LONGRUN_MAX_RUN_TIMEOUT_SECONDS",
        "leases",
        "the most params.timeout_seconds may ask for",
        minimum=0.1,
    )
    worker_name: str | None = knob(
        None, "LONGRUN_WORKER_NAME", "leases", "consumer name (default host-pid-random)"
    )
    # -- events ----------------------------------------------------------------------------
    events_ttl_seconds: int = knob(
        3600,
        "LONGRUN_EVENTS_TTL_SECONDS",
        "events",
        "Redis keeps a finished run's events this long",
        minimum=1,
    )
    # A run's event stream is capped in count and bytes; past either the run fails.
    max_events_per_run: int = knob(
        100_000, "LONGRUN_MAX_EVENTS_PER_RUN", "events", "per-run event cap", minimum=3
    )
    max_event_bytes_per_run: int = knob(
        64 * 1024 * 1024,
        "LONGRUN_MAX_EVENT_BYTES_PER_RUN",
        "events",
        "per-run event bytes cap",
        minimum=1024,
    )
    sse_ping_seconds: float = knob(
        15.0, "LONGRUN_SSE_PING_SECONDS", "events", "SSE keep-alive interval", minimum=0.05
    )
    # A wait (`GET /runs/{id}/wait`, `POST /runs/wait`) asks for up to 300 s; it is answered
    # (202, the client waits again) after at most this long: keep it under a proxy's idle
    # timeout.
    max_wait_seconds: float = knob(
        300.0,
        "LONGRUN_MAX_WAIT_SECONDS",
        "events",
        "longest a wait request is held before its 202",
        minimum=0.0,
    )
    # -- pools and timeouts ----------------------------------------------------------------
    pg_pool_min: int = knob(1, "LONGRUN_PG_POOL_MIN", "pools", "Postgres pool size", minimum=0)
    pg_pool_max: int = knob(16, "LONGRUN_PG_POOL_MAX", "pools", "Postgres pool cap", minimum=1)
    pg_command_timeout: float = knob(
        10.0, "LONGRUN_PG_TIMEOUT", "pools", "Postgres statement timeout (s)", minimum=0.1
    )
    pg_acquire_timeout: float = knob(
        5.0,
        "LONGRUN_PG_ACQUIRE_TIMEOUT",
        "pools",
        "wait for a pooled Postgres connection (s)",
        minimum=0.1,
    )
    redis_socket_timeout: float = knob(
        10.0, "LONGRUN_REDIS_TIMEOUT", "pools", "Redis read timeout (s)", minimum=0.1
    )
    redis_connect_timeout: float = knob(
        3.0, "LONGRUN_REDIS_CONNECT_TIMEOUT", "pools", "Redis connect timeout (s)", minimum=0.05
    )
    redis_max_connections: int = knob(
        64, "LONGRUN_REDIS_MAX_CONNECTIONS", "pools", "Redis pool cap", minimum=2
    )
    # -- limits on what a client controls --------------------------------------------------
    max_body_bytes: int = knob(
        1024 * 1024, "LONGRUN_MAX_BODY_BYTES", "limits", "request body limit", minimum=1024
    )
    max_input_chars: int = knob(
        200_000, "LONGRUN_MAX_INPUT_CHARS", "limits", "a run's input limit", minimum=1
    )
    max_json_bytes: int = knob(
        64 * 1024, "LONGRUN_MAX_JSON_BYTES", "limits", "params/metadata size", minimum=2
    )
    max_json_depth: int = knob(
        16, "LONGRUN_MAX_JSON_DEPTH", "limits", "params/metadata nesting", minimum=1
    )
    max_interrupt_bytes: int = knob(
        64 * 1024,
        "LONGRUN_MAX_INTERRUPT_BYTES",
        "limits",
        "an interrupt's payload, default or resume value (encoded JSON)",
        minimum=2,
    )
    max_interrupt_seconds: float = knob(
        30 * 86400.0,
        "LONGRUN_MAX_INTERRUPT_SECONDS",
        "limits",
        "the longest deadline an agent's interrupt may ask for (timeout_seconds)",
        minimum=1.0,
    )
    # The latest a submit may ask its run to start (`start_after`, `start_at`), from now.
    max_start_delay_seconds: float = knob(
        365 * 86400.0,
        "LONGRUN_MAX_START_DELAY_SECONDS",
        "limits",
        "the furthest ahead a run's delayed start may be",
        minimum=1.0,
    )
    max_header_bytes: int = knob(
        16 * 1024, "LONGRUN_MAX_HEADER_BYTES", "limits", "request head limit", minimum=1024
    )
    max_sse_per_user: int = knob(
        20, "LONGRUN_MAX_SSE_PER_USER", "limits", "open SSE streams per user", minimum=1
    )
    # `POST /runs/stream` answers in flight in one API process; past it, 503 `streams_full`
    # (`/health` reports both figures, for scaling the API on saturation).
    max_streams_per_process: int = knob(
        1000,
        "LONGRUN_MAX_STREAMS_PER_PROCESS",
        "limits",
        "submit-and-stream answers in flight per API process",
        minimum=1,
    )
    # -- admission -------------------------------------------------------------------------
    # A per-user token bucket, a per-user cap on queued + running runs, the backlog depth
    # (XLEN of the queue) past which submits get 503, and the kill switch.
    submit_rate_per_second: float = knob(
        50.0,
        "LONGRUN_SUBMIT_RATE_PER_SECOND",
        "admission",
        "per-user submit rate",
        minimum=0.001,
    )
    submit_burst: int = knob(
        100, "LONGRUN_SUBMIT_BURST", "admission", "per-user submit burst", minimum=1
    )
    max_runs_in_flight_per_user: int = knob(
        1000,
        "LONGRUN_MAX_RUNS_IN_FLIGHT_PER_USER",
        "admission",
        "queued + running runs per user",
        minimum=1,
    )
    max_backlog: int = knob(
        100_000,
        "LONGRUN_MAX_BACKLOG",
        "admission",
        "queue depth past which submits get 503",
        minimum=1,
    )
    accept_runs: bool = knob(
        True, "LONGRUN_ACCEPT_RUNS", "admission", "false: submits get 503 paused"
    )
    idempotency_ttl_seconds: int = knob(
        24 * 3600,
        "LONGRUN_IDEMPOTENCY_TTL_SECONDS",
        "admission",
        "how long an Idempotency-Key is remembered",
        minimum=1,
    )
    # -- auth ------------------------------------------------------------------------------
    # JWT bearer tokens, besides API keys: HS256 with a shared secret, or RS256/ES256 with the
    # public keys of a JWKS file. The algorithm is pinned; `exp`, `aud` and `iss` are required.
    jwt_secret: str | None = knob(None, "LONGRUN_JWT_SECRET", "auth", "HS256 secret")
    jwt_jwks_file: str | None = knob(None, "LONGRUN_JWT_JWKS_FILE", "auth", "JWKS file path")
    jwt_algorithm: str | None = knob(
        None, "LONGRUN_JWT_ALGORITHM", "auth", "pinned algorithm (HS256 / RS256 default)"
    )
    jwt_audience: str | None = knob(None, "LONGRUN_JWT_AUDIENCE", "auth", "required aud")
    jwt_issuer: str | None = knob(None, "LONGRUN_JWT_ISSUER", "auth", "required iss")
    jwt_user_claim: str = knob("sub", "LONGRUN_JWT_USER_CLAIM", "auth", "claim naming the user")
    jwt_leeway_seconds: float = knob(
        5.0, "LONGRUN_JWT_LEEWAY_SECONDS", "auth", "clock skew allowed", minimum=0.0
    )
    # Short-lived tokens in `events_url` (browsers' EventSource cannot send headers). Every API
    # process must share the secret; unset, each process generates its own.
    stream_token_secret: str | None = knob(
        None, "LONGRUN_STREAM_TOKEN_SECRET", "auth", "signs events_url tokens (share it)"
    )
    stream_token_ttl_seconds: int = knob(
        900, "LONGRUN_STREAM_TOKEN_TTL_SECONDS", "auth", "events_url token lifetime", minimum=1
    )
    # Comma-separated origins ("*" for any); empty (the default) sends no CORS headers.
    cors_origins: tuple[str, ...] = knob((), "LONGRUN_CORS_ORIGINS", "auth", "CORS origins")
    # -- the chat agent's provider (the SDK's own variables) and loop ----------------------
    anthropic_api_key: str | None = knob(
        None, "ANTHROPIC_API_KEY", "llm", "without it chat runs an offline model"
    )
    anthropic_base_url: str | None = knob(None, "ANTHROPIC_BASE_URL", "llm", "provider URL")
    model: str = knob("claude-sonnet-4-6", "LONGRUN_MODEL", "llm", "the chat agent's model")
    fallback_model: str | None = knob(
        None, "LONGRUN_FALLBACK_MODEL", "llm", "used while the model's breaker is open"
    )
    max_steps: int = knob(20, "LONGRUN_MAX_STEPS", "llm", "model turns per run", minimum=1)
    max_run_cost_usd: float = knob(
        1.0, "LONGRUN_MAX_RUN_COST_USD", "llm", "per-run cost ceiling", minimum=0.0
    )
    max_user_day_cost_usd: float = knob(
        20.0, "LONGRUN_MAX_USER_DAY_COST_USD", "llm", "per-user daily ceiling", minimum=0.0
    )
    # JSON: model -> {"input": usd_per_mtok, "output": usd_per_mtok}; merged over defaults.
    model_prices_json: str | None = knob(
        None, "LONGRUN_MODEL_PRICES", "llm", "JSON prices per model over the built-in list"
    )
    fallback_price_input_per_mtok: float = knob(
        15.0, "LONGRUN_FALLBACK_PRICE_INPUT_PER_MTOK", "llm", "unknown models' input price"
    )
    fallback_price_output_per_mtok: float = knob(
        75.0, "LONGRUN_FALLBACK_PRICE_OUTPUT_PER_MTOK", "llm", "unknown models' output price"
    )
    provider_max_retries: int = knob(
        4, "LONGRUN_PROVIDER_MAX_RETRIES", "llm", "retries of a failed model call", minimum=0
    )
    provider_retry_base_seconds: float = knob(
        0.5, "LONGRUN_PROVIDER_RETRY_BASE_SECONDS", "llm", "backoff base", minimum=0.0
    )
    provider_retry_max_seconds: float = knob(
        30.0, "LONGRUN_PROVIDER_RETRY_MAX_SECONDS", "llm", "backoff cap", minimum=0.0
    )
    breaker_window_seconds: float = knob(
        60.0, "LONGRUN_BREAKER_WINDOW_SECONDS", "llm", "breaker error window", minimum=0.1
    )
    breaker_min_calls: int = knob(
        5, "LONGRUN_BREAKER_MIN_CALLS", "llm", "calls before the breaker judges", minimum=1
    )
    breaker_error_rate: float = knob(
        0.5, "LONGRUN_BREAKER_ERROR_RATE", "llm", "error rate that opens it", minimum=0.0
    )
    breaker_open_seconds: float = knob(
        30.0, "LONGRUN_BREAKER_OPEN_SECONDS", "llm", "how long it stays open", minimum=0.05
    )
    tool_timeout_seconds: float = knob(
        30.0, "LONGRUN_TOOL_TIMEOUT_SECONDS", "llm", "per tool call", minimum=0.01
    )
    # -- agents ----------------------------------------------------------------------------
    # Extra agents: comma-separated "name=module:attr" or "module:attr" (see shared.agents).
    agent_modules: tuple[str, ...] = knob(
        (), "LONGRUN_AGENTS", "agents", "extra agents, name=package.module:function, ..."
    )
    # Extra tools: comma-separated "name=module:attr" or "module:attr" (see shared.tools).
    tool_modules: tuple[str, ...] = knob(
        (), "LONGRUN_TOOLS", "agents", "extra tools, name=package.module:attr, ..."
    )
    # -- webhooks (a run's terminal state POSTed, signed; shared/webhooks) -------------------
    # Names (exact), addresses and CIDR networks a webhook may reach although they are not
    # public (loopback, private...), and over plain http: tests and private deployments.
    webhook_allow_hosts: tuple[str, ...] = knob(
        (), "LONGRUN_WEBHOOK_ALLOW_HOSTS", "webhooks", "non-public webhook hosts allowed"
    )
    webhook_timeout_seconds: float = knob(
        15.0, "LONGRUN_WEBHOOK_TIMEOUT_SECONDS", "webhooks", "one attempt's time limit", minimum=0.1
    )
    webhook_retry_base_seconds: float = knob(
        5.0, "LONGRUN_WEBHOOK_RETRY_BASE_SECONDS", "webhooks", "first retry's delay", minimum=0
    )
    webhook_retry_max_seconds: float = knob(
        10800.0, "LONGRUN_WEBHOOK_RETRY_MAX_SECONDS", "webhooks", "longest retry delay", minimum=0
    )
    webhook_schedule_seconds: float = knob(
        86400.0,
        "LONGRUN_WEBHOOK_SCHEDULE_SECONDS",
        "webhooks",
        "how long a delivery is retried",
        minimum=0,
    )
    webhook_max_attempts: int = knob(
        20, "LONGRUN_WEBHOOK_MAX_ATTEMPTS", "webhooks", "attempts per delivery", minimum=1
    )
    webhook_poll_seconds: float = knob(
        1.0, "LONGRUN_WEBHOOK_POLL_SECONDS", "webhooks", "how often a worker looks", minimum=0.01
    )
    webhook_concurrency: int = knob(
        16, "LONGRUN_WEBHOOK_CONCURRENCY", "webhooks", "attempts in flight per worker", minimum=0
    )
    # -- schedules -------------------------------------------------------------------------
    schedule_tick_seconds: float = knob(
        1.0,
        "LONGRUN_SCHEDULE_TICK_SECONDS",
        "schedules",
        "how often each worker looks for due schedules",
        minimum=0.01,
    )
    max_schedules_per_user: int = knob(
        100,
        "LONGRUN_MAX_SCHEDULES_PER_USER",
        "schedules",
        "live schedules a user may have",
        minimum=0,
    )
    schedule_min_interval_seconds: float = knob(
        60.0,
        "LONGRUN_SCHEDULE_MIN_INTERVAL_SECONDS",
        "schedules",
        "shortest time a schedule may leave between two ticks",
        minimum=1.0,
    )
    # -- retention (worker/retention.py, shared/store/retention.py) -------------------------
    # Finished runs are deleted this many days after they ended (0: kept forever), unless their
    # API key says otherwise (`longrun keys create --retention-days N`).
    retention_days: int = knob(
        0,
        "LONGRUN_RETENTION_DAYS",
        "retention",
        "days finished runs are kept (0: forever; a key may override)",
        minimum=0,
    )
    retention_seconds: float = knob(
        60.0,
        "LONGRUN_RETENTION_SECONDS",
        "retention",
        "how often one worker runs the retention job",
        minimum=0.05,
    )
    retention_batch: int = knob(
        500, "LONGRUN_RETENTION_BATCH", "retention", "runs deleted per transaction", minimum=1
    )
    event_partition_days: int = knob(
        7,
        "LONGRUN_EVENT_PARTITION_DAYS",
        "retention",
        "days of runs per partition of the event archive",
        minimum=1,
    )
    event_partitions_ahead: int = knob(
        2,
        "LONGRUN_EVENT_PARTITIONS_AHEAD",
        "retention",
        "partitions kept ready ahead of time",
        minimum=1,
    )
    # -- ops -------------------------------------------------------------------------------
    log_json: bool | None = knob(
        None, "LONGRUN_LOG_JSON", "ops", "JSON logs (default: when not on a terminal)"
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        values = read(knobs(), _types(), os.environ if env is None else env)
        if "queue" not in values and "key_prefix" in values:
            values["queue"] = f"{values['key_prefix']}:runs"
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` build these settings (every knob that is set;
        for a child process)."""
        return written(knobs(), self)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


@cache
def knobs() -> tuple[tuple[Field[Any], Knob], ...]:
    """Every setting with how it is read, in declaration order."""
    return tuple((f, f.metadata["knob"]) for f in fields(Settings))


def by_group() -> Iterator[tuple[str, list[tuple[Field[Any], Knob]]]]:
    """The knobs grouped by concern, in `GROUPS` order (for docs and `--help`)."""
    for g in GROUPS:
        yield g, [(f, k) for f, k in knobs() if k.group == g]


@cache
def _types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def markdown() -> str:
    """The configuration reference (docs/CONFIGURATION.md is this text; a test keeps it so)."""
    return knobs_doc(by_group())


if __name__ == "__main__":
    print(markdown(), end="")  # noqa: T201  (the docs generator)
