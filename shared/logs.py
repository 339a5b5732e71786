"""Logging: structlog everywhere, JSON when stderr is not a terminal, readable when it is.

The standard library's loggers (uvicorn, asyncpg, redis) are routed through the same
processors, so every line of a process has one format. Context (`run_id`, `attempt`, `worker`,
`request_id`) is bound with `structlog.contextvars` and lands on every line of that task.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Values under these keys never reach a log line, whatever the caller passed.
_SECRET_KEYS = frozenset({"authorization", "api_key", "key", "token", "password", "secret"})


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for k in list(event_dict):
        if k.lower() in _SECRET_KEYS:
            event_dict[k] = "[redacted]"
    return event_dict


def configure(json: bool | None = None, level: int = logging.INFO) -> None:
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
