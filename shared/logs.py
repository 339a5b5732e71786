"""Logging: structlog everywhere, JSON when stderr is not a terminal, readable when it is.

The standard library's loggers (uvicorn, asyncpg, redis) are routed through the same
processors, so every line of a process has one format. Context (`run_id`, `attempt`, `worker`,
`request_id`) is bound with `structlog.contextvars` and lands on every line of that task.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import sys
import threading
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
    """structlog processor: no secret leaves in a log line (see `scrub`). Strings, the common
    case, are checked inline (this runs on every line, two per run on a busy worker)."""
    verdicts = _KEY_VERDICTS
    for k, v in event_dict.items():  # values are replaced in place: the keys stay the same
        secret = verdicts.get(k)
        if secret is None:
            secret = secret_key(k)
        if secret:
            event_dict[k] = REDACTED
        elif v is None or type(v) in _PLAIN or k.startswith("_"):  # nothing to scrub in a number
            continue
        elif type(v) is str:
            if "sk-ant-" in v or "lr_" in v or "bearer" in v.lower():
                event_dict[k] = _SECRET_TEXT.sub(REDACTED, v)
        else:
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


class _Sink:
    """Where our rendered lines go: stderr, looked up at each write (a redirected stderr still
    gets them).

    Inside a running event loop, info and debug lines are gathered and written together once
    the loop's current round of callbacks is done (`call_soon`): a busy worker writes two info
    lines per run, and a `write` system call each was a visible share of its CPU (py-spy).
    Warnings and errors, and every line outside a loop, go out at once, after any gathered
    ones (order is kept). `flush()` writes what is gathered (at exit, before a forced exit)."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None  # where the due flush runs
        self.thread = 0  # and its thread

    def gather(self, line: bytes) -> None:
        loop = self.loop
        if (
            self.scheduled
            and loop is not None
            and loop.is_running()
            and threading.get_ident() == self.thread
        ):
            self.pending.append(line)  # this loop's flush is already due: it takes this too
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.now(line)
            return
        self.pending.append(line)
        # (A flush due on another loop, e.g. one that closed before running it, is not ours.)
        if not self.scheduled or loop is not self.loop:
            self.scheduled = True
            self.loop = loop
            self.thread = threading.get_ident()
            loop.call_soon(self.flush)

    def now(self, line: bytes) -> None:
        self.pending.append(line)
        self.flush()

    def flush(self) -> None:
        self.scheduled = False
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        stream = sys.stderr
        with contextlib.suppress(ValueError, OSError):  # closed at shutdown: nothing to do
            stream.flush()  # (nothing is pending in the text layer, or it goes first)
            stream.buffer.write(b"".join(lines))
            stream.buffer.flush()


SINK = _Sink()
atexit.register(SINK.flush)


class _LineLogger:
    """structlog's last step for our own lines: hand the rendered line to `SINK`.

    Our lines skip the standard library's logging (a `LogRecord`, caller lookup, handler lock
    and a second formatting pass per line cost a busy worker ~25% of its CPU)."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def _gathered(self, line: str | bytes) -> None:
        SINK.gather(line if isinstance(line, bytes) else (line + "\n").encode())

    def _now(self, line: str | bytes) -> None:
        SINK.now(line if isinstance(line, bytes) else (line + "\n").encode())

    debug = info = _gathered
    msg = warning = warn = error = critical = exception = fatal = failure = err = log = _now


_JSON_INFO = False  # set by `configure`: JSON lines, info enabled (the fast path's condition)
_STAMPER: _Stamper | None = None


def info_line(logger: str, event: str, **fields: Any) -> None:
    """An info line for hot paths (a worker's per-run lines): the same JSON line the structlog
    chain writes (bound context vars, level, logger, timestamp, secrets redacted), built in a
    fifth of the time by skipping the bound logger's per-call machinery. Outside JSON mode or
    below the level it takes the ordinary path."""
    if not _JSON_INFO or _STAMPER is None:
        structlog.get_logger(logger).info(event, **fields)
        return
    d: dict[str, Any] = structlog.contextvars.get_contextvars()
    d.update(fields)
    redact(None, "info", d)
    d["event"] = event  # ours, not caller data: no need to scrub these
    d["level"] = "info"
    d["logger"] = logger
    SINK.gather(_orjson_bytes(_STAMPER(None, "info", d)))


def _line_logger(*args: Any) -> _LineLogger:
    return _LineLogger(str(args[0]) if args else "")


def configure(json: bool | None = None, level: int = logging.INFO) -> None:
    global _JSON_INFO, _STAMPER
    use_json = (not sys.stderr.isatty()) if json is None else json
    _STAMPER = _Stamper()
    _JSON_INFO = use_json and level <= logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _STAMPER,
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
