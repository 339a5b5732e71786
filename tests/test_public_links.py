"""Public links (`url`, `events_url` with its stream token, `Location`) never come from the
request's `Host` header: from `LONGRUN_PUBLIC_URL`, from a trusted host, or the address the
server listens on."""

from __future__ import annotations

import httpx
import pytest

from api.links import host_trusted, location
from shared.config import Settings
from shared.errors import ConfigError

EVIL = "evil.example"
BODY = {"input": "x", "agent": "ticker", "params": {"count": 1}}


async def _answers(url: str, key: str, host: str) -> list[httpx.Response]:
    """Every answer that holds a link: the submit lane's, the route's, a run, a fresh
    events_url, and a path with a stray slash (which Starlette answers with a redirect)."""
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}", "Host": host}, timeout=10
    ) as c:
        await c.post("/runs", json=BODY)  # caches the key: the lane answers the next one
        lane = await c.post("/runs", json=BODY)
        route = await c.post("/runs", json={**BODY, "thread_id": "t1"})
        rid = lane.json()["run_id"]
        return [
            lane,
            route,
            await c.get(f"/runs/{rid}"),
            await c.get(f"/runs/{rid}/events_url"),
            await c.get("/runs/"),
            await c.get(f"/runs/{rid}/"),
        ]


def _text(resp: httpx.Response) -> str:
    return resp.text + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())


@pytest.fixture
async def key(store) -> str:
    _, k = await store.users.create_key("alice")
    return k


async def test_a_forged_host_header_reaches_no_link_and_links_are_relative_by_default(api, key):
    # Given an API with no public URL configured
    # When a client sends Host: evil.example
    answers = await _answers(api.url, key, EVIL)
    # Then no answer, body or header, names that host
    for resp in answers:
        assert EVIL not in _text(resp), (resp.request.url, _text(resp))
    lane, route, run, fresh, *slashed = answers
    # And the links name the address the server listens on, the same from the lane and the
    # route
    for resp in (lane, route, run):
        rid = resp.json()["run_id"]
        assert resp.json()["url"] == f"{api.url}/runs/{rid}"
        assert resp.json()["events_url"].startswith(f"{api.url}/runs/{rid}/events?token=")
    assert fresh.json()["events_url"].startswith(f"{api.url}/runs/{lane.json()['run_id']}/")
    assert lane.headers["location"] == f"/runs/{lane.json()['run_id']}"
    # And a stray slash is a plain 404, not a redirect built from the Host header
    assert [r.status_code for r in slashed] == [404, 404]


async def test_links_start_with_the_configured_public_url_whatever_the_host(
    api_factory, settings, key
):
    srv = await api_factory(settings.with_(public_url="https://api.example.com/v1"))
    lane, route, run, fresh, *_ = await _answers(srv.url, key, EVIL)
    for resp in (lane, route, run):
        rid = resp.json()["run_id"]
        assert resp.json()["url"] == f"https://api.example.com/v1/runs/{rid}"
        assert resp.json()["events_url"].startswith(
            f"https://api.example.com/v1/runs/{rid}/events?token="
        )
    assert fresh.json()["events_url"].startswith("https://api.example.com/v1/runs/")
    assert lane.headers["location"] == f"/v1/runs/{lane.json()['run_id']}"


async def test_a_trusted_host_is_used_and_any_other_gives_the_bound_address(
    api_factory, settings, key
):
    srv = await api_factory(settings.with_(trusted_hosts=("api.example.com", "*.corp.test")))
    trusted = await _answers(srv.url, key, "api.example.com")
    sub = await _answers(srv.url, key, "eu.corp.test:8443")
    forged = await _answers(srv.url, key, EVIL)
    assert trusted[0].json()["url"].startswith("http://api.example.com/runs/")
    assert sub[2].json()["events_url"].startswith("http://eu.corp.test:8443/runs/")
    assert forged[0].json()["url"].startswith(f"{srv.url}/runs/")
    for resp in forged:
        assert EVIL not in _text(resp)


def test_trusted_hosts_match_names_ports_and_subdomains_and_nothing_that_ends_a_url():
    trusted = ("api.example.com", "api.example.com:8443", "*.corp.test")
    assert host_trusted("API.example.com", trusted)
    assert host_trusted("api.example.com:8443", trusted)
    assert host_trusted("api.example.com:80", trusted)  # the name alone is trusted
    assert host_trusted("a.b.corp.test", trusted)
    assert not host_trusted("corp.test", trusted)
    assert not host_trusted("evilcorp.test", trusted)
    assert not host_trusted("x@a.corp.test", trusted)
    assert not host_trusted("evil.example/.corp.test", trusted)
    assert not host_trusted("api.example.com.evil.example", trusted)


@pytest.mark.parametrize(
    "raw", ["api.example.com", "ftp://x.test", "https://x.test/?a=1", "https://x.test/#f"]
)
def test_a_public_url_that_is_not_an_http_base_url_fails_at_start_up(raw: str):
    with pytest.raises(ConfigError, match="LONGRUN_PUBLIC_URL"):
        Settings.from_env({"LONGRUN_PUBLIC_URL": raw})


def test_the_public_url_is_kept_without_its_trailing_slash():
    got = Settings.from_env({"LONGRUN_PUBLIC_URL": "https://x.test/api/"}).public_url
    assert got == "https://x.test/api"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("http://127.0.0.1:8000/runs/abc", "/runs/abc"),
        ("https://api.example.com/longrun/runs/abc", "/longrun/runs/abc"),
        ("https://api.example.com/a/runs/b/runs/abc", "/a/runs/b/runs/abc"),
        ("/runs/abc", "/runs/abc"),
        ("https://api.example.com/health", "/health"),
    ],
)
def test_a_location_is_the_path_of_its_link_under_any_base(url: str, path: str) -> None:
    assert location(url) == path
