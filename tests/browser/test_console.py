"""The console (`/console`) in real Chromium, end to end: sign in, submit a ticker run and
watch it to `succeeded` while the link is cut twice (the page reconnects and holds tokens
exactly 1..N), cancel a run, be refused another user's run, sign in as an operator (every
user's runs, the Operations view, the kill switch behind its confirmation), an accessibility
pass with axe-core (vendored) on every view, and a check that the API key goes nowhere but
the tab's session storage and the `Authorization` header of requests to the API itself.

The page is opened through a TCP proxy in front of the API, so cutting the proxy's links cuts
the page's event stream. With LONGRUN_SCREENSHOTS=DIR the test saves its screenshots there
(the README's come from `LONGRUN_SCREENSHOTS=docs/console`); otherwise under tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.admin import revoke_key
from shared.redis.keys import Keys
from tests.browser.cdp import Tab
from tests.browser.test_eventsource import CHROMIUM, FLAGS, chromium
from tests.helpers import wait_status
from tests.tcp_proxy import TcpProxy
from tests.test_ops_status import dead_letter_a_run

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.timeout(300),
]
AXE = Path(__file__).with_name("vendor") / "axe-core" / "axe.min.js"
COUNT = 40


async def sign_in(tab: Tab, key: str) -> dict[str, Any]:
    try:
        await tab.until("document.querySelector('#api-key')", timeout=30)
    except AssertionError:
        raise AssertionError(f"no sign-in form; the page said: {tab.problems}") from None
    await tab.eval(
        f"document.querySelector('#api-key').value = {json.dumps(key)};"
        "document.querySelector('#api-key').form.requestSubmit(); true"
    )
    me: dict[str, Any] = await tab.until("window.longrunConsole.me")
    return me


async def press(tab: Tab, key: str, code: int, shift: bool = False) -> None:
    for kind in ("rawKeyDown", "keyUp"):
        await tab.send(
            "Input.dispatchKeyEvent",
            {
                "type": kind,
                "key": key,
                "code": key,
                "windowsVirtualKeyCode": code,
                "modifiers": 8 if shift else 0,
            },
        )


async def sign_in_by_keyboard(tab: Tab, key: str) -> dict[str, Any]:
    """Types the key into the focused field and presses Enter, as a keyboard user would."""
    await tab.until("document.activeElement && document.activeElement.id === 'api-key'")
    await tab.send("Input.insertText", {"text": key})
    await tab.send(
        "Input.dispatchKeyEvent",
        {
            "type": "keyDown",
            "key": "Enter",
            "code": "Enter",
            "windowsVirtualKeyCode": 13,
            "text": "\r",
        },
    )
    await tab.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Enter", "code": "Enter"})
    me: dict[str, Any] = await tab.until("window.longrunConsole.me")
    return me


async def tab_stops(tab: Tab, n: int) -> list[dict[str, Any]]:
    """What Tab reaches, `n` presses from the top of the page: each stop's text or label,
    and whether its focus is drawn (an outline)."""
    await tab.eval(
        "document.body.tabIndex = -1; document.body.focus();"
        " document.body.removeAttribute('tabindex'); true"
    )
    stops = []
    for _ in range(n):
        await press(tab, "Tab", 9)
        stops.append(
            await tab.eval(
                "(() => { const e = document.activeElement; const s = getComputedStyle(e);"
                " return {tag: e.tagName, name: (e.getAttribute('aria-label') || e.id ||"
                " e.textContent || '').trim().slice(0, 40),"
                " outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0}; })()"
            )
        )
    return stops


async def go(tab: Tab, hash_: str, ready: str) -> None:
    await tab.eval(f"window.location.hash = {json.dumps(hash_)}; true")
    await tab.until(ready)


async def submit_form(
    tab: Tab, text: str, agent: str = "", params: str = "", thread: str = ""
) -> str:
    """Fills and sends the Submit form; returns the run id of the page it goes to."""
    await go(tab, "#/submit", "document.querySelector('#s-agent option[value=ticker]')")
    fields = {"#s-agent": agent, "#s-input": text, "#s-params": params, "#s-thread": thread}
    fill = "".join(
        f"document.querySelector('{sel}').value = {json.dumps(value)};"
        for sel, value in fields.items()
    )
    await tab.eval(
        fill + "document.querySelector('#s-params').dispatchEvent(new Event('input'));"
        "document.querySelector('#s-params').form.requestSubmit(); true"
    )
    run_id: str = await tab.until(
        "(() => { const m = location.hash.match(/^#\\/runs\\/([0-9a-f-]{36})$/);"
        " const v = window.longrunConsole.run; return m && v && v.runId === m[1] && m[1]; })()"
    )
    return run_id


async def submit_ticker(tab: Tab, count: int, interval_ms: int) -> str:
    params = json.dumps({"count": count, "interval_ms": interval_ms})
    return await submit_form(tab, "watch me", agent="ticker", params=params)


async def axe_violations(tab: Tab) -> list[dict[str, Any]]:
    if not await tab.eval("typeof window.axe !== 'undefined'"):
        await tab.eval(AXE.read_text() + "\n;true")
    found: list[dict[str, Any]] = await tab.eval(
        "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map(v =>"
        " ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})"
        "))"
    )
    return found


async def test_the_console_end_to_end_in_chromium(
    api_factory, settings, store, api_key, worker, tmp_path, monkeypatch
):
    # Given an API reached through a proxy, a worker, two users and an operator
    monkeypatch.setattr("tests.browser.test_eventsource.FLAGS", [*FLAGS, "--window-size=1280,900"])
    srv = await api_factory(settings)
    _, bob_key = await store.users.create_key("bob")
    _, op_key = await store.users.create_key("root", operator=True)
    proxy = await TcpProxy("127.0.0.1", srv.port).start()
    origin = f"http://127.0.0.1:{proxy.port}"
    shots = Path(os.environ.get("LONGRUN_SCREENSHOTS") or tmp_path / "shots")
    headers = {"Authorization": f"Bearer {bob_key}"}
    async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=10) as bob:
        bobs = (await bob.post("/runs", json={"input": "secret", "agent": "ticker"})).json()
    a11y: dict[str, list[dict[str, Any]]] = {}
    try:
        async with chromium(f"{origin}/console", tmp_path / "profile") as page:
            tab = Tab(page.ws)
            await tab.send("Network.enable")
            await tab.send("Page.enable")
            await tab.send("Log.enable")
            await tab.send("Runtime.enable")
            await tab.send("Page.reload")

            await tab.until("document.querySelector('#api-key')")
            a11y["sign-in"] = await axe_violations(tab)
            # When a user signs in with their key, by keyboard alone
            me = await sign_in_by_keyboard(tab, api_key)
            assert me == {"user": "alice", "operator": False, "key_id": me["key_id"]}
            await tab.until("document.querySelector('main table')")

            # And submits a ticker run, and the link is cut twice while it streams
            run_id = await submit_ticker(tab, COUNT, 150)
            for at_least in (6, 20):
                await tab.until(f"window.longrunConsole.run.tokens.length >= {at_least}")
                proxy.cut()
                proxy.restore()
            await tab.until("window.longrunConsole.run.finished", timeout=90)
            view = await tab.eval(
                "(() => { const v = window.longrunConsole.run; return {tokens: v.tokens,"
                " seqs: v.events.map(e => e.seq), types: v.events.map(e => e.type),"
                " reconnects: v.reconnects,"
                " status: document.querySelector('#run-status').textContent,"
                " connection: document.querySelector('#connection').textContent,"
                " output: document.querySelector('#output').textContent}; })()"
            )
            # Then it watched the run to the end: every token once, in order, across the cuts
            assert view["tokens"] == [str(i) for i in range(1, COUNT + 1)]
            assert view["seqs"] == list(range(1, len(view["seqs"]) + 1))
            assert view["types"][-1] == "done"
            assert view["status"] == "succeeded"
            assert view["reconnects"] >= 2, view
            assert "reconnected" in view["connection"], view["connection"]
            assert view["output"] == "".join(str(i) for i in range(1, COUNT + 1))
            await tab.screenshot(shots / "run.png")
            a11y["run"] = await axe_violations(tab)

            # When they submit a long run and press Cancel mid-run
            cancel_id = await submit_ticker(tab, 1000, 100)
            await tab.until("window.longrunConsole.run.tokens.length >= 3")
            # (while it runs, its diagnostics show who holds it and how fresh its heartbeat is)
            await tab.until(
                "document.querySelector('#diagnostics').innerText.includes('owner_heartbeat_age_s')",
                timeout=30,
            )
            await tab.eval("document.querySelector('#cancel').click(); true")
            await tab.until("window.longrunConsole.run.finished", timeout=60)
            # Then the run ends cancelled, and the page says so
            assert await tab.eval("document.querySelector('#run-status').textContent") == (
                "cancelled"
            )
            assert (await tab.eval("window.longrunConsole.run.events.at(-1).type")) == "cancelled"

            # When they ask the chat agent for arithmetic on a thread
            chat_id = await submit_form(tab, "what is 6*7?", thread="console-thread")
            await tab.until("window.longrunConsole.run.finished", timeout=90)
            # Then its tool calls are a timeline, each with its outcome and duration
            timeline = await tab.eval("document.querySelector('#timeline').innerText")
            assert "calculator" in timeline
            assert "ok ·" in timeline
            assert await tab.eval("document.querySelector('#run-status').textContent") == (
                "succeeded"
            )
            assert await tab.eval("!!document.querySelector('#final-output')")
            await tab.eval("document.querySelector('#timeline').scrollIntoView(); true")
            await tab.screenshot(shots / "tool-calls.png")
            # And the thread's page lists the run and the conversation
            await go(tab, "#/threads/console-thread", "document.querySelector('#messages li')")
            assert chat_id in await tab.eval(
                "[...document.querySelectorAll('#thread-runs a')].map(a => a.href).join(' ')"
            )
            assert "6*7" in await tab.eval("document.querySelector('#messages').innerText")
            a11y["threads"] = await axe_violations(tab)

            # When they open another user's run by its id: refused, as if it did not exist
            await go(tab, f"#/runs/{bobs['run_id']}", "document.querySelector('[role=alert]')")
            refused = await tab.eval("document.querySelector('[role=alert]').textContent")
            assert "not_found" in refused
            assert "secret" not in await tab.eval("document.body.innerText")

            # And the runs list shows theirs, newest first
            await go(tab, "#/runs", "document.querySelectorAll('tr[data-run]').length >= 2")
            listed = await tab.eval(
                "[...document.querySelectorAll('tr[data-run]')].map(r => r.dataset.run)"
            )
            assert listed[:3] == [chat_id, cancel_id, run_id]
            assert bobs["run_id"] not in listed
            # And its filters narrow it: cancelled runs of the ticker agent
            await tab.eval(
                "document.querySelector('#f-status').value = 'cancelled';"
                "document.querySelector('#f-agent').value = 'ticker';"
                "document.querySelector('#f-status').form.requestSubmit(); true"
            )
            await tab.until(
                "document.querySelectorAll('tr[data-run]').length === 1"
                f" && document.querySelector('tr[data-run]').dataset.run === '{cancel_id}'"
            )
            await tab.eval(
                "document.querySelector('#f-status').value = '';"
                "document.querySelector('#f-agent').value = '';"
                "document.querySelector('#f-status').form.requestSubmit(); true"
            )
            await tab.until("document.querySelectorAll('tr[data-run]').length >= 3")
            # And a run submitted elsewhere appears, and its status moves, with no reload
            async with httpx.AsyncClient(
                base_url=srv.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
            ) as alice:
                elsewhere = await alice.post(
                    "/runs",
                    json={"input": "x", "agent": "ticker", "params": {"count": 60}},
                )
            row = f"document.querySelector('tr[data-run=\"{elsewhere.json()['run_id']}\"]')"
            await tab.until(f"{row} && {row}.innerText.includes('running')", timeout=30)
            await tab.until(f"{row}.innerText.includes('succeeded')", timeout=30)
            await tab.screenshot(shots / "runs.png")
            # Tab walks the skip link, the menu, the search, the filters and the runs, with
            # its focus drawn at each stop
            stops = [st for st in await tab_stops(tab, 14) if st["tag"] != "BODY"]
            names = [st["name"] for st in stops]
            assert names[:4] == ["Skip to content", "Runs", "Submit", "Threads"], names
            assert {"f-search", "f-status", "f-agent", "f-thread"} <= set(names), names
            assert any(n.startswith("run ") for n in names), names
            assert [st for st in stops if not st["outline"]] == []
            a11y["runs"] = await axe_violations(tab)
            await go(tab, "#/submit", "document.querySelector('#s-agent option[value=ticker]')")
            await tab.eval(
                "document.querySelector('#s-params').value = '{not json';"
                "document.querySelector('#s-params').dispatchEvent(new Event('input')); true"
            )
            # Bad params JSON is caught before anything is sent
            assert await tab.eval("document.querySelector('#s-params-help').className") == "error"
            assert await tab.eval("document.querySelector('form button[type=submit]').disabled")
            a11y["submit"] = await axe_violations(tab)

            # The key is in this tab's session storage and nowhere else on the page
            stored = await tab.eval(
                "(async () => ({session: JSON.stringify({...sessionStorage}),"
                " local: localStorage.length, cookie: document.cookie,"
                " idb: (await indexedDB.databases()).length,"
                " caches: (await caches.keys()).length}))()"
            )
            assert api_key in stored["session"]
            assert stored == {**stored, "local": 0, "cookie": "", "idb": 0, "caches": 0}

            # When an operator signs in instead
            await tab.eval("document.querySelector('#signout').click(); true")
            me = await sign_in(tab, op_key)
            assert me["operator"] is True
            # Then the runs list is every user's, with its owner
            await go(tab, "#/runs", "document.querySelector('tr[data-run]')")
            owners = await tab.eval(
                "[...document.querySelectorAll('tr[data-run] td:nth-child(2)')]"
                ".map(td => td.textContent)"
            )
            assert {"alice", "bob"} <= set(owners)
            # And opening bob's run streams it, as the operator's view
            await go(
                tab,
                f"#/runs/{bobs['run_id']}",
                f"window.longrunConsole.run?.runId === '{bobs['run_id']}'"
                " && window.longrunConsole.run.finished",
            )
            assert await tab.eval("window.longrunConsole.run.tokens") == [
                str(i) for i in range(1, 11)
            ]
            assert "bob" in await tab.eval("document.querySelector('#owner').innerText")
            assert await tab.eval("document.querySelector('#cancel').hidden")
            # And Operations shows the cluster, with the kill switch behind a confirmation
            await go(tab, "#/ops", "document.querySelector('#fig-backlog')")
            assert await tab.eval("document.querySelector('#fig-workers').textContent") == "1"
            # (and its chart draws backlog and throughput as they are read, every 2 s)
            await tab.until("document.querySelectorAll('#chart polyline').length === 2")
            await tab.until(
                "document.querySelector('#chart polyline').getAttribute('points')"
                ".split(' ').length >= 2",
                timeout=30,
            )
            await tab.eval("document.querySelector('#pause').click(); true")
            await tab.until("document.querySelector('#confirm').open")
            a11y["ops-confirm"] = await axe_violations(tab)
            await tab.eval("document.querySelector('#confirm-yes').click(); true")
            await tab.until("document.querySelector('#resume')")
            async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=10) as bob:
                refused_submit = await bob.post("/runs", json={"input": "x"})
                assert refused_submit.status_code == 503
                assert refused_submit.json()["error"] == "paused"
                await tab.screenshot(shots / "operations.png")
                a11y["ops"] = await axe_violations(tab)
                await tab.eval("document.querySelector('#resume').click(); true")
                await tab.until("document.querySelector('#confirm').open")
                await tab.eval("document.querySelector('#confirm-yes').click(); true")
                await tab.until("document.querySelector('#pause')")
                accepted = await bob.post("/runs", json={"input": "x", "agent": "ticker"})
                assert accepted.status_code == 202
                await wait_status(bob, accepted.json()["run_id"], "succeeded", timeout=60)
            requests = list(tab.requests)
    finally:
        await proxy.stop()

    # Then no view had an accessibility violation
    assert {view: found for view, found in a11y.items() if found} == {}
    # And the keys went only to the API, in the Authorization header, never in a URL; the event
    # streams carried a run-scoped token and no key
    keys = (api_key, op_key)
    for r in requests:
        assert not any(k in r["url"] for k in keys), r["url"]
        auth = {k.lower(): v for k, v in r["headers"].items()}.get("authorization")
        if auth and r["url"]:
            assert r["url"].startswith(origin), r["url"]
        if "/events" in r["url"] and "events_url" not in r["url"]:
            assert "token=" in r["url"]
            assert auth is None, r
    assert any("/events?token=" in r["url"] for r in requests)


async def test_a_run_of_100000_events_streams_into_the_page_without_freezing_it(
    api, client, api_key, worker, tmp_path
):
    # Given a finished ticker run of 100,000 events (start, 99,998 tokens, done: the default
    # per-run cap, LONGRUN_MAX_EVENTS_PER_RUN)
    count = 99_998
    answer = await client.post(
        "/runs",
        json={"input": "x", "agent": "ticker", "params": {"count": count, "interval_ms": 0}},
    )
    run_id = answer.json()["run_id"]
    await wait_status(client, run_id, "succeeded", timeout=240)
    async with chromium(f"{api.url}/console", tmp_path / "profile") as page:
        tab = Tab(page.ws)
        await sign_in(tab, api_key)
        # When the page opens it, while a frame-gap recorder runs
        await tab.eval(
            "window.__maxGap = 0; (() => { let last = performance.now();"
            " const f = (t) => { window.__maxGap = Math.max(window.__maxGap, t - last); last = t;"
            " if (!(window.longrunConsole.run && window.longrunConsole.run.finished))"
            " requestAnimationFrame(f); }; requestAnimationFrame(f); })();"
            f"window.location.hash = '#/runs/{run_id}'; true"
        )
        # Then the page keeps answering while the events pour in
        slowest = 0.0
        while not await tab.eval(
            "!!(window.longrunConsole.run && window.longrunConsole.run.finished)"
        ):
            started = time.monotonic()
            await tab.eval("1")
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.2)
            assert time.monotonic() - started < 240
        got = await tab.eval(
            "(() => { const v = window.longrunConsole.run; return {n: v.tokens.length,"
            " exact: v.tokens.every((t, i) => t === String(i + 1)), events: v.events.length,"
            " rows: document.querySelectorAll('#events .vrow').length, gap: window.__maxGap,"
            " gapless: v.events.every((e, i) => e.seq === i + 1)}; })()"
        )
        # And it holds every token once, in order, with only the rows in view in the DOM
        assert got["n"] == count
        assert got["exact"] is True
        assert got["events"] == count + 2
        assert got["gapless"] is True
        assert 0 < got["rows"] < 200, got
        # (generous bounds for a loaded machine: a frozen page misses them by far)
        assert slowest < 5, slowest
        assert got["gap"] < 5000, got
        # And scrolling to the middle shows the events there
        middle = await tab.eval(
            "(async () => { const box = document.querySelector('#events');"
            " box.scrollTop = box.scrollHeight / 2;"
            " await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"
            " return [...box.querySelectorAll('.vrow .seq')]"
            ".map(s => +s.textContent.slice(1)); })()"
        )
        assert middle, "rows in view"
        assert min(middle) < count // 2 < max(middle), middle[:3]


async def test_an_operator_retries_a_dead_letter_from_the_operations_view(
    api, client, store, redis_client, settings, worker_factory, tmp_path
):
    # Given a dead-lettered run, and an operator on the Operations view
    keys = Keys.from_settings(settings)
    run_id, w = await dead_letter_a_run(client, redis_client, keys, worker_factory)
    _, op_key = await store.users.create_key("root", operator=True)
    async with chromium(f"{api.url}/console", tmp_path / "profile") as page:
        tab = Tab(page.ws)
        await sign_in(tab, op_key)
        row = f"document.querySelector('#dead-letters button[aria-label=\"retry {run_id}\"]')"
        await go(tab, "#/ops", row)
        assert "failed" in await tab.eval("document.querySelector('#dead-letters').innerText")
        # When they press Retry
        await tab.eval(f"{row}.click(); true")
        # Then the letter goes, and the run runs again to success
        await tab.until(
            "document.querySelector('#dead-letters').innerText.includes('No dead letters')"
        )
        await wait_status(client, run_id, "succeeded", timeout=60)
    await w.close()


async def test_a_key_revoked_while_signed_in_sends_the_page_back_to_sign_in(
    api, store, settings, tmp_path
):
    # Given a user signed in to the console
    key_id, key = await store.users.create_key("carol")
    async with chromium(f"{api.url}/console", tmp_path / "profile") as page:
        tab = Tab(page.ws)
        await sign_in(tab, key)
        await tab.until("document.querySelector('main table')")
        # When the key is revoked and the page next asks the API for something
        assert await revoke_key(settings, key_id)
        await go(tab, "#/threads/t", "document.querySelector('#api-key')")
        # Then it forgets the key and asks for one, saying why
        assert "unauthorized" in await tab.eval("document.querySelector('[role=alert]').innerText")
        assert await tab.eval("sessionStorage.length") == 0
