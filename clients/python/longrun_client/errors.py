"""Every error the client raises: one base, `LongrunError`, carrying the API's `code`, `detail`
and `request_id` (quote the last when reporting a problem).

    LongrunError
    ├── APIError                  the API answered with an error (`status`, `retry_after`)
    │   ├── BadRequest            400, 422: the request is wrong; do not retry it as it is
    │   ├── AuthenticationError   401: no, unknown, revoked or expired credentials
    │   ├── NotFound              404: no such run (another user's run is one too)
    │   ├── Conflict              409: e.g. `already_finished`, `thread_busy`
    │   ├── RateLimited           429: retried by the client first, within its bounds
    │   └── ServerError           5xx
    │       └── ServiceUnavailable  503: paused, backlog full, a backing service down (retried)
    ├── APIConnectionError        no answer: the API cannot be reached, or a stream stayed lost
    └── WaitTimeout               `runs.wait` ran out of time; `.run` is the run as it stands
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from longrun_client.models import Run


class LongrunError(Exception):
    def __init__(self, code: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}" + (f" [request {request_id}]" if request_id else ""))
        self.code = code
        self.detail = detail
        self.request_id = request_id


class APIError(LongrunError):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, detail, request_id)
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {super().__str__()}"


class BadRequest(APIError):
    pass


class AuthenticationError(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    pass


class RateLimited(APIError):
    pass


class ServerError(APIError):
    pass


class ServiceUnavailable(ServerError):
    pass


class APIConnectionError(LongrunError):
    """No answer from the API. `__cause__` holds the transport's own error."""

    def __init__(self, detail: str) -> None:
        super().__init__("connection_error", detail)


class WaitTimeout(LongrunError, TimeoutError):
    def __init__(self, run: Run, waited: float) -> None:
        super().__init__("wait_timeout", f"run {run.run_id} has not ended after {waited:g} s")
        self.run = run


BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    404: NotFound,
    409: Conflict,
    422: BadRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (its delay-seconds form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from(status: int, body: bytes, headers: Any) -> APIError:
    """The exception for an error answer: the API's `{"error", "detail", "request_id"}`, or, from
    something else on the way (a proxy), `http_<status>` and the first line of its text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    request_id = headers.get("x-request-id")
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        code = parsed["error"]
        raw = parsed.get("detail")
        detail = raw if isinstance(raw, str) else json.dumps(raw)
        request_id = parsed.get("request_id") or request_id
    else:
        lines = body.decode(errors="replace").strip().splitlines()
        code, detail = f"http_{status}", lines[0][:200] if lines else ""
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, code, detail, request_id, parse_retry_after(headers.get("retry-after")))
