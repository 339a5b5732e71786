"""The JavaScript client (`clients/js/`) under Node's own test runner (`tests/js/`), against a
real stack: this test starts an API, a worker and a TCP proxy in front of the API, creates two
users' keys, and runs `node --test` with their addresses in the environment. The Node tests cut
the proxy's links through a small control port (`POST /cut`: drop every link, then accept new
ones). Skipped where Node is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.tcp_proxy import TcpProxy

NODE = shutil.which("node")
JS_TESTS = Path(__file__).with_name("js")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.timeout(300),
]


@contextlib.asynccontextmanager
async def cut_control(proxy: TcpProxy) -> AsyncIterator[str]:
    """An HTTP port on which `POST /cut` cuts every link of `proxy` and restores it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            ok = head.startswith(b"POST /cut ")
            if ok:
                proxy.cut()
                proxy.restore()
            status = b"200 OK" if ok else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_the_javascript_client_passes_its_node_tests_against_a_real_stack(
    api, api_key, store, worker
):
    # Given a stack, a proxy in front of it, and a second user
    _, bob_key = await store.users.create_key("bob")
    proxy = await TcpProxy("127.0.0.1", api.port).start()
    try:
        async with cut_control(proxy) as control:
            env = {
                **os.environ,
                "LONGRUN_URL": api.url,
                "LONGRUN_PROXY_URL": f"http://127.0.0.1:{proxy.port}",
                "LONGRUN_CONTROL": control,
                "LONGRUN_KEY": api_key,
                "LONGRUN_OTHER_KEY": bob_key,
            }
            # When Node's test runner runs the client's tests
            assert NODE is not None
            proc = await asyncio.create_subprocess_exec(
                NODE,
                "--test",
                "--test-reporter=spec",
                *sorted(str(p) for p in JS_TESTS.glob("*.test.mjs")),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    finally:
        await proxy.stop()
    # Then every one passes
    report = out.decode()
    assert proc.returncode == 0, report
    assert "# fail 0" in report or "fail 0" in report, report


TSC = JS_TESTS.parent.parent / "clients" / "js" / "node_modules" / ".bin" / "tsc"


@pytest.mark.skipif(
    not TSC.exists() and not os.environ.get("CI"),
    reason="typescript is not installed (npm install --prefix clients/js; CI does)",
)
async def test_the_typescript_declarations_compile_and_describe_the_client():
    # `clients/js/types-check.ts` calls the client as its users do, typed by longrun.d.ts
    proc = await asyncio.create_subprocess_exec(
        str(TSC),
        "-p",
        str(TSC.parents[2]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()
