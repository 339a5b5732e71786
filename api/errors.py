"""The one place errors become HTTP: `{"error": code, "detail": text}` with a status per class.

Validation failures are 422 (400 for a body that is not JSON at all); a backing service that is
down is 503 with `Retry-After`; anything unexpected is a 500 with no internals in the body.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    BadRequest,
    Conflict,
    LongrunError,
    NotFound,
    SchemaOutdated,
    Unauthorized,
    Unavailable,
)
from shared.redisio import REDIS_DOWN
from shared.store import PG_DOWN

log = structlog.get_logger("longrun.api")


class JSONResp(Response):
    """JSON rendered by orjson (datetimes, UUIDs and bytes-free dicts)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


STATUS: dict[type[LongrunError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
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


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResp:
    return JSONResp({"error": code, "detail": detail}, status_code=status, headers=headers)


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
    async def _api(_: Request, exc: ApiError) -> JSONResp:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(LongrunError)
    async def _longrun(_: Request, exc: LongrunError) -> JSONResp:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
        headers = {}
        if isinstance(exc, Unavailable):
            headers["Retry-After"] = str(exc.retry_after)
        return error_response(status, exc.code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResp:
        status, code, detail = _validation_detail(exc)
        return error_response(status, code, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResp:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResp:
        if isinstance(exc, (*REDIS_DOWN, *PG_DOWN)):
            return error_response(
                503, "unavailable", "a backing service is unavailable", {"Retry-After": "1"}
            )
        log.exception("unhandled_error")
        return error_response(500, "internal", "internal error")
