"""Limits on everything a client controls: each has a setting, and a request past it is a
clear 4xx that writes nothing."""

from __future__ import annotations

import httpx
import pytest

BIG = {"input": "x", "agent": "ticker"}


@pytest.fixture
async def tight(api_factory, settings, api_key):
    srv = await api_factory(settings.with_(max_input_chars=10, max_json_bytes=64, max_json_depth=2))
    async with httpx.AsyncClient(
        base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**BIG, "input": "x" * 11}, "input_too_long"),
        ({**BIG, "params": {"k": "v" * 100}}, "invalid_request"),
        ({**BIG, "metadata": {"a": {"b": {"c": 1}}}}, "invalid_request"),
        ({**BIG, "input": "nul\u0000here"}, "invalid_request"),
        ({**BIG, "params": {"nul": "a\u0000b"}}, "invalid_request"),
        ({**BIG, "params": {"n": 2**70}}, "invalid_request"),
    ],
)
async def test_requests_past_a_configured_limit_are_refused_and_write_nothing(tight, body, code):
    resp = await tight.post("/runs", json=body)

    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == code
    assert (await tight.get("/runs")).json()["runs"] == []


async def test_a_lone_surrogate_in_the_input_is_a_422(tight):
    raw = b'{"input": "\\ud800", "agent": "ticker"}'
    resp = await tight.post("/runs", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text


async def test_within_the_limits_a_submit_is_accepted(tight):
    resp = await tight.post("/runs", json={**BIG, "input": "x" * 10, "params": {"a": {"b": 1}}})
    assert resp.status_code == 202, resp.text
