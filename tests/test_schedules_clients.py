"""Schedules from the clients: the Python SDK (`client.schedules`, async and blocking) and the
`longrun schedules` command (text, `--json`, exit codes), against a live API."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from longrun_client import AsyncClient, BadRequest, Client, Conflict, NotFound

from shared.config import Settings
from shared.redis.client import create_redis
from shared.redis.keys import Keys
from shared.redis.runs import RedisIO
from tests.cli_proc import cli_env, longrun
from worker.schedules import Ticker

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def sdk(api, api_key: str):
    async with AsyncClient(api.url, api_key) as c:
        yield c


async def test_the_sdk_creates_lists_reads_and_deletes_schedules(sdk: AsyncClient, bob) -> None:
    made = await sdk.schedules.create(
        "*/10 * * * *", "report", timezone="Asia/Tokyo", agent="ticker", params={"count": 1}
    )
    assert made.cron == "*/10 * * * *"
    assert made.timezone == "Asia/Tokyo"
    assert made.params == {"count": 1}
    assert made.runs_made == 0
    assert datetime.fromisoformat(made.next_run_at).minute % 10 == 0

    others = [await sdk.schedules.create("@daily", f"n{i}") for i in range(2)]
    listed = [s.schedule_id async for s in sdk.schedules.list(page_size=2)]
    assert listed == [others[1].schedule_id, others[0].schedule_id, made.schedule_id]
    assert (await sdk.schedules.get(made.schedule_id)) == made

    await sdk.schedules.delete(made.schedule_id)
    with pytest.raises(NotFound):
        await sdk.schedules.get(made.schedule_id)
    with pytest.raises(NotFound):
        await sdk.schedules.delete(made.schedule_id)


async def test_the_sdk_raises_the_apis_refusals(sdk: AsyncClient) -> None:
    with pytest.raises(BadRequest) as bad:
        await sdk.schedules.create("not cron", "x")
    assert bad.value.code == "invalid_cron"
    with pytest.raises(BadRequest) as zone:
        await sdk.schedules.create("@daily", "x", timezone="Nowhere/Town")
    assert zone.value.code == "invalid_timezone"


async def test_the_sdk_lists_the_runs_a_schedule_made(sdk: AsyncClient, settings, store) -> None:
    made = await sdk.schedules.create("0 * * * *", "hourly", agent="ticker")
    rio = RedisIO(create_redis(settings, "test"), Keys.from_settings(settings), settings)
    try:
        due = datetime.fromisoformat(made.next_run_at)
        ticker = Ticker(settings, store, rio)
        first = await ticker.once(due)
        await store.db.execute(  # started: else the next tick is skipped (one queued at most)
            "UPDATE runs SET status = 'running' WHERE run_id = $1::uuid", first[0].run_id
        )
        second = await ticker.once(due + timedelta(hours=1))
    finally:
        await rio.aclose()

    page = await sdk.schedules.runs(made.schedule_id)

    assert [r.run_id for r in page.runs] == [second[0].run_id, first[0].run_id]
    assert page.runs[0].raw["tick_at"] == (due + timedelta(hours=1)).isoformat()
    assert (await sdk.schedules.get(made.schedule_id)).runs_made == 2


async def test_the_blocking_client_does_the_same(api, api_key: str) -> None:
    def use() -> tuple[str, list[str]]:
        with Client(api.url, api_key) as client:
            made = client.schedules.create("@hourly", "hi", agent="ticker")
            listed = [s.schedule_id for s in client.schedules.list()]
            client.schedules.delete(made.schedule_id)
            return made.schedule_id, listed

    sid, listed = await asyncio.to_thread(use)
    assert listed == [sid]


async def test_the_sdk_conflict_when_past_the_bound(api_factory, settings, store) -> None:
    api = await api_factory(settings.with_(max_schedules_per_user=1))
    _, key = await store.users.create_key("fay")
    async with AsyncClient(api.url, key) as fay:
        await fay.schedules.create("@daily", "one")
        with pytest.raises(Conflict) as err:
            await fay.schedules.create("@daily", "two")
    assert err.value.code == "too_many_schedules"


@pytest.fixture
def env(api, api_key: str, settings: Settings, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, settings, LONGRUN_URL=api.url, LONGRUN_API_KEY=api_key)


async def test_the_cli_creates_lists_gets_and_deletes(env: dict[str, str]) -> None:
    made = await longrun(
        "schedules", "create", "0 9 * * 1-5", "morning", "--timezone", "Europe/Paris",
        "--agent", "ticker", "--params", '{"count": 2}', env=env,
    )  # fmt: skip
    assert made.code == 0, made
    sid = made.out.strip()
    assert made.err_lines == [f"schedule {sid} created: next run at " + made.err.split()[-1]]

    listed = await longrun("schedules", "list", env=env)
    assert listed.code == 0, listed
    assert listed.out.startswith(sid)
    assert "0 9 * * 1-5" in listed.out

    got = await longrun("schedules", "get", sid, "--json", env=env)
    assert got.code == 0, got
    body = json.loads(got.out)
    assert (body["schedule_id"], body["params"], body["timezone"]) == (
        sid,
        {"count": 2},
        "Europe/Paris",
    )
    text = await longrun("schedules", "get", sid, env=env)
    assert text.out.splitlines()[0] == f"schedule {sid}: 0 9 * * 1-5 (Europe/Paris)"

    runs = await longrun("schedules", "runs", sid, "--json", env=env)
    assert json.loads(runs.out) == {"runs": [], "next_cursor": None}

    gone = await longrun("schedules", "delete", sid, env=env)
    assert (gone.code, gone.out) == (0, f"schedule {sid} deleted\n")
    again = await longrun("schedules", "delete", sid, env=env)
    assert again.code == 3, again  # the API refused: 404
    assert (await longrun("schedules", "list", env=env)).out == "no schedules\n"


async def test_the_cli_refuses_bad_input_with_the_apis_words(env: dict[str, str], store) -> None:
    bad = await longrun("schedules", "create", "61 * * * *", "x", env=env)
    assert bad.code == 3, bad
    assert "cron" in bad.err
    params = await longrun("schedules", "create", "@daily", "x", "--params", "[1]", env=env)
    assert params.code == 5, params
    assert int(await store.db.fetchval("SELECT count(*) FROM schedules")) == 0
