"""`longrun submit TEXT [--follow]`: submit a run and print its events as they arrive,
reconnecting with Last-Event-ID when the connection drops. Exits 0 when the run succeeded,
1 when it failed, 3 when it was cancelled."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx

from cli.sse import aparse_lines

EXIT = {"done": 0, "error": 1, "cancelled": 3}


def run(args: Any) -> int:
    url = (args.url or os.environ.get("LONGRUN_URL") or "http://127.0.0.1:8000").rstrip("/")
    key = args.key or os.environ.get("LONGRUN_API_KEY")
    if not key:
        print("longrun submit: set LONGRUN_API_KEY or pass --key", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"input": args.text}
    if args.agent:
        body["agent"] = args.agent
    if args.thread:
        body["thread_id"] = args.thread
    if args.params:
        try:
            body["params"] = json.loads(args.params)
        except json.JSONDecodeError as exc:
            print(f"longrun submit: --params is not JSON: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(_submit(url, key, body, args.follow))


async def _submit(url: str, key: str, body: dict[str, Any], follow: bool) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0)) as client:
        resp = await client.post(f"{url}/runs", json=body, headers=headers)
        if resp.status_code != 202:
            print(f"submit refused: {resp.status_code} {resp.text}", file=sys.stderr)
            return 2
        run = resp.json()
        print(f"run {run['run_id']} queued", file=sys.stderr)
        if not follow:
            print(run["run_id"])
            return 0
        return await follow_events(client, f"{url}/runs/{run['run_id']}/events", headers)


def render(etype: str, data: dict[str, Any]) -> str | None:
    if etype == "token":
        return str(data.get("text", ""))
    if etype == "tool_start":
        return f"\n[tool {data.get('name')}({json.dumps(data.get('args'))})]"
    if etype == "tool_end":
        return f"[tool {'ok' if data.get('ok') else 'FAILED'}]\n"
    if etype == "resumed":
        return f"\n[resumed, attempt {data.get('attempt')}]\n"
    if etype == "error":
        return f"\n[error {data.get('code')}: {data.get('message')}]\n"
    if etype == "cancelled":
        return "\n[cancelled]\n"
    if etype == "done":
        return "\n"
    return None


async def follow_events(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    last_id: str | None = None
    backoff = 0.2
    while True:
        h = dict(headers)
        if last_id is not None:
            h["Last-Event-ID"] = last_id
        try:
            async with client.stream("GET", url, headers=h) as resp:
                if resp.status_code == 204:
                    return 0
                if resp.status_code != 200:
                    print(f"events refused: {resp.status_code}", file=sys.stderr)
                    return 2
                backoff = 0.2
                async for frame in aparse_lines(resp.aiter_lines()):
                    last_id = frame.id or last_id
                    data = json.loads(frame.data)
                    text = render(frame.event, data)
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                    if frame.event in EXIT:
                        return EXIT[frame.event]
        except (httpx.TransportError, httpx.RemoteProtocolError):
            print(f"\n[connection lost, resuming after {last_id}]", file=sys.stderr)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
