"""The one place a submit's outcome becomes its HTTP answer, for the lane and the route alike:
the 202 (the run, its links, `Location`, `Idempotent-Replayed` on a replay) or the error
(`api.errors`' body, with `Retry-After` or `WWW-Authenticate` where the refusal has one), each
with `X-Request-ID`.

Headers go in one order: the answer's own, then `content-length`, `content-type`,
`x-request-id`, which is where the route's answers had them once `api.middleware.RequestId`
set the id (it moves its header last; here it is last already), so both adapters send the
same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response
from starlette.types import Scope

from api.auth import Security
from api.errors import error_content
from api.links import location
from api.middleware import request_id_from, scope_request_id
from api.runs import run_links
from api.submit.pipeline import Accepted, Outcome

JSON = b"application/json"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]  # as ASGI sends them: lower-case names, in order


def render(outcome: Outcome, scope: Scope, sec: Security) -> Answer:
    rid = scope_request_id(scope) or request_id_from(scope["headers"])
    if isinstance(outcome, Accepted):
        return _accepted(outcome, scope, sec, rid)
    error = outcome.error
    body = orjson.dumps(error_content(error.code, error.detail, rid))
    return _answer(error.status, body, error.headers, rid)


def _accepted(outcome: Accepted, scope: Scope, sec: Security, rid: str) -> Answer:
    run = outcome.run
    links = run_links(scope, sec, run.run_id, outcome.who)
    headers = {"Location": location(links["url"])}
    if run.replayed:
        headers["Idempotent-Replayed"] = "true"
    body = orjson.dumps(
        {
            "run_id": run.run_id,
            "status": run.status,
            "agent": outcome.agent,
            "thread_id": run.thread_id,
            "created_at": run.created_at.isoformat(),
            # a delayed run's start (absent for a run that starts at once)
            **({} if run.start_at is None else {"start_at": run.start_at.isoformat()}),
            **links,
        }
    )
    return _answer(202, body, headers, rid)


def _answer(status: int, body: bytes, extra: dict[str, str], rid: str) -> Answer:
    return Answer(
        status,
        body,
        [
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", JSON),
            (b"x-request-id", rid.encode("ascii")),
        ],
    )


def response(answer: Answer) -> Response:
    """The answer as the route returns it."""
    out = Response(answer.body, answer.status)
    out.raw_headers = list(answer.headers)
    return out
