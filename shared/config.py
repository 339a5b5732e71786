"""Settings: every knob longrun reads from the environment, parsed once at an entry point.

`Settings.from_env()` is called by the CLI (or a test) and the frozen result is passed down;
nothing else in the code base reads `os.environ`. Unknown or malformed values fail at start-up
with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigError


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


def _opt(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return None if raw is None or raw == "" else raw


def _base_url(env: Mapping[str, str], name: str) -> str | None:
    """An absolute http(s) URL without query or fragment, kept without its trailing slash."""
    raw = _opt(env, name)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{name} must be an http(s) URL like https://api.example.com, got {raw!r}"
        )
    return raw.rstrip("/")


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one process. Frozen: derive variants with `with_()`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/longrun"
    # Every Redis key starts with this prefix (tests use a unique one per run).
    key_prefix: str = "longrun"
    queue: str = "longrun:runs"
    group: str = "workers"
    concurrency: int = 32
    lease_seconds: float = 30.0
    drain_seconds: float = 20.0
    max_attempts: int = 3
    events_ttl_seconds: int = 3600
    # A run's event stream is capped in count and bytes; past either the run fails.
    max_events_per_run: int = 100_000
    max_event_bytes_per_run: int = 64 * 1024 * 1024
    # Requests
    max_body_bytes: int = 1024 * 1024
    max_input_chars: int = 200_000
    sse_ping_seconds: float = 15.0
    # Pools and timeouts
    pg_pool_min: int = 1
    pg_pool_max: int = 16
    pg_command_timeout: float = 10.0
    pg_acquire_timeout: float = 5.0
    redis_socket_timeout: float = 10.0
    redis_connect_timeout: float = 3.0
    redis_max_connections: int = 64
    # Provider (the SDK's own variables) and agent loop
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    model: str = "claude-sonnet-4-6"
    fallback_model: str | None = None
    max_steps: int = 20
    max_run_cost_usd: float = 1.0
    max_user_day_cost_usd: float = 20.0
    # JSON: model -> {"input": usd_per_mtok, "output": usd_per_mtok}; merged over defaults.
    model_prices_json: str | None = None
    fallback_price_input_per_mtok: float = 15.0
    fallback_price_output_per_mtok: float = 75.0
    provider_max_retries: int = 4
    provider_retry_base_seconds: float = 0.5
    provider_retry_max_seconds: float = 30.0
    breaker_window_seconds: float = 60.0
    breaker_min_calls: int = 5
    breaker_error_rate: float = 0.5
    breaker_open_seconds: float = 30.0
    tool_timeout_seconds: float = 30.0
    run_timeout_seconds: float = 3600.0
    max_run_timeout_seconds: float = 6 * 3600.0
    # Extra agents: comma-separated "name=module:attr" or "module:attr" (see shared.agents).
    agent_modules: tuple[str, ...] = ()
    # Background loops
    reconcile_seconds: float = 10.0
    worker_name: str | None = None
    log_json: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # -- the public API's hardening (issue 5) ------------------------------------------------
    # JWT bearer tokens, besides API keys: HS256 with a shared secret, or RS256/ES256 with the
    # public keys of a JWKS file. The algorithm is pinned; `exp`, `aud` and `iss` are required.
    jwt_secret: str | None = None
    jwt_jwks_file: str | None = None
    jwt_algorithm: str | None = None  # default: HS256 with a secret, RS256 with a JWKS file
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_user_claim: str = "sub"
    jwt_leeway_seconds: float = 5.0
    # Short-lived tokens in `events_url` (browsers' EventSource cannot send headers). Every API
    # process must share the secret; unset, each process generates its own.
    stream_token_secret: str | None = None
    stream_token_ttl_seconds: int = 900
    # CORS: comma-separated origins ("*" for any); empty (the default) sends no CORS headers.
    cors_origins: tuple[str, ...] = ()
    idempotency_ttl_seconds: int = 24 * 3600
    # Admission: a per-user token bucket, a per-user cap on queued + running runs, the backlog
    # depth (XLEN of the queue) past which submits get 503, and the kill switch.
    submit_rate_per_second: float = 50.0
    submit_burst: int = 100
    max_runs_in_flight_per_user: int = 1000
    max_backlog: int = 100_000
    accept_runs: bool = True
    # Limits on what a client controls.
    max_json_bytes: int = 64 * 1024
    max_json_depth: int = 16
    max_header_bytes: int = 16 * 1024
    max_sse_per_user: int = 20
    # -- the HTTP edge (issue 12) -------------------------------------------------------------
    # Time a connection has to send a whole request head (from its first byte, or from the
    # connection's start), idle time between requests on a kept-alive connection, and open
    # connections per API process (0: the process's file-descriptor limit less a reserve).
    head_timeout_seconds: float = 10.0
    keepalive_seconds: float = 5.0
    max_connections: int = 0
    # Public links (`url`, `events_url`) start with this URL, e.g. "https://api.example.com";
    # without it, with the request's Host when it is one of `trusted_hosts`; else relative.
    public_url: str | None = None
    trusted_hosts: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e: Mapping[str, str] = os.environ if env is None else env
        prefix = _str(e, "LONGRUN_KEY_PREFIX", "longrun")
        log_json_raw = _opt(e, "LONGRUN_LOG_JSON")
        return cls(
            redis_url=_str(e, "REDIS_URL", cls.redis_url),
            database_url=_str(e, "DATABASE_URL", cls.database_url),
            key_prefix=prefix,
            queue=_str(e, "LONGRUN_QUEUE", f"{prefix}:runs"),
            group=_str(e, "LONGRUN_GROUP", cls.group),
            concurrency=_int(e, "LONGRUN_CONCURRENCY", cls.concurrency, 1),
            lease_seconds=_float(e, "LONGRUN_LEASE_SECONDS", cls.lease_seconds, 0.3),
            drain_seconds=_float(e, "LONGRUN_DRAIN_SECONDS", cls.drain_seconds),
            max_attempts=_int(e, "LONGRUN_MAX_ATTEMPTS", cls.max_attempts, 1),
            events_ttl_seconds=_int(e, "LONGRUN_EVENTS_TTL_SECONDS", cls.events_ttl_seconds, 1),
            max_events_per_run=_int(e, "LONGRUN_MAX_EVENTS_PER_RUN", cls.max_events_per_run, 3),
            max_event_bytes_per_run=_int(
                e, "LONGRUN_MAX_EVENT_BYTES_PER_RUN", cls.max_event_bytes_per_run, 1024
            ),
            max_body_bytes=_int(e, "LONGRUN_MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_input_chars=_int(e, "LONGRUN_MAX_INPUT_CHARS", cls.max_input_chars, 1),
            sse_ping_seconds=_float(e, "LONGRUN_SSE_PING_SECONDS", cls.sse_ping_seconds, 0.05),
            pg_pool_min=_int(e, "LONGRUN_PG_POOL_MIN", cls.pg_pool_min, 0),
            pg_pool_max=_int(e, "LONGRUN_PG_POOL_MAX", cls.pg_pool_max, 1),
            pg_command_timeout=_float(e, "LONGRUN_PG_TIMEOUT", cls.pg_command_timeout, 0.1),
            pg_acquire_timeout=_float(e, "LONGRUN_PG_ACQUIRE_TIMEOUT", cls.pg_acquire_timeout, 0.1),
            redis_socket_timeout=_float(e, "LONGRUN_REDIS_TIMEOUT", cls.redis_socket_timeout, 0.1),
            redis_max_connections=_int(
                e, "LONGRUN_REDIS_MAX_CONNECTIONS", cls.redis_max_connections, 2
            ),
            anthropic_api_key=_opt(e, "ANTHROPIC_API_KEY"),
            anthropic_base_url=_opt(e, "ANTHROPIC_BASE_URL"),
            model=_str(e, "LONGRUN_MODEL", cls.model),
            fallback_model=_opt(e, "LONGRUN_FALLBACK_MODEL"),
            max_steps=_int(e, "LONGRUN_MAX_STEPS", cls.max_steps, 1),
            max_run_cost_usd=_float(e, "LONGRUN_MAX_RUN_COST_USD", cls.max_run_cost_usd),
            max_user_day_cost_usd=_float(
                e, "LONGRUN_MAX_USER_DAY_COST_USD", cls.max_user_day_cost_usd
            ),
            model_prices_json=_opt(e, "LONGRUN_MODEL_PRICES"),
            fallback_price_input_per_mtok=_float(
                e, "LONGRUN_FALLBACK_PRICE_INPUT_PER_MTOK", cls.fallback_price_input_per_mtok
            ),
            fallback_price_output_per_mtok=_float(
                e, "LONGRUN_FALLBACK_PRICE_OUTPUT_PER_MTOK", cls.fallback_price_output_per_mtok
            ),
            provider_max_retries=_int(e, "LONGRUN_PROVIDER_MAX_RETRIES", cls.provider_max_retries),
            provider_retry_base_seconds=_float(
                e, "LONGRUN_PROVIDER_RETRY_BASE_SECONDS", cls.provider_retry_base_seconds
            ),
            provider_retry_max_seconds=_float(
                e, "LONGRUN_PROVIDER_RETRY_MAX_SECONDS", cls.provider_retry_max_seconds
            ),
            breaker_window_seconds=_float(
                e, "LONGRUN_BREAKER_WINDOW_SECONDS", cls.breaker_window_seconds, 0.1
            ),
            breaker_min_calls=_int(e, "LONGRUN_BREAKER_MIN_CALLS", cls.breaker_min_calls, 1),
            breaker_error_rate=_float(e, "LONGRUN_BREAKER_ERROR_RATE", cls.breaker_error_rate),
            breaker_open_seconds=_float(
                e, "LONGRUN_BREAKER_OPEN_SECONDS", cls.breaker_open_seconds, 0.05
            ),
            tool_timeout_seconds=_float(
                e, "LONGRUN_TOOL_TIMEOUT_SECONDS", cls.tool_timeout_seconds, 0.01
            ),
            run_timeout_seconds=_float(
                e, "LONGRUN_RUN_TIMEOUT_SECONDS", cls.run_timeout_seconds, 0.1
            ),
            max_run_timeout_seconds=_float(
                e, "LONGRUN_MAX_RUN_TIMEOUT_SECONDS", cls.max_run_timeout_seconds, 0.1
            ),
            agent_modules=tuple(
                s.strip() for s in _str(e, "LONGRUN_AGENTS", "").split(",") if s.strip()
            ),
            reconcile_seconds=_float(e, "LONGRUN_RECONCILE_SECONDS", cls.reconcile_seconds, 0.1),
            worker_name=_opt(e, "LONGRUN_WORKER_NAME"),
            log_json=None if log_json_raw is None else log_json_raw.lower() in ("1", "true"),
            jwt_secret=_opt(e, "LONGRUN_JWT_SECRET"),
            jwt_jwks_file=_opt(e, "LONGRUN_JWT_JWKS_FILE"),
            jwt_algorithm=_opt(e, "LONGRUN_JWT_ALGORITHM"),
            jwt_audience=_opt(e, "LONGRUN_JWT_AUDIENCE"),
            jwt_issuer=_opt(e, "LONGRUN_JWT_ISSUER"),
            jwt_user_claim=_str(e, "LONGRUN_JWT_USER_CLAIM", cls.jwt_user_claim),
            jwt_leeway_seconds=_float(e, "LONGRUN_JWT_LEEWAY_SECONDS", cls.jwt_leeway_seconds),
            stream_token_secret=_opt(e, "LONGRUN_STREAM_TOKEN_SECRET"),
            stream_token_ttl_seconds=_int(
                e, "LONGRUN_STREAM_TOKEN_TTL_SECONDS", cls.stream_token_ttl_seconds, 1
            ),
            cors_origins=tuple(
                s.strip() for s in _str(e, "LONGRUN_CORS_ORIGINS", "").split(",") if s.strip()
            ),
            idempotency_ttl_seconds=_int(
                e, "LONGRUN_IDEMPOTENCY_TTL_SECONDS", cls.idempotency_ttl_seconds, 1
            ),
            submit_rate_per_second=_float(
                e, "LONGRUN_SUBMIT_RATE_PER_SECOND", cls.submit_rate_per_second, 0.001
            ),
            submit_burst=_int(e, "LONGRUN_SUBMIT_BURST", cls.submit_burst, 1),
            max_runs_in_flight_per_user=_int(
                e, "LONGRUN_MAX_RUNS_IN_FLIGHT_PER_USER", cls.max_runs_in_flight_per_user, 1
            ),
            max_backlog=_int(e, "LONGRUN_MAX_BACKLOG", cls.max_backlog, 1),
            accept_runs=_str(e, "LONGRUN_ACCEPT_RUNS", "true").lower() not in ("0", "false", "no"),
            max_json_bytes=_int(e, "LONGRUN_MAX_JSON_BYTES", cls.max_json_bytes, 2),
            max_json_depth=_int(e, "LONGRUN_MAX_JSON_DEPTH", cls.max_json_depth, 1),
            max_header_bytes=_int(e, "LONGRUN_MAX_HEADER_BYTES", cls.max_header_bytes, 1024),
            max_sse_per_user=_int(e, "LONGRUN_MAX_SSE_PER_USER", cls.max_sse_per_user, 1),
            head_timeout_seconds=_float(
                e, "LONGRUN_HEAD_TIMEOUT_SECONDS", cls.head_timeout_seconds, 0.05
            ),
            keepalive_seconds=_float(e, "LONGRUN_KEEPALIVE_SECONDS", cls.keepalive_seconds, 0.05),
            max_connections=_int(e, "LONGRUN_MAX_CONNECTIONS", cls.max_connections, 0),
            public_url=_base_url(e, "LONGRUN_PUBLIC_URL"),
            trusted_hosts=tuple(
                s.strip().lower()
                for s in _str(e, "LONGRUN_TRUSTED_HOSTS", "").split(",")
                if s.strip()
            ),
        )

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)
