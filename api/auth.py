"""Bearer-key authentication: `Authorization: Bearer <key>` names the user, or it is a 401.

Looked-up keys are cached in-process for a few seconds (the submit path's hottest query);
revocation takes effect within that time.
"""

from __future__ import annotations

import time

from fastapi import Request

from api.errors import ApiError
from api.state import AppState

KEY_CACHE_SECONDS = 5.0
KEY_CACHE_MAX = 10_000


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "send an API key as Authorization: Bearer <key>",
            {"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


async def current_user(request: Request) -> str:
    state: AppState = request.app.state.longrun
    key = _bearer(request)
    now = time.monotonic()
    cached = state.key_cache.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    user = await state.store.user_for_key(key)
    if user is None:
        raise ApiError(
            401, "unauthorized", "unknown or revoked API key", {"WWW-Authenticate": "Bearer"}
        )
    if len(state.key_cache) >= KEY_CACHE_MAX:
        state.key_cache.clear()
    state.key_cache[key] = (user, now + KEY_CACHE_SECONDS)
    return user
