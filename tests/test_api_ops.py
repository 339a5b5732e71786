"""`GET /me` and the operators' endpoints (`/ops/...`, what the console's Operations view is
made of), with httpx: an operator key (`longrun keys create --operator`) sees every user's runs,
the cluster snapshot and the dead letters, and moves the kill switch; any other key gets a 403
`operator_only`, and no key a 401. `GET /runs?agent=` filters a user's own runs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from cli.admin import revoke_key
from shared.redis.keys import Keys
from tests.cli_proc import cli_env, longrun
from tests.helpers import submit, wait_status
from tests.test_ops_status import dead_letter_a_run

OPS_ROUTES = [
    ("GET", "/ops/status"),
    ("GET", "/ops/runs"),
    ("GET", "/ops/runs/00000000-0000-4000-8000-000000000000"),
    ("GET", "/ops/runs/00000000-0000-4000-8000-000000000000/events_url"),
    ("GET", "/ops/dlq"),
    ("POST", "/ops/dlq/0-1/retry"),
    ("POST", "/ops/pause"),
    ("POST", "/ops/resume"),
]


@pytest.fixture
async def root(api, store) -> AsyncIterator[httpx.AsyncClient]:
    """An operator's client."""
    _, key = await store.users.create_key("root", operator=True)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        yield c


async def test_me_names_the_caller_and_whether_it_is_an_operator(client, root):
    me = (await client.get("/me")).json()
    assert me["user"] == "alice"
    assert me["operator"] is False
    assert me["key_id"].startswith("lr_")
    assert (await root.get("/me")).json()["operator"] is True


@pytest.mark.parametrize(("method", "path"), OPS_ROUTES)
async def test_every_ops_route_refuses_a_user_key_with_403_and_no_key_with_401(
    api, client, method, path
):
    refused = await client.request(method, path)
    assert refused.status_code == 403
    body = refused.json()
    assert body["error"] == "operator_only"
    assert body["request_id"] == refused.headers["x-request-id"]
    async with httpx.AsyncClient(base_url=api.url) as anonymous:
        assert (await anonymous.request(method, path)).status_code == 401


