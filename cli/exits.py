"""The exit codes of every `longrun` command, and the one line a failure prints instead of a
traceback.

A command fails by raising `Failure(code, message)`; `cli.main` prints `longrun: <message>` on
stderr and exits with the code. Library errors become failures at two edges: `cli.api_client`
for the HTTP API (a connection that fails, a 4xx, a 5xx) and `servers()` here for Redis and
Postgres (the admin commands). `EXIT_CODES` is the table `--help` prints and the README repeats.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

import asyncpg

from cli.config import redacted
from shared.config import Settings
from shared.errors import ConfigError, Unavailable
from shared.redis.client import REDIS_UNREACHABLE, RedisTimeout
from shared.store import PG_DOWN

# The store maps a missing database to `Unavailable`; a bare asyncpg connect raises these.
POSTGRES_DOWN: tuple[type[BaseException], ...] = (Unavailable, *PG_DOWN)


class Exit(IntEnum):
    OK = 0
    NOT_SUCCEEDED = 1  # a run ended failed or cancelled; status found a problem; no match
    UNREACHABLE = 2  # the API, Redis or Postgres could not be reached
    REFUSED = 3  # the API answered 4xx
    SERVER_ERROR = 4  # the API answered 5xx
    USAGE = 5  # bad options, a malformed setting, no API key
    TIMEOUT = 6  # `runs wait --timeout` elapsed
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES = """\
exit codes:
  0    done (a followed or awaited run succeeded; status: healthy)
  1    the run ended failed or cancelled; status found a problem; nothing matched
  2    cannot reach a server: the API, Redis or Postgres
  3    the API refused the request (4xx: bad key, no such run, invalid input, 429)
  4    the API failed (5xx, including 503 paused / backlog_full)
  5    bad usage or configuration (an option, --params, a setting, no API key)
  6    `runs wait --timeout` elapsed before the run ended
  130  interrupted (Ctrl-C)"""


class Failure(Exception):
    """A command's end other than success: one line for the user and an exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def reason(exc: BaseException) -> str:
    """A short cause for a connection failure: `connection refused`, `timed out`, or the
    library's own first line."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or (
            isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(seen, TimeoutError | RedisTimeout):
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "refused" in text.lower():  # "Multiple exceptions: [Errno 111] ..." from asyncpg
        return "connection refused"
    return text[:200]


def redis_failure(settings: Settings, exc: BaseException) -> Failure:
    return Failure(
        Exit.UNREACHABLE,
        f"cannot reach Redis at {redacted(settings.redis_url)}: {reason(exc)} "
        "(set REDIS_URL, or start `longrun dev`)",
    )


def postgres_failure(settings: Settings, exc: BaseException) -> Failure:
    return Failure(
        Exit.UNREACHABLE,
        f"cannot reach Postgres at {redacted(settings.database_url)}: {reason(exc)} "
        "(set DATABASE_URL, or start `longrun dev`)",
    )


@contextmanager
def servers(settings: Settings) -> Iterator[None]:
    """Redis or Postgres errors of an admin command become one-line failures. In the CLI,
    Postgres is reached only through the store (which raises `Unavailable`) or asyncpg."""
    try:
        yield
    except REDIS_UNREACHABLE as exc:  # AuthenticationError included
        raise redis_failure(settings, exc) from exc
    except ConfigError as exc:
        raise Failure(Exit.USAGE, exc.detail or exc.code) from exc
    except POSTGRES_DOWN as exc:
        raise postgres_failure(settings, exc) from exc
    except asyncpg.UndefinedTableError as exc:
        raise Failure(
            Exit.USAGE,
            f"the database at {redacted(settings.database_url)} has no longrun schema: "
            "run `longrun migrate`",
        ) from exc
    except (
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InvalidPasswordError,
    ) as exc:
        raise Failure(
            Exit.UNREACHABLE,
            f"Postgres at {redacted(settings.database_url)} refused us: {exc} "
            "(`longrun dev` creates the database; or set DATABASE_URL)",
        ) from exc
