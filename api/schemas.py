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
# A page cursor (`next_cursor`): the last run's creation time in microseconds since the epoch
# and its id. Every string of this form is a valid cursor.
CURSOR_PATTERN = (
    r"^[0-9]{1,16}~[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# An event id (`Last-Event-ID`): a seq as sent in an event's `id:` field; empty means none.
EVENT_ID_PATTERN = r"^[0-9]{0,18}$"
# A thread id, named by the client.
THREAD_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# An agent name to filter by (registered names are entry-point names: letters, digits, `._-`).
AGENT_NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# Text with something besides whitespace: one character that is whitespace neither to Python
# (`str.isspace`, what an agent strips) nor to ECMA-262's `\s` (what a schema's `\S` means).
BLANK_CHARS = r"\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NONBLANK_PATTERN = f"[^{BLANK_CHARS}]"

RUN_ID = re.compile(RUN_ID_PATTERN)
CURSOR = re.compile(CURSOR_PATTERN)
EVENT_ID = re.compile(EVENT_ID_PATTERN)
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
    start_at: str | None = None  # a delayed run's start (absent for one that starts at once)


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
    interrupt: dict[str, Any] | None = None
    waiting_since: str | None = None
    webhook: str | None = None
    start_at: str | None = None  # a delayed run is queued but not runnable before this


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


class WebhookAttempt(BaseModel):
    id: str
    n: int
    status: str  # sending (in flight, or its worker died), succeeded, failed
    response_code: int | None
    latency_ms: float | None
    error: str | None
    started_at: str
    finished_at: str | None


class WebhookDelivery(BaseModel):
    id: str  # the `webhook-id` of every attempt
    type: str  # run.waiting, run.succeeded, run.failed, run.cancelled
    state: str  # pending, delivered, failed
    attempts_made: int
    next_attempt_at: str | None
    created_at: str
    last_error: str | None
    attempts: list[WebhookAttempt]


class WebhookList(BaseModel):
    run_id: str
    webhook: str | None
    deliveries: list[WebhookDelivery]


class RedeliverAnswer(BaseModel):
    run_id: str
    delivery_id: str
    state: str


def documented(status: int, model: type[BaseModel], text: str) -> dict[int | str, Any]:
    return {status: {"model": model, "description": text}}


SUBMIT_BODIES = ("SubmitRun", "SubmitStream")  # POST /runs, POST /runs/stream


def declare_agents(schema: dict[str, Any], names: list[str]) -> None:
    """Name the agents a submit may ask for (those registered in this process) in the OpenAPI
    schema: the `agent` of each submit body becomes one of them, or null for the default."""
    components = schema.get("components", {}).get("schemas", {})
    for name in SUBMIT_BODIES:
        submit = components.get(name)
        if submit is None:
            continue
        agent = submit["properties"]["agent"]
        agent["anyOf"] = [{"type": "string", "enum": sorted(names)}, {"type": "null"}]
        agent["description"] = "the agent to run; null or absent: the default agent"


def drop_null_parameters(schema: dict[str, Any]) -> None:
    """A query, header or path parameter is a string or absent: it cannot be null, though an
    optional one is typed `X | None` in Python. Declare it as its non-null type alone."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", ()):
                body = param.get("schema", {})
                options = body.get("anyOf")
                if not options:
                    continue
                kept = [o for o in options if o.get("type") != "null"]
                if len(kept) == 1:
                    del body["anyOf"]
                    body.update(kept[0])
                else:
                    body["anyOf"] = kept
