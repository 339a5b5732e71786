"""The submit pipeline (`api.submit`): which way a submit goes (pure decisions), how an outcome
becomes its answer (one renderer), and that the lane and the route, both adapters over the
pipeline, answer alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from api.auth import Principal, Security
from api.errors import ApiError
from api.submit.groups import Detour
from api.submit.pipeline import (
    AFTER_GROUP,
    GROUP,
    Accepted,
    Alone,
    Refused,
    after_group,
    first_step,
    refusal_of,
)
from api.submit.render import render, response
from api.submit.request import SubmitRequest
from shared.errors import InFlightCapReached, KeyReused, NotFound, Unavailable
from shared.store import NewRun, Submitted

pytestmark = pytest.mark.timeout(60)

RUN_ID = "0b7c8a52-4a51-4d4e-9a43-2f1f0d7a5c10"
CACHED = Principal("alice", b"epoch-1")  # an API key whose look-up is cached
CONFIRMED = Principal("alice", None)  # a JWT, or a key looked up in this request


def _request(who: Principal = CACHED, thread_id: str | None = None) -> SubmitRequest:
    return SubmitRequest(who, NewRun("alice", "ticker", "hi", {}, {}, thread_id=thread_id))


# -- which way a submit goes ---------------------------------------------------------------
def test_a_submit_without_a_thread_goes_with_its_group() -> None:
    assert first_step(_request(), grouping=True) is GROUP
    assert first_step(_request(CONFIRMED), grouping=True) is GROUP


def test_a_thread_submit_goes_alone_confirming_a_cached_key_on_the_way() -> None:
    assert first_step(_request(CACHED, "t-1"), grouping=True) == Alone(confirm_key=True)
    assert first_step(_request(CONFIRMED, "t-1"), grouping=True) == Alone()


def test_without_groups_every_submit_goes_alone() -> None:
    assert first_step(_request(), grouping=False) == Alone(confirm_key=True)
    assert first_step(_request(CONFIRMED), grouping=False) == Alone()


def test_every_way_out_of_a_group_says_what_the_alone_path_does_first() -> None:
    assert set(AFTER_GROUP) == set(Detour)
    # a key revoked since its look-up was cached: every cached look-up goes, this one is redone
    assert after_group(Detour.STALE_KEY) == Alone(confirm_key=True, forget_cached_keys=True)
    # near the in-flight cap: the group took its rate token, the locked count decides
    assert after_group(Detour.NEAR_CAP) == Alone(admitted=True)
    # a live or repeated key, a spent rate for a keyed submit, a refused group: from the start
    assert after_group(Detour.ALONE) == Alone()


# -- refusals ------------------------------------------------------------------------------
def test_a_key_reused_with_another_body_is_a_422() -> None:
    error = refusal_of(KeyReused("this Idempotency-Key was used with a different request body"))
    assert (error.status, error.code, error.headers) == (422, "idempotency_key_reused", {})


def test_the_in_flight_cap_is_a_429_with_retry_after() -> None:
    error = refusal_of(InFlightCapReached("5 runs queued or running"))
    assert (error.status, error.code) == (429, "too_many_runs_in_flight")
    assert error.headers == {"Retry-After": "5"}


def test_other_refusals_keep_the_status_every_route_gives_them() -> None:
    down = refusal_of(Unavailable("redis is unavailable", retry_after=3))
    assert (down.status, down.code, down.headers) == (503, "unavailable", {"Retry-After": "3"})
    assert refusal_of(NotFound("no such thread")).status == 404
    own = ApiError(409, "thread_busy", "busy")
    assert refusal_of(own) is own


# -- the renderer --------------------------------------------------------------------------
@pytest.fixture
def sec(api) -> Security:
    """A running API's security state (rendering itself does no I/O)."""
    security: Security = api.server.config.app.state.security
    return security


def _scope(request_id: str | None = "req-1") -> dict[str, Any]:
    return {
        "type": "http",
        "scheme": "http",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "headers": [(b"x-request-id", b"from-client")],
        "state": {} if request_id is None else {"request_id": request_id},
    }


def _accepted(replayed: bool = False) -> Accepted:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Accepted(CACHED, "ticker", Submitted(RUN_ID, "queued", None, created, replayed))


