"""Answers and log lines at the edge: a client that stops reading its event stream."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from structlog.testing import capture_logs

import api.subscription
from api.app import create_app
from api.server import server_options
from shared.config import Settings
from tests.conftest import free_port
from tests.helpers import submit, wait_for

BULKY = ("bulky=tests.agents:bulky",)


@pytest.fixture
async def edge_api() -> AsyncIterator[Callable[[Settings], Any]]:
    """In-process servers configured as `longrun api` configures uvicorn (its protocol)."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> str:
        port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
            **server_options(settings),
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server, task in servers:
            server.should_exit = True
            await task


async def test_a_client_that_stops_reading_its_stream_costs_one_info_line(
    edge_api, worker_factory, settings, api_key, caplog, monkeypatch
):
    monkeypatch.setattr(api.subscription, "SEND_TIMEOUT", 1.0)
    s = settings.with_(agent_modules=BULKY)
    url = await edge_api(s)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ) as c:
        # Given a run whose stream is megabytes long
        run_id = await submit(c, agent="bulky", params={"n": 4000, "size": 2000})
        await worker_factory(s)
        # And a client with a small receive buffer that asks for it and never reads
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", httpx.URL(url).port))
        caplog.set_level(logging.INFO)
        with capture_logs() as logs:
            sock.send(
                f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {api_key}\r\n\r\n".encode()
            )
            try:
                # When the server gives up on it
                async def dropped() -> bool:
                    return any(e["event"] == "stream_client_stopped_reading" for e in logs)

                await wait_for(dropped, timeout=30)
                # (and the server still answers others)
                assert (await c.get("/health")).status_code == 200
            finally:
                sock.close()
    # Then that cost one info line, and no error, no traceback
    assert [e for e in logs if e["event"] == "stream_client_stopped_reading"] == [
        {
            "event": "stream_client_stopped_reading",
            "log_level": "info",
            "run_id": run_id,
            "stalled_seconds": 1.0,
        }
    ]
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
