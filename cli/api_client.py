"""The HTTP API as the commands reach it: through the Python SDK (`longrun_client`, in
clients/python), so that the CLI and every other Python caller share one client. This module
makes the SDK's client for a command and turns its errors into one-line `Failure`s: the API
unreachable (exit 2), a 4xx (exit 3), a 5xx (exit 4).
"""

from __future__ import annotations

from longrun_client import APIConnectionError, APIError, AsyncClient, LongrunError

from cli.config import ApiTarget
from cli.exits import Exit, Failure, reason


def client_for(target: ApiTarget) -> AsyncClient:
    """The SDK's client for the target; a `Failure` (exit 5) without a key or with a URL that
    is not http(s)."""
    if not target.key:
        raise Failure(
            Exit.USAGE,
            "no API key: set LONGRUN_API_KEY or pass --key "
            "(`longrun dev` writes its key to .longrun/env; "
            "`longrun keys create --user ME` makes one)",
        )
    try:
        # A refusal is reported at once (with its Retry-After) rather than waited out: the
        # person at the terminal decides. Streams still ride out drops (`reconnect_for`).
        return AsyncClient(target.url, target.key, max_retries=0)
    except ValueError as exc:
        raise Failure(Exit.USAGE, f"bad API URL {target.url!r}: {exc}") from exc


def unreachable(url: str, exc: BaseException) -> Failure:
    return Failure(
        Exit.UNREACHABLE,
        f"cannot reach the API at {url}: {reason(exc)} (set LONGRUN_URL, or start `longrun dev`)",
    )


def refusal(exc: APIError) -> Failure:
    """The one line for an error answer, and its exit code (4xx: 3, 5xx: 4)."""
    if exc.code == f"http_{exc.status}":  # not the API's own error body (a proxy's page)
        what = f"{exc.status} {exc.detail}".rstrip()
    else:
        what = f"{exc.status} {exc.code}" + (f": {exc.detail}" if exc.detail else "")
    if exc.retry_after is not None:
        what += f" (retry after {exc.retry_after:g} s)"
    if exc.request_id:
        what += f" [request {exc.request_id}]"
    if exc.status >= 500:
        return Failure(Exit.SERVER_ERROR, f"the API failed: {what}")
    return Failure(Exit.REFUSED, f"the API refused the request: {what}")


def failure_of(exc: LongrunError, url: str) -> Failure:
    """What a command prints and exits with for an error the SDK raised."""
    if isinstance(exc, APIError):
        return refusal(exc)
    if isinstance(exc, APIConnectionError) and exc.__cause__ is not None:
        return unreachable(url, exc)
    return Failure(Exit.UNREACHABLE, exc.detail)
