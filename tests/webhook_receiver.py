"""A webhook receiver for tests: a real HTTP server (uvicorn, on 127.0.0.1) that verifies each
request's signature with the `standardwebhooks` library (the Standard Webhooks project's own
code, not ours), answers with scripted status codes (then 200), and can hold a request open
(until the sender gives up or dies). Tests await what arrives (`next`), never sleep for it."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.types import Receive, Scope, Send

from shared.config import Settings
from tests.conftest import Served, free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool  # the signature matched the secret, within the timestamp tolerance
    at: float  # when it arrived (unix seconds)

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def attempt_id(self) -> str:
        return self.headers["longrun-attempt-id"]


@dataclass
class Receiver:
    secret: str
    answers: list[int] = field(default_factory=list)  # status codes to give first, in order
    hold_next: int = 0  # how many of the next requests to hold open
    got: list[Received] = field(default_factory=list)
    _arrived: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = field(default_factory=free_port)
    _served: Served | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/longrun"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        got = Received(scope["path"], headers, body, verified, time.time())
        self.got.append(got)
        await self._arrived.put(got)
        if self.hold_next > 0:
            self.hold_next -= 1
            await self._release.wait()
        status = self.answers.pop(0) if self.answers else 200
        # A redirect points elsewhere on this server: a sender that followed it would show.
        headers = [(b"location", b"/elsewhere")] if 300 <= status < 400 else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"thanks" * 2000})

    async def next(self, timeout: float = 30.0) -> Received:
        return await asyncio.wait_for(self._arrived.get(), timeout)

    async def start(self) -> None:
        self._served = Served(self, self.port, lifespan="off")
        await self._served.start()

    async def stop(self) -> None:
        self._release.set()
        if self._served is not None:
            await self._served.stop()

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def fast_webhooks(settings: Settings, **changes: Any) -> Settings:
    """Webhooks may reach this machine (the receiver), and retry within a fraction of a
    second."""
    return settings.with_(
        webhook_allow_hosts=("127.0.0.1",),
        webhook_retry_base_seconds=0.05,
        webhook_retry_max_seconds=0.2,
        webhook_poll_seconds=0.05,
        webhook_timeout_seconds=5.0,
        **changes,
    )