async def test_an_operator_lists_every_users_runs_newest_first_with_keyset_pages(client, bob, root):
    # Given runs of two users, on two agents
    alice_runs = [await submit(client, agent="ticker", params={"count": 1}) for _ in range(3)]
    bob_run = await submit(bob, agent="ticker", params={"count": 1})
    # When an operator lists them two by two
    first = (await root.get("/ops/runs", params={"limit": 2})).json()
    second = (
        await root.get("/ops/runs", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    # Then every user's runs come, newest first, each with its owner, and no page repeats
    ids = [r["run_id"] for r in first["runs"] + second["runs"]]
    assert ids == [bob_run, *reversed(alice_runs)]
    assert [r["user_id"] for r in first["runs"]] == ["bob", "alice"]
    # And the filters narrow them: by user, and by agent (for users too, on GET /runs)
    only_bob = (await root.get("/ops/runs", params={"user": "bob"})).json()["runs"]
    assert [r["run_id"] for r in only_bob] == [bob_run]
    assert (await root.get("/ops/runs", params={"agent": "chat"})).json()["runs"] == []
    mine = (await client.get("/runs", params={"agent": "ticker"})).json()["runs"]
    assert [r["run_id"] for r in mine] == list(reversed(alice_runs))
    assert (await client.get("/runs", params={"agent": "chat"})).json()["runs"] == []
    # And an operator reads any run, while its owner's peers still get a 404
    one = (await root.get(f"/ops/runs/{bob_run}")).json()
    assert (one["user_id"], one["input"]) == ("bob", "test")
    assert (await client.get(f"/runs/{bob_run}")).status_code == 404


async def test_the_status_snapshot_shows_the_queue_workers_and_runs_ended(client, root, worker):
    run_id = await submit(client, agent="ticker", params={"count": 2, "interval_ms": 1})
    await wait_status(client, run_id, "succeeded")
    s = (await root.get("/ops/status")).json()
    assert s["workers_alive"] == 1
    assert s["workers"][0]["concurrency"] >= 1
    assert {"backlog", "pending", "lag", "oldest_waiting_age_seconds", "dead_letters"} <= set(s)
    assert s["paused"] is None
    assert s["runs_finished"].get("succeeded", 0) >= 1


async def test_the_kill_switch_refuses_submits_until_resumed(client, root):
    # When an operator pauses submits with a reason
    paused = await root.post("/ops/pause", json={"reason": "maintenance"})
    assert paused.json() == {"paused": "maintenance"}
    # Then a submit is a 503 paused, and the snapshot says why
    refused = await client.post("/runs", json={"input": "x"})
    assert refused.status_code == 503
    assert refused.json()["error"] == "paused"
    assert (await root.get("/ops/status")).json()["paused"] == "maintenance"
    # And after resume submits are accepted again
    assert (await root.post("/ops/resume")).json() == {"paused": None}
    assert (await client.post("/runs", json={"input": "x"})).status_code == 202
    # A reason that is not a short string is a 4xx, and moves nothing
    assert (await root.post("/ops/pause", json={"reason": ""})).status_code == 422
    assert (await root.get("/ops/status")).json()["paused"] is None


async def test_an_operator_retries_a_dead_letter_to_success_and_drops_another(
    client, root, redis_client, settings, worker_factory
):
    keys = Keys.from_settings(settings)
    # Given a dead-lettered run
    run_id, w = await dead_letter_a_run(client, redis_client, keys, worker_factory)
    letters = (await root.get("/ops/dlq")).json()["dead_letters"]
    assert [(d["run_id"], d["run_status"]) for d in letters] == [(run_id, "failed")]
    # When an operator retries it by its run id
    done = await root.post(f"/ops/dlq/{run_id}/retry")
    # Then it is requeued, leaves the dead letters, and runs to success
    assert done.json()["result"] == "requeued"
    assert (await root.get("/ops/dlq")).json()["dead_letters"] == []
    await wait_status(client, run_id, "succeeded", timeout=60)
    # And an unknown letter is a 404, an unknown action a 422
    assert (await root.post(f"/ops/dlq/{run_id}/retry")).status_code == 404
    assert (await root.post("/ops/dlq/0-1/explode")).status_code == 422
    await w.close()
    # And a dropped letter goes, its run staying failed
    other, _ = await dead_letter_a_run(client, redis_client, keys, worker_factory)
    entry = (await root.get("/ops/dlq")).json()["dead_letters"][0]["entry_id"]
    assert (await root.post(f"/ops/dlq/{entry}/drop")).json()["result"] == "dropped"
    assert (await root.get("/ops/dlq")).json()["dead_letters"] == []
    assert (await client.get(f"/runs/{other}")).json()["status"] == "failed"


async def test_keys_create_operator_makes_a_key_the_ops_routes_answer(api, settings, tmp_path):
    done = await longrun(
        "keys", "create", "--user", "ops", "--operator", env=cli_env(tmp_path, settings)
    )
    assert done.code == 0, done
    assert "operator key" in done.out
    key = done.out.strip().splitlines()[-1]
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as c:
        assert (await c.get("/me")).json() == {
            "user": "ops",
            "operator": True,
            "key_id": "_".join(key.split("_")[:2]),
        }
        assert (await c.get("/ops/status")).status_code == 200


async def test_an_operator_follows_any_users_run_with_a_token_its_own_key_minted(
    api, bob, root, worker, settings
):
    # Given a run of bob's
    run_id = await submit(bob, agent="ticker", params={"count": 5, "interval_ms": 1})
    unknown = await root.get("/ops/runs/00000000-0000-4000-8000-000000000000/events_url")
    assert unknown.status_code == 404
    # When an operator asks for its events_url and follows it with no credentials but the token
    minted = (await root.get(f"/ops/runs/{run_id}/events_url")).json()
    assert minted["run_id"] == run_id
    async with (
        httpx.AsyncClient(timeout=30) as anonymous,
        anonymous.stream("GET", minted["events_url"]) as resp,
    ):
        assert resp.status_code == 200
        body = (await resp.aread()).decode()
    # Then it sees the run's events to the end
    assert [line for line in body.splitlines() if line.startswith("id:")][-1] == "id: 7"
    assert body.count("event: token") == 5
    # And once the operator's key is revoked, the token it minted is refused
    me = (await root.get("/me")).json()
    assert await revoke_key(settings, me["key_id"])
    async with httpx.AsyncClient(timeout=10) as anonymous:
        refused = await anonymous.get(minted["events_url"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "stream_token_revoked"


async def test_an_agent_filter_postgres_cannot_store_is_a_422_not_a_500(client) -> None:
    """Found by schemathesis: a NUL in `agent=` reached Postgres, which refuses it (500)."""
    for bad in ("z\x00q", "a b", "x" * 129):
        resp = await client.get("/runs", params={"agent": bad})
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["request_id"]
