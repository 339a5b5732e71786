"""The one place errors become HTTP: `{"error": code, "detail": text, "request_id": id}` with a
status per class, and the `X-Request-ID` header (set here too: the 500 handler runs outside our
middleware).

No error body ever echoes what the client sent (no `input` of a validation error, no header,
no query string): a secret pasted into the wrong place must not come back in an error or a log.
Validation failures are 422 (400 for a body that is not JSON at all); a backing service that is
down, or a Redis that answers with an error the code does not expect, is 503 with `Retry-After`;
anything else unexpected is a 500 with no internals in the body.
"""

from __future__ import annotations

import traceback
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from api.middleware import scope_request_id
from shared.errors import (
    BadRequest,
    Conflict,
    InvalidWebhook,
    LongrunError,
    NotFound,
    SchemaOutdated,
    Unauthorized,
    Unavailable,
)
from shared.redis.client import REDIS_DOWN, REDIS_ERRORS, reply_word
from shared.store import PG_DOWN

log = structlog.get_logger("longrun.api")


class JSONResp(JSONResponse):
    """JSON rendered by orjson (datetimes, UUIDs and bytes-free dicts). A JSONResponse, so that
    the OpenAPI schema documents answers as JSON objects."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ErrorBody(BaseModel):
    error: str
    detail: str
    request_id: str | None = None


def _doc(text: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": text}


# Documented on every route, so the OpenAPI schema lists every answer the API may give.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("malformed JSON, run id, cursor or Last-Event-ID"),
    401: _doc("no, unknown, revoked or expired credentials"),
    404: _doc("no such run (or another user's: the same answer)"),
    409: _doc("conflict with the state of a thread or run"),
    408: _doc("head_timeout: the request head did not arrive in time (the connection layer)"),
    413: _doc("request body too large"),
    422: _doc("invalid request"),
    429: _doc("rate limited, too many runs in flight or too many streams (Retry-After)"),
    431: _doc("headers_too_large: the request head is too large (the connection layer)"),
    503: _doc(
        "paused, backlog full, streams full, a backing service down, or too_many_connections"
        " (Retry-After)"
    ),
}

# A submit asking for a priority above its API key's maximum (`api.submit.request`).
PRIORITY_REFUSED: dict[int | str, dict[str, Any]] = {
    403: _doc("priority_not_allowed: a priority above the API key's maximum")
}

STATUS: dict[type[LongrunError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    InvalidWebhook: 422,
    Unavailable: 503,
    SchemaOutdated: 503,
}


class ApiError(LongrunError):
    """An error raised at the edge with an explicit status (413, 415, 422, 429 ...)."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail, code=code)
        self.status = status
        self.headers = headers or {}


def redis_failure(exc: BaseException, detail: str) -> Unavailable:
    """The 503 for a Redis failure. One that is not an outage (an error reply the code does not
    expect: `MOVED` from a cluster node, `WRONGTYPE`, `OOM`, `NOPERM`) is logged, once."""
    if not isinstance(exc, REDIS_DOWN):
        log.warning("redis_error", error=type(exc).__name__, reply=reply_word(exc))
    return Unavailable(detail)


def as_api_error(exc: LongrunError) -> ApiError:
    """The status and headers of an error (`STATUS`; `Retry-After` for `Unavailable`)."""
    if isinstance(exc, ApiError):
        return exc
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
    headers = {}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return ApiError(status, exc.code, exc.detail, headers)


def error_content(code: str, detail: str, request_id: str | None) -> dict[str, str]:
    """The body of every error answer."""
    body = {"error": code, "detail": detail}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResp:
    out = dict(headers or {})
    if request_id is not None:
        out["X-Request-ID"] = request_id
    return JSONResp(error_content(code, detail, request_id), status_code=status, headers=out)


METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> str:
    """`Allow` for the request's path: every method a route on it takes, and OPTIONS (answered
    here). Starlette's own 405 names the methods of the first route on the path only."""
    allowed = {"OPTIONS"}
    # As the app saw the request (inside a mount, the root path has grown by the mount's path).
    scope = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    for route in routes:
        if isinstance(route, Mount):  # the documentation's static files: any method matches
            if route.matches(scope)[0] is Match.FULL:
                allowed |= {"GET", "HEAD"}
            continue
        allowed.update(m for m in METHODS if route.matches({**scope, "method": m})[0] is Match.FULL)
    return ", ".join(sorted(allowed))


def _rid(request: Request) -> str | None:
    return scope_request_id(request.scope)


def _validation_detail(exc: RequestValidationError) -> tuple[int, str, str]:
    errors: list[Any] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed_json", "the request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return 422, "invalid_request", "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResp:
        return error_response(exc.status, exc.code, exc.detail, exc.headers, _rid(request))

    @app.exception_handler(LongrunError)
    async def _longrun(request: Request, exc: LongrunError) -> JSONResp:
        e = as_api_error(exc)
        return error_response(e.status, e.code, e.detail, e.headers, _rid(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResp:
        status, code, detail = _validation_detail(exc)
        return error_response(status, code, detail, None, _rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request.app.routes, request.scope)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        return error_response(exc.status_code, code, str(exc.detail), headers, _rid(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResp:
        if isinstance(exc, REDIS_ERRORS):
            redis_failure(exc, "")
        if isinstance(exc, (*REDIS_ERRORS, *PG_DOWN)):
            return error_response(
                503,
                "unavailable",
                "a backing service is unavailable",
                {"Retry-After": "1"},
                _rid(request),
            )
        # The type and the frames only: the message may quote request data.
        frames = traceback.extract_tb(exc.__traceback__)[-5:]
        where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in frames]
        log.error("unhandled_error", error=type(exc).__name__, where=where)
        return error_response(500, "internal", "internal error", None, _rid(request))
