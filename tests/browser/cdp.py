"""A Chromium tab driven over the DevTools protocol, for the console's tests: evaluate script
(awaiting promises), record every request the page sends (`Network.requestWillBeSent`, with
its headers), and take screenshots. Events that arrive while a command waits are kept."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.helpers import wait_for


class Tab:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._id = 0
        self.requests: list[dict[str, Any]] = []  # {url, method, headers}
        self.problems: list[str] = []  # the page's exceptions and console errors

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        await self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("method") == "Network.requestWillBeSent":
                req = msg["params"]["request"]
                self.requests.append(
                    {"url": req["url"], "method": req["method"], "headers": req["headers"]}
                )
            elif msg.get("method") == "Network.requestWillBeSentExtraInfo":
                self.requests.append(
                    {"url": "", "method": "", "headers": msg["params"].get("headers", {})}
                )
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(msg["params"]["exceptionDetails"])[:1000])
            elif msg.get("method") == "Log.entryAdded":
                entry = msg["params"]["entry"]
                if entry.get("level") == "error":
                    self.problems.append(f"{entry.get('url')}: {entry.get('text')}")
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def eval(self, expression: str) -> Any:
        """The value of `expression` (awaited when it is a promise); raises on a page error."""
        got = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in got:
            raise RuntimeError(json.dumps(got["exceptionDetails"])[:2000])
        return got["result"].get("value")

    async def until(self, expression: str, timeout: float = 60) -> Any:
        """Waits until `expression` is truthy in the page; returns its value (true for a DOM
        node, which comes back by value as an empty object)."""

        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"

        async def truthy() -> Any:
            return await self.eval(probe) or None

        return await wait_for(truthy, timeout=timeout, interval=0.1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
