"""The shapes of the API's successful answers, for the OpenAPI schema (clients and the fuzz test
check answers against it). Handlers build their JSON directly; these models document it.

And the formats of what clients send, each written once, as a regular expression that the
server checks with Python's `re` (always whole-string: `fullmatch`, or `search` for the
unanchored ones) and the OpenAPI schema declares (ECMA-262 for JSON Schema, the Rust `regex`
crate for pydantic): only escapes and classes that mean the same to all three.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

# A run id: a UUID, hyphenated (either case).
RUN_ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# A thread id, named by the client.
THREAD_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# Text with something besides whitespace: one character that is whitespace neither to Python
# (`str.isspace`, what an agent strips) nor to ECMA-262's `\s` (what a schema's `\S` means).
BLANK_CHARS = r"\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NONBLANK_PATTERN = f"[^{BLANK_CHARS}]"

RUN_ID = re.compile(RUN_ID_PATTERN)
THREAD_ID = re.compile(THREAD_ID_PATTERN)
NONBLANK = re.compile(NONBLANK_PATTERN)


def valid_thread_id(raw: str) -> bool:
    return THREAD_ID.fullmatch(raw) is not None


def has_text(raw: str) -> bool:
    """Whether `raw` holds a character that is not whitespace (`NONBLANK_PATTERN`)."""
    return NONBLANK.search(raw) is not None


class Links(BaseModel):
    url: str
    events_url: str


class SubmitAnswer(Links):
    run_id: str
    status: str
    agent: str
    thread_id: str | None
    created_at: str


class RunPublic(BaseModel):
    run_id: str
    status: str
    agent: str
    thread_id: str | None
    input: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    output: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any]
    cost_usd: float
    attempts: int
    last_seq: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str | None


class RunView(RunPublic, Links):
    pass


class RunList(BaseModel):
    runs: list[RunPublic]
    next_cursor: str | None


class EventsUrl(BaseModel):
    run_id: str
    events_url: str
    expires_at: int


class CancelAnswer(BaseModel):
    run_id: str
    status: str


def documented(status: int, model: type[BaseModel], text: str) -> dict[int | str, Any]:
    return {status: {"model": model, "description": text}}
