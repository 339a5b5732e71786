"""Logging: structlog everywhere, JSON when stderr is not a terminal, readable when it is.

The standard library's loggers (uvicorn, asyncpg, redis) are routed through the same
processors, so every line of a process has one format. Context (`run_id`, `attempt`, `worker`,
`request_id`) is bound with `structlog.contextvars` and lands on every line of that task.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Values under these keys (or keys ending like them) never reach a log line, whatever the
# caller passed; usage figures (`input_tokens`) are not secrets and do not match.
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "api_key",
        "apikey",
        "x-api-key",
        "key",
        "token",
        "password",
        "secret",
        "cookie",
        "set-cookie",
    }
)
_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password")
# Secret-shaped text inside any value (an exception message quoting a header, a URL): provider
# keys, our API keys (`lr_<id>_<secret>`), bearer credentials.
_SECRET_TEXT = re.compile(
    r"sk-ant-[A-Za-z0-9_-]{6,}|\blr_[A-Za-z0-9]+_[A-Za-z0-9_-]{16,}|(?i:bearer)\s+[^\s\"',]{8,}"
)
REDACTED = "[redacted]"
_MAX_DEPTH = 4


def secret_key(name: str) -> bool:
    low = name.lower()
    return low in _SECRET_KEYS or low.endswith(_SECRET_SUFFIXES)


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` with secret-keyed entries and secret-shaped text replaced (pure; nested
    dicts, lists and tuples to a bounded depth)."""
    if isinstance(value, str):
        return _SECRET_TEXT.sub(REDACTED, value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and secret_key(k) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v, depth + 1) for v in value)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret leaves in a log line (see `scrub`)."""
    for k in list(event_dict):
        if secret_key(k):
            event_dict[k] = REDACTED
        elif not k.startswith("_"):  # structlog's own `_record` / `_from_structlog`
            event_dict[k] = scrub(event_dict[k])
    return event_dict


def _orjson_dumps(value: Any, **_: Any) -> str:
    # orjson: the JSON renderer was a visible share of a busy worker's CPU (py-spy).
    return orjson.dumps(value, default=str).decode()


def configure(json: bool | None = None, level: int = logging.INFO) -> None:
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
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
            redact,  # again: a formatted traceback may quote a secret
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become log lines of the same format
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
