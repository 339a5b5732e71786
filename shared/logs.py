"""Logging: structlog everywhere, JSON when stderr is not a terminal, readable when it is.

The standard library's loggers (uvicorn, asyncpg, redis) are routed through the same
processors, so every line of a process has one format. Context (`run_id`, `attempt`, `worker`,
`request_id`) is bound with `structlog.contextvars` and lands on every line of that task.
"""

from __future__ import annotations

import logging
import re
import sys
import time
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


_KEY_VERDICTS: dict[str, bool] = {}  # log keys are few: remember each one's verdict


def secret_key(name: str) -> bool:
    verdict = _KEY_VERDICTS.get(name)
    if verdict is None:
        low = name.lower()
        verdict = low in _SECRET_KEYS or low.endswith(_SECRET_SUFFIXES)
        if len(_KEY_VERDICTS) < 4096:
            _KEY_VERDICTS[name] = verdict
    return verdict


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` with secret-keyed entries and secret-shaped text replaced (pure; nested
    dicts, lists and tuples to a bounded depth)."""
    if isinstance(value, str):
        # Each pattern needs one of these literals: most text has none, and `in` is ~5x
        # cheaper than the regex (two lines per run on a busy worker).
        if "sk-ant-" in value or "lr_" in value or "bearer" in value.lower():
            return _SECRET_TEXT.sub(REDACTED, value)
        return value
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
    for k, v in list(event_dict.items()):
        if secret_key(k):
            event_dict[k] = REDACTED
        elif v is None or type(v) in _PLAIN:  # nothing to scrub in a number
            continue
        elif not k.startswith("_"):  # structlog's own `_record` / `_from_structlog`
            event_dict[k] = scrub(v)
    return event_dict


_PLAIN = frozenset({int, float, bool})


class _Stamper:
    """`TimeStamper(fmt="iso", utc=True)`'s format (`2026-01-02T03:04:05.123456Z`), with the
    date and time formatted once a second instead of once a line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def _orjson_dumps(value: Any, **_: Any) -> str:
    # orjson: the JSON renderer was a visible share of a busy worker's CPU (py-spy).
    return orjson.dumps(value, default=str).decode()


def _orjson_bytes(value: Any, **_: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_APPEND_NEWLINE)


class _LineLogger:
    """structlog's last step for our own lines: write the rendered line to stderr at once.

    Our lines skip the standard library's logging (a `LogRecord`, caller lookup, handler lock
    and a second formatting pass per line cost a busy worker ~25% of its CPU); the stream is
    looked up at each write, so a redirected stderr still gets them. Library lines still go
    through `logging`, rendered by the same processors."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def msg(self, line: str | bytes) -> None:
        stream = sys.stderr
        if isinstance(line, bytes):  # JSON, newline included: one write to the byte stream
            stream.flush()  # (nothing is pending in the text layer, or it goes first)
            stream.buffer.write(line)
            stream.buffer.flush()
        else:
            stream.write(line + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg
    log = msg


def _line_logger(*args: Any) -> _LineLogger:
    return _LineLogger(str(args[0]) if args else "")


def configure(json: bool | None = None, level: int = logging.INFO) -> None:
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _Stamper(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    own_renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_bytes) if use_json else renderer
    )
    structlog.configure(
        # Below `level` a call returns at once (no processor runs).
        processors=[*shared, structlog.processors.format_exc_info, redact, own_renderer],
        logger_factory=_line_logger,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, redact],
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
