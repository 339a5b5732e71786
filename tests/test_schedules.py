"""The schedules resource over HTTP: create, read, list, delete, isolation per user, and every
bad input a clear 4xx that writes nothing (rows counted before and after)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from shared.store import Store
from worker.schedules import Ticker

GOOD = {
    "cron": "0 9 * * 1-5",
    "timezone": "Europe/Paris",
    "input": "the morning report",
    "agent": "ticker",
    "params": {"count": 2},
}


async def rows(store: Store) -> tuple[int, int, int]:
    """Schedules, their ticks and runs, as stored."""
    return (
        int(await store.db.fetchval("SELECT count(*) FROM schedules")),
        int(await store.db.fetchval("SELECT count(*) FROM schedule_ticks")),
        int(await store.db.fetchval("SELECT count(*) FROM runs")),
    )


async def test_a_created_schedule_is_answered_201_with_its_next_run_and_location(client):
    resp = await client.post("/schedules", json=GOOD)

    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert resp.headers["location"] == f"/schedules/{body['schedule_id']}"
    assert body["url"].endswith(resp.headers["location"])
    assert {k: body[k] for k in GOOD} == GOOD
    assert body["thread_id"] is None
    assert body["metadata"] == {}
    assert body["runs_made"] == 0
    assert body["last_run_at"] is None
    # 09:00 in Paris on a weekday, in the future
    nxt = datetime.fromisoformat(body["next_run_at"])
    assert nxt > datetime.now(UTC)
    assert nxt.astimezone(ZoneInfo("Europe/Paris")).hour == 9
    assert nxt.astimezone(UTC).weekday() < 5
    # and GET answers the same schedule
    got = await client.get(resp.headers["location"])
    assert got.status_code == 200
    assert got.json() == body


async def test_the_agent_defaults_as_a_submits_does(client):
    body = {k: v for k, v in GOOD.items() if k not in ("agent", "params")}
    resp = await client.post("/schedules", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["agent"] == "chat"


async def test_the_list_is_the_callers_newest_first_in_pages(client, bob):
    made = []
    for i in range(3):
        resp = await client.post("/schedules", json={**GOOD, "input": f"report {i}"})
        made.append(resp.json()["schedule_id"])
    await bob.post("/schedules", json=GOOD)

    first = (await client.get("/schedules", params={"limit": 2})).json()
    second = (
        await client.get("/schedules", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()

    listed = [s["schedule_id"] for s in first["schedules"] + second["schedules"]]
    assert listed == made[::-1]
    assert second["next_cursor"] is None
    assert len((await bob.get("/schedules")).json()["schedules"]) == 1


async def test_a_deleted_schedule_is_gone_and_another_users_is_a_404(client, bob, store):
    sid = (await client.post("/schedules", json=GOOD)).json()["schedule_id"]

    # Another user sees, lists and deletes nothing of it: the 404 of a missing one
    missing = "00000000-0000-4000-8000-000000000000"
    for path in (f"/schedules/{sid}", f"/schedules/{sid}/runs"):
        theirs, none = await bob.get(path), await bob.get(path.replace(sid, missing))
        assert theirs.status_code == none.status_code == 404
        assert theirs.json()["error"] == none.json()["error"] == "not_found"
    assert (await bob.delete(f"/schedules/{sid}")).status_code == 404
    assert (await client.get(f"/schedules/{sid}")).status_code == 200

    # The owner deletes it: 204, then it is gone (and a second delete is a 404)
    resp = await client.delete(f"/schedules/{sid}")
    assert resp.status_code == 204
    assert resp.content == b""
    assert (await client.get(f"/schedules/{sid}")).status_code == 404
    assert (await client.delete(f"/schedules/{sid}")).status_code == 404
    assert (await client.get("/schedules")).json()["schedules"] == []


BAD = [
    ({"cron": "61 * * * *"}, 422, "invalid_cron"),
    ({"cron": "* * *"}, 422, "invalid_cron"),
    ({"cron": "0 0 30 2 *"}, 422, "invalid_cron"),
    ({"cron": "@reboot"}, 422, "invalid_cron"),
    ({"cron": ""}, 422, "invalid_request"),
    ({"timezone": "Mars/Olympus"}, 422, "invalid_timezone"),
    ({"timezone": "../../etc/passwd"}, 422, "invalid_timezone"),
    ({"timezone": None}, 422, "invalid_request"),
    ({"cron": "*/5 * * * * *"}, 422, "schedule_too_frequent"),
    ({"agent": "nope"}, 422, "unknown_agent"),
    ({"params": {"count": -1}}, 422, "bad_params"),
    ({"input": "   "}, 422, "invalid_request"),
    ({"input": "a\x00b"}, 422, "invalid_request"),
    ({"thread_id": "no spaces"}, 422, "invalid_request"),
    ({"webhook": "https://example.com/"}, 422, "invalid_request"),
    ({"thread_mode": "reject"}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("change", "status", "code"), BAD)
async def test_bad_input_is_a_clear_4xx_that_writes_nothing(client, store, change, status, code):
    before = await rows(store)

    resp = await client.post("/schedules", json={**GOOD, **change})

    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["detail"]
    if code is not None:
        assert body["error"] == code
    assert await rows(store) == before


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"input": "x" * 1_000_001}, id="input_too_long"),
        pytest.param({"metadata": "deep"}, id="metadata_too_deep"),
        pytest.param({"params": {"count": 5, "tools": "nope"}}, id="params_tools"),
    ],
)
async def test_the_run_template_is_refused_exactly_as_a_submit_would_be(
    client, store, settings, change
):
    if change.get("metadata") == "deep":
        change = {"metadata": nested(settings.max_json_depth + 1)}
    if "input" in change:
        change = {"input": "x" * (settings.max_input_chars + 1)}
    before = await rows(store)
    as_run = await client.post(
        "/runs", json={k: v for k, v in {**GOOD, **change}.items() if k not in ("cron", "timezone")}
    )
    as_schedule = await client.post("/schedules", json={**GOOD, **change})
    assert as_run.status_code == as_schedule.status_code == 422, as_schedule.text
    assert as_run.json()["error"] == as_schedule.json()["error"]
    assert as_run.json()["detail"] == as_schedule.json()["detail"]
    assert await rows(store) == before


async def test_a_body_that_is_not_json_is_a_400(client, store):
    before = await rows(store)
    resp = await client.post(
        "/schedules", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= resp.status_code < 500
    assert await rows(store) == before


async def test_a_malformed_schedule_id_is_a_400(client):
    resp = await client.get("/schedules/not-a-uuid")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_schedule_id"


async def test_no_key_is_a_401(api):
    async with httpx.AsyncClient(base_url=api.url) as anon:
        assert (await anon.post("/schedules", json=GOOD)).status_code == 401
        assert (await anon.get("/schedules")).status_code == 401


async def test_a_user_past_the_schedule_bound_is_refused_409(api_factory, settings, store):
    api = await api_factory(settings.with_(max_schedules_per_user=2))
    _, key = await store.users.create_key("carol")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as carol:
        for _ in range(2):
            assert (await carol.post("/schedules", json=GOOD)).status_code == 201
        before = await rows(store)
        resp = await carol.post("/schedules", json=GOOD)
        assert resp.status_code == 409
        assert resp.json()["error"] == "too_many_schedules"
        assert await rows(store) == before
        # a deleted one frees its place
        sid = (await carol.get("/schedules")).json()["schedules"][0]["schedule_id"]
        assert (await carol.delete(f"/schedules/{sid}")).status_code == 204
        assert (await carol.post("/schedules", json=GOOD)).status_code == 201


async def test_a_shorter_minimum_interval_admits_a_seconds_schedule(api_factory, settings, store):
    api = await api_factory(settings.with_(schedule_min_interval_seconds=5))
    _, key = await store.users.create_key("dan")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as dan:
        ok = await dan.post("/schedules", json={**GOOD, "cron": "*/5 * * * * *"})
        assert ok.status_code == 201, ok.text
        # two ticks 1 s apart in each minute: refused though most gaps are longer
        bad = await dan.post("/schedules", json={**GOOD, "cron": "0,1 * * * * *"})
        assert bad.status_code == 422
        assert bad.json()["error"] == "schedule_too_frequent"


async def test_metrics_count_live_schedules_and_the_runs_their_ticks_made(client, store, settings):
    # Given two schedules, one deleted, and two runs made by the live one's ticks
    live = (await client.post("/schedules", json={**GOOD, "cron": "0 * * * *"})).json()
    gone = (await client.post("/schedules", json=GOOD)).json()
    assert (await client.delete(f"/schedules/{gone['schedule_id']}")).status_code == 204
    rio = RedisIO(create_redis(settings, "test"), Keys.from_settings(settings), settings)
    try:
        ticker = Ticker(settings, store, rio)
        due = datetime.fromisoformat(live["next_run_at"])
        for hour in range(2):
            made = await ticker.once(due + timedelta(hours=hour))
            await store.db.execute(  # started, so the next tick makes its run
                "UPDATE runs SET status = 'running' WHERE run_id = $1::uuid", made[0].run_id
            )
    finally:
        await rio.aclose()

    # When /metrics is scraped (this API's first scrape: fresh figures)
    text = (await client.get("/metrics")).text

    # Then
    assert "\nlongrun_schedules 1.0\n" in text
    assert "\nlongrun_schedule_ticks_total 2.0\n" in text


async def test_a_rare_seconds_schedule_is_measured_not_a_500(client):
    # a leap-day schedule with a seconds field: its gap is measured over the ticks in reach
    resp = await client.post("/schedules", json={**GOOD, "cron": "0 0 0 29 2 *", "timezone": "UTC"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["next_run_at"].endswith("-02-29T00:00:00+00:00")
