"""What a client sends is checked whole: blank inputs, ids with a trailing newline, run ids
that are not UUIDs. Each format is one pattern that the server checks and the OpenAPI schema
declares (api/schemas.py); no pattern in the code base is anchored with a `$` that lets a
trailing newline through."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest

from api.middleware import request_id_from
from api.schemas import NONBLANK, has_text
from api.submit.request import idempotency_key_of as _idempotency_key
from tests.helpers import submit, wait_status

ROOT = Path(__file__).resolve().parent.parent
ECMA_WHITESPACE = set("\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | {
    chr(c) for c in range(0x2000, 0x200B)
}


@pytest.mark.parametrize("text", ["   ", "\x1e", "\t\n", "\u3000\ufeff", "\x1c\x1d\x1f\x85"])
async def test_an_input_of_whitespace_alone_is_a_422_and_makes_no_run(client, store, text):
    # the first request caches the key, so the second goes the submit lane's way
    for _ in range(2):
        resp = await client.post("/runs", json={"input": text})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"] == "invalid_request"
        assert "input" in resp.json()["detail"]
    assert await store.runs.list_runs("alice", limit=10) == []


async def test_an_input_with_text_among_whitespace_is_accepted(client):
    resp = await client.post("/runs", json={"input": " \x1e a \n", "agent": "ticker"})
    assert resp.status_code == 202


def test_blank_means_whitespace_to_python_or_to_json_schema_and_nothing_else():
    blank = {chr(c) for c in range(0x110000) if not has_text(chr(c))}
    python = {chr(c) for c in range(0x110000) if chr(c).isspace()}
    assert blank == python | ECMA_WHITESPACE
    assert NONBLANK.search("\x00")  # NUL is refused elsewhere, with its own message


async def test_a_thread_id_with_a_trailing_newline_is_refused_everywhere(client):
    body = {"input": "x", "agent": "ticker", "thread_id": "t1\n"}
    assert (await client.post("/runs", json=body)).status_code == 422
    assert (await client.get("/threads/t1%0A/messages")).status_code == 400
    assert (await client.get("/runs", params={"thread_id": "t1\n"})).status_code == 422
    # and the same id without it is fine
    assert (await client.post("/runs", json={**body, "thread_id": "t1"})).status_code == 202
    assert (await client.get("/runs", params={"thread_id": "t1"})).status_code == 200


async def test_run_ids_are_hyphenated_uuids_in_either_case(client):
    run_id = await submit(client, agent="ticker", params={"count": 1})
    assert (await client.get(f"/runs/{run_id.upper()}")).json()["run_id"] == run_id
    for bad in (run_id.replace("-", ""), f"{{{run_id}}}", f"urn:uuid:{run_id}", f"{run_id}%0A"):
        resp = await client.get(f"/runs/{bad}")
        assert resp.status_code == 400, bad
        assert resp.json()["error"] == "invalid_run_id"


def test_idempotency_keys_and_request_ids_with_a_trailing_newline_are_not_taken():
    from api.errors import ApiError

    with pytest.raises(ApiError):
        _idempotency_key("key-1\n")
    assert _idempotency_key("key-1") == "key-1"
    assert request_id_from([(b"x-request-id", b"trace-1\n")]) != "trace-1\n"
    assert request_id_from([(b"x-request-id", b"trace-1")]) == "trace-1"


def _patterns_ending_in_dollar(path: Path) -> list[str]:
    """Regular expressions given to `re` functions in `path` whose text ends with `$`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "re" and node.args):
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str | bytes):
            text = first.value if isinstance(first.value, str) else first.value.decode()
            if text.endswith("$"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
    return found


def test_no_pattern_in_the_code_base_is_anchored_with_a_dollar_that_allows_a_newline():
    # `$` also matches before a trailing newline: whole-string checks use `fullmatch`.
    # (Patterns meant for the OpenAPI schema live in api/schemas.py, used with fullmatch.)
    found = []
    for package in ("api", "shared", "cli", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "schemas.py":
                found += _patterns_ending_in_dollar(path)
    assert found == []
    schemas = (ROOT / "api" / "schemas.py").read_text()
    assert not re.search(r"\.(match|search)\(", schemas.replace("NONBLANK.search(", ""))


# -- cancel ------------------------------------------------------------------------------


async def test_cancelling_a_finished_run_is_409_already_finished(client, worker):
    # Given a run that has succeeded
    run_id = await submit(client, agent="ticker", params={"count": 1, "interval_ms": 0})
    await wait_status(client, run_id, "succeeded")
    # When its owner cancels it
    resp = await client.post(f"/runs/{run_id}/cancel")
    # Then nothing is cancelled, and the answer says why
    assert resp.status_code == 409
    assert resp.json()["error"] == "already_finished"
    assert "succeeded" in resp.json()["detail"]
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "succeeded"


async def test_cancelling_a_cancelled_run_again_is_409(client):
    run_id = await submit(client, agent="ticker")
    first = await client.post(f"/runs/{run_id}/cancel")
    assert (first.status_code, first.json()["status"]) == (202, "cancelled")
    again = await client.post(f"/runs/{run_id}/cancel")
    assert (again.status_code, again.json()["error"]) == (409, "already_finished")


# -- the OpenAPI schema --------------------------------------------------------------------


async def test_the_schema_declares_ids_agents_cursors_and_the_connection_layers_answers(
    api_factory, settings
):
    srv = await api_factory(settings.with_(agent_modules=("bulky=tests.agents:bulky",)))
    async with httpx.AsyncClient(base_url=srv.url) as c:
        schema = (await c.get("/openapi.json")).json()
    params = {
        (path, p["name"]): p["schema"]
        for path, ops in schema["paths"].items()
        for op in ops.values()
        for p in op.get("parameters", ())
    }
    assert params["/runs/{run_id}", "run_id"]["format"] == "uuid"
    assert params["/runs/{run_id}/events", "Last-Event-ID"]["pattern"] == "^[0-9]{0,18}$"
    assert params["/threads/{thread_id}/messages", "thread_id"]["pattern"].endswith("{1,128}$")
    assert "pattern" in params["/runs", "cursor"]
    assert all("anyOf" not in s or {"type": "null"} not in s["anyOf"] for s in params.values())
    submit_run = schema["components"]["schemas"]["SubmitRun"]["properties"]
    assert submit_run["agent"]["anyOf"][0]["enum"] == ["bulky", "chat", "ticker"]
    assert "pattern" in submit_run["input"]
    assert "pattern" in submit_run["thread_id"]
    answers = schema["paths"]["/runs"]["post"]["responses"]
    assert {"408", "413", "431"} <= set(answers)
    assert "409" in schema["paths"]["/runs/{run_id}/cancel"]["post"]["responses"]


async def test_a_page_cursor_from_next_cursor_pages_and_any_other_is_400(client):
    for _ in range(3):
        await submit(client, agent="ticker")
    first = (await client.get("/runs", params={"limit": 2})).json()
    rest = (await client.get("/runs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    ids = [r["run_id"] for r in first["runs"] + rest["runs"]]
    assert len(ids) == len(set(ids)) == 3
    for bad in ("", "2024-01-01T00:00:00+00:00~" + ids[0], "1~not-a-uuid"):
        resp = await client.get("/runs", params={"cursor": bad})
        assert (resp.status_code, resp.json()["error"]) == (400, "invalid_cursor"), bad


async def test_options_answers_with_every_method_of_the_path_and_so_does_a_405(client):
    # Given a path with two routes (GET and POST /runs)
    options = await client.options("/runs")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, OPTIONS, POST"
    assert options.headers["x-request-id"]
    wrong = await client.delete("/runs")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, OPTIONS, POST"
    assert wrong.json()["error"] == "method_not_allowed"
    run_id = await submit(client, agent="ticker")
    cancel = await client.options(f"/runs/{run_id}/cancel")
    assert cancel.headers["allow"] == "OPTIONS, POST"
    assert (await client.options("/nowhere")).status_code == 404


async def test_a_last_event_id_is_ascii_digits_only(client):
    run_id = await submit(client, agent="ticker")
    for bad in ("\u0661", " 1", "1a", "-1"):  # the first: ARABIC-INDIC DIGIT ONE
        resp = await client.get(f"/runs/{run_id}/events", params={"last_event_id": bad})
        assert resp.status_code == 400, bad
    resp = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "1a"})
    assert resp.status_code == 400
