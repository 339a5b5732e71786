"""The HTTP API as the commands see it: JSON calls that either return the answer or raise a
one-line `Failure` (the API unreachable: exit 2; a 4xx: exit 3; a 5xx: exit 4).

`refusal()` turns an error answer (`{"error", "detail", "request_id"}`, or anything else a proxy
may send) into the line the user reads.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Self

import httpx

from cli.config import ApiTarget
from cli.exits import Exit, Failure, reason

TIMEOUT = httpx.Timeout(10.0, read=60.0)


def unreachable(url: str, exc: BaseException) -> Failure:
    return Failure(
        Exit.UNREACHABLE,
        f"cannot reach the API at {url}: {reason(exc)} (set LONGRUN_URL, or start `longrun dev`)",
    )


def refusal(status: int, body: bytes, headers: httpx.Headers) -> Failure:
    """The one line for an error answer, and its exit code (4xx: 3, 5xx: 4)."""
    try:
        parsed = httpx.Response(status, content=body).json()
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        what = f"{status} {parsed['error']}"
        detail = parsed.get("detail")
        if detail:
            what += f": {detail if isinstance(detail, str) else json.dumps(detail)}"
    else:
        text = body.decode(errors="replace").strip().splitlines()
        what = f"{status} {text[0][:200]}" if text else str(status)
    if headers.get("retry-after"):
        what += f" (retry after {headers['retry-after']} s)"
    if headers.get("x-request-id"):
        what += f" [request {headers['x-request-id']}]"
    if status >= 500:
        return Failure(Exit.SERVER_ERROR, f"the API failed: {what}")
    return Failure(Exit.REFUSED, f"the API refused the request: {what}")


class Api:
    """`async with Api(target) as api: await api.call("GET", "/runs")`."""

    def __init__(self, target: ApiTarget) -> None:
        if not target.key:
            raise Failure(
                Exit.USAGE,
                "no API key: set LONGRUN_API_KEY or pass --key "
                "(`longrun dev` writes its key to .longrun/env; "
                "`longrun keys create --user ME` makes one)",
            )
        self.url = target.url
        self.headers = {"Authorization": f"Bearer {target.key}"}
        self.client = httpx.AsyncClient(timeout=TIMEOUT)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a 2xx; any other answer or no answer raises `Failure`."""
        try:
            resp = await self.client.request(
                method, self.url + path, headers=self.headers, **kwargs
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise Failure(Exit.USAGE, f"bad API URL {self.url!r}: {exc}") from exc
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if resp.status_code >= 400:
            raise refusal(resp.status_code, resp.content, resp.headers)
        try:
            return resp.json()
        except ValueError as exc:
            raise Failure(
                Exit.SERVER_ERROR, f"the API answered {resp.status_code} with no JSON"
            ) from exc