def test_an_accepted_run_is_a_202_with_its_links_and_location(sec: Security) -> None:
    answer = render(_accepted(), _scope(), sec)

    assert answer.status == 202
    body = httpx.Response(202, content=answer.body).json()
    assert list(body) == [
        "run_id",
        "status",
        "agent",
        "thread_id",
        "created_at",
        "url",
        "events_url",
    ]
    assert body["url"] == f"http://127.0.0.1:8000/runs/{RUN_ID}"
    assert body["events_url"].startswith(f"http://127.0.0.1:8000/runs/{RUN_ID}/events?token=")
    assert body["created_at"] == "2026-01-02T03:04:05+00:00"
    assert answer.headers == [
        (b"location", f"/runs/{RUN_ID}".encode()),
        (b"content-length", str(len(answer.body)).encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req-1"),
    ]


def test_a_replay_says_so_in_a_header(sec: Security) -> None:
    headers = render(_accepted(replayed=True), _scope(), sec).headers
    assert [k for k, _ in headers] == [
        b"location",
        b"idempotent-replayed",
        b"content-length",
        b"content-type",
        b"x-request-id",
    ]
    assert (b"idempotent-replayed", b"true") in headers


def test_a_refusal_is_the_error_body_with_its_headers_and_the_request_id(sec: Security) -> None:
    refused = Refused(
        ApiError(429, "rate_limited", "too many submits: slow down", {"Retry-After": "2"})
    )

    answer = render(refused, _scope(), sec)

    assert answer.status == 429
    assert answer.body == (
        b'{"error":"rate_limited","detail":"too many submits: slow down","request_id":"req-1"}'
    )
    assert answer.headers == [
        (b"retry-after", b"2"),
        (b"content-length", str(len(answer.body)).encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req-1"),
    ]


def test_without_a_request_id_in_the_scope_the_clients_usable_one_is_used(sec: Security) -> None:
    answer = render(Refused(ApiError(422, "bad_params", "no")), _scope(None), sec)
    assert answer.headers[-1] == (b"x-request-id", b"from-client")
    assert b'"request_id":"from-client"' in answer.body


def test_the_routes_response_carries_the_answer_unchanged(sec: Security) -> None:
    answer = render(_accepted(), _scope(), sec)
    resp = response(answer)
    assert (resp.status_code, resp.body, resp.raw_headers) == (
        answer.status,
        answer.body,
        answer.headers,
    )


# -- both adapters, through the API -------------------------------------------------------
BODY = {"input": "hi", "agent": "ticker", "params": {"count": 1, "interval_ms": 0}}
SERVER_HEADERS = {"date", "server"}


def _names(resp: httpx.Response) -> list[str]:
    """The answer's header names in order, without those uvicorn adds."""
    names = [k.decode().lower() for k, _ in resp.headers.raw]
    return [n for n in names if n not in SERVER_HEADERS]


async def test_the_lane_and_the_route_send_the_same_headers_in_the_same_order(api, store):
    # Given keys the API has not seen: a key's first submit goes to the route (its look-up in
    # Postgres), which caches it, so its next ones go the lane's way
    _, dora = await store.users.create_key("dora")
    _, erin = await store.users.create_key("erin")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {dora}"}
    ) as c:
        # When submits are accepted by each
        by_route = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "k-1"})
        by_lane = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "k-2"})
        replay = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "k-2"})
        # and refused by each
        bad_by_lane = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "k" * 256})
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {erin}"}
    ) as c:
        bad_by_route = await c.post("/runs", json=BODY, headers={"Idempotency-Key": "k" * 256})

    # Then the answers are alike, header for header
    assert by_route.status_code == by_lane.status_code == replay.status_code == 202
    accepted = ["location", "content-length", "content-type", "x-request-id"]
    assert _names(by_route) == _names(by_lane) == accepted
    assert _names(replay) == [accepted[0], "idempotent-replayed", *accepted[1:]]
    assert list(by_route.json()) == list(by_lane.json())
    assert bad_by_route.status_code == bad_by_lane.status_code == 422
    assert _names(bad_by_route) == _names(bad_by_lane)
    assert {**bad_by_route.json(), "request_id": ""} == {**bad_by_lane.json(), "request_id": ""}


async def test_a_submit_near_the_in_flight_cap_spends_one_rate_token(
    api_factory, settings, api_key, store
):
    # Given a cap so low that every submit is near it (the group admits it, then the locked
    # count decides) and a rate bucket of three
    srv = await api_factory(
        settings.with_(max_runs_in_flight_per_user=10, submit_rate_per_second=0.01, submit_burst=3)
    )
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        assert (await c.get("/runs")).status_code == 200  # caches the key
        # When four submits come one after the other
        codes = [(await c.post("/runs", json=BODY)).status_code for _ in range(4)]
    # Then three are taken, one token each, and the fourth finds the bucket empty
    assert codes == [202, 202, 202, 429]
    assert len(await store.runs.list_runs("alice", limit=10)) == 3
