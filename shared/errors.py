"""One error tree for the whole code base. It knows nothing of HTTP: api/ maps codes to statuses.

Each error carries a stable machine `code` (the `error` field clients see) and a human `detail`.
"""

from __future__ import annotations


class LongrunError(Exception):
    """Base of every error longrun raises on purpose."""

    code = "internal"

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class ConfigError(LongrunError):
    code = "config"


class BadRequest(LongrunError):
    code = "bad_request"


class Unauthorized(LongrunError):
    code = "unauthorized"


class NotFound(LongrunError):
    code = "not_found"


class Conflict(LongrunError):
    code = "conflict"


class Unavailable(LongrunError):
    """A backing service (Redis or Postgres) did not answer: the caller may retry later."""

    code = "unavailable"

    def __init__(self, detail: str = "", *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class KeyReused(LongrunError):
    """The Idempotency-Key was used with a different body."""

    code = "idempotency_key_reused"


class InvalidWebhook(LongrunError):
    """A webhook URL that is malformed, or whose target is not a public address."""

    code = "invalid_webhook"


class InFlightCapReached(LongrunError):
    code = "too_many_runs_in_flight"


class SchemaOutdated(LongrunError):
    code = "schema_outdated"


class LeaseLost(LongrunError):
    """A fenced write was refused: another attempt owns the run now."""

    code = "lease_lost"


class RunCancelled(LongrunError):
    code = "cancelled"


class AgentError(LongrunError):
    """An agent ended a run with a clean, user-visible error (`code` becomes the event's code)."""

    code = "agent_error"
