"""The HTTP edge against a real `longrun api` process (uvicorn with httptools, as the CLI starts
it), driven by the clients people use: raw sockets, curl, urllib and httpx. Request sizes, the
bounds on a connection (head size and time, idle keep-alive, connections per process), and the
answers the connection layer makes itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from api.server import RefusalLog, head_size
from shared.config import Settings
from tests.helpers import assert_gapless_ticker, read_events, submit
from tests.test_ops_shutdown import ApiProc

KB = 1024
MAX_BODY = Settings.max_body_bytes
MAX_CHARS = Settings.max_input_chars
# Submits by the hundred from one user: admission must not be what answers.
BUSY_USER = {
    "LONGRUN_SUBMIT_RATE_PER_SECOND": "100000",
    "LONGRUN_SUBMIT_BURST": "100000",
    "LONGRUN_MAX_RUNS_IN_FLIGHT_PER_USER": "1000000",
}


def log_lines(api: ApiProc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in api.log().splitlines() if line.startswith("{")]


def port_of(api: ApiProc) -> int:
    return int(api.url.rsplit(":", 1)[1])


# -- a raw HTTP/1.1 client -----------------------------------------------------------------


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from `sock` (status 0: the connection ended without one)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return 0, {}, buf
        if not chunk:
            return 0, {}, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def post_raw(port: int, path: str, body: bytes, key: str) -> tuple[int, bytes]:
    """Head and body in one write, as clients do: they reach the server in the same segments."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        # refused before the body was read, the answer may still be there
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        status, _, answer = read_answer(sock)
        return status, answer


def post_curl(port: int, path: str, body: bytes, key: str, tmp: Path) -> tuple[int, bytes]:
    data = tmp / "body.json"
    data.write_bytes(body)
    out = tmp / "answer"
    done = subprocess.run(
        [
            "curl", "-s", "-o", str(out), "-w", "%{http_code}", "--data-binary", f"@{data}",
            "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {key}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    return int(done.stdout or 0), out.read_bytes() if out.exists() else b""


def post_urllib(port: int, path: str, body: bytes, key: str) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except urllib.error.URLError:
        return 0, b""


def post_httpx(port: int, path: str, body: bytes, key: str) -> tuple[int, bytes]:
    try:
        resp = httpx.post(
            f"http://127.0.0.1:{port}{path}",
            content=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            timeout=20,
        )
    except httpx.TransportError:
        return 0, b""
    return resp.status_code, resp.content


# -- request sizes -----------------------------------------------------------------------


def test_the_head_ends_at_its_blank_line_wherever_the_segments_split_it():
    head = b"POST /runs HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    whole = head + b"hello"
    assert head_size(b"", whole) == len(head)
    for cut in range(1, len(head)):
        first, rest = whole[:cut], whole[cut:]
        assert head_size(b"", first) == len(first)
        assert head_size(first[-3:], rest) == len(head) - cut, cut
    assert head_size(b"", b"GET / HTTP/1.1\r\nX-Pad: aaaa") == 27


def test_refusals_are_logged_once_per_bound_per_interval_with_their_count():
    log = RefusalLog(every=10)
    assert log.note("head_timeout", now=100) == 1
    assert log.note("head_timeout", now=101) is None
    assert log.note("max_connections", now=101) == 1  # each bound has its own interval
    assert log.note("head_timeout", now=105) is None
    assert log.note("head_timeout", now=110) == 3  # the two quiet ones and this one


def _body(chars: int) -> bytes:
    return json.dumps({"input": "a" * chars, "agent": "ticker"}).encode()


def _expected(body: bytes, chars: int) -> tuple[int, str | None]:
    if len(body) > MAX_BODY:
        return 413, "body_too_large"
    if chars > MAX_CHARS:
        return 422, "input_too_long"
    return 202, None


async def test_inputs_of_every_size_get_the_answer_their_size_deserves_from_every_client(
    api_proc, api_key, tmp_path
):
    # Given a real API process, and bodies whose head and first part of the body share TCP
    # segments (each client sends them that way some or all of the time)
    api = await api_proc(**BUSY_USER)
    port = port_of(api)
    overhead = len(_body(0))
    chars = [n * KB for n in (1, 16, 17, 20, 50, 190, 900)]
    chars += [MAX_BODY - overhead, MAX_BODY - overhead + 1]  # the body limit, and one past it
    chars += [5 * KB * KB]  # refused before it is read: the answer must still reach the client
    clients: dict[str, Callable[[bytes], tuple[int, bytes]]] = {
        "socket": lambda b: post_raw(port, "/runs", b, api_key),
        "curl": lambda b: post_curl(port, "/runs", b, api_key, tmp_path),
        "urllib": lambda b: post_urllib(port, "/runs", b, api_key),
        "httpx": lambda b: post_httpx(port, "/runs", b, api_key),
    }
    wrong: list[tuple[str, int, int, bytes]] = []
    # When every client sends every size, several times (the old failure depended on timing)
    for n in chars:
        body = _body(n)
        status, code = _expected(body, n)
        for name, post in clients.items():
            for _ in range(5):
                got, answer = await asyncio.to_thread(post, body)
                ok = got == status and (code is None or json.loads(answer)["error"] == code)
                if not ok:
                    wrong.append((name, n, got, answer[:120]))
    # Then each gets what its size deserves: 202 up to the input limit, 422 past it, 413
    # past the body limit; never 431
    assert wrong == []


async def test_a_head_over_the_limit_is_431_and_answers_from_the_parser_carry_a_request_id(
    api_proc,
):
    api = await api_proc(LONGRUN_MAX_HEADER_BYTES="4096")
    port = port_of(api)
    # Given a head just over the limit, sent one small piece at a time
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4096 + b"\r\n\r\n"
        for i in range(0, len(head), 100):
            try:
                sock.sendall(head[i : i + 100])
            except (BrokenPipeError, ConnectionResetError):
                break
        status, headers, body = read_answer(sock)
    # Then it is refused 431, in the API's error shape, with a request id
    assert status == 431
    assert json.loads(body)["error"] == "headers_too_large"
    assert json.loads(body)["request_id"] == headers["x-request-id"]
    # And a request that is not HTTP gets a JSON 400 with a request id too
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n")
        status, headers, body = read_answer(sock)
    assert status == 400
    assert json.loads(body)["error"] == "bad_request"
    assert headers["x-request-id"] == json.loads(body)["request_id"]
    # And a head just within the limit passes
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n")
        status, _, _ = read_answer(sock)
    assert status == 200


def _closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed `sock` (reading everything it sent), at most `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return time.monotonic() - start, got


# -- connection bounds ---------------------------------------------------------------------

QUICK_TIMERS = {"LONGRUN_HEAD_TIMEOUT_SECONDS": "1", "LONGRUN_KEEPALIVE_SECONDS": "1"}


def refusals(api: ApiProc, bound: str) -> list[dict[str, Any]]:
    return [
        line
        for line in log_lines(api)
        if line.get("event") == "connection_refused" and line.get("bound") == bound
    ]


async def test_silent_slow_and_idle_connections_are_closed_and_logged_once(api_proc):
    api = await api_proc(**QUICK_TIMERS)
    port = port_of(api)

    def connection_that_sends_nothing() -> float:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            took, got = _closed_after(sock, 8)
            assert got == b""
            return took

    def slowloris() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            start = time.monotonic()
            sock.setblocking(False)
            got = b""
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
                try:
                    sock.send(bytes([byte]))
                    got += sock.recv(65536)
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
                if got and got.endswith(b"}"):
                    break
                time.sleep(0.2)  # one byte every 0.2 s: the attack itself
            sock.setblocking(True)
            _, rest = _closed_after(sock, 8)
            return time.monotonic() - start, got + rest

    def idle_after_a_request() -> tuple[int, float]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = read_answer(sock)
            took, _ = _closed_after(sock, 8)
            return status, took

    # Given connections that send nothing, send a head one byte at a time, or go idle after
    # a request (several of each at once)
    silent = [asyncio.to_thread(connection_that_sends_nothing) for _ in range(3)]
    slow = [asyncio.to_thread(slowloris) for _ in range(3)]
    idle = [asyncio.to_thread(idle_after_a_request) for _ in range(3)]
    silent_took, slow_got, idle_got = await asyncio.gather(
        asyncio.gather(*silent), asyncio.gather(*slow), asyncio.gather(*idle)
    )
    # Then the silent ones are closed after the head timeout, without an answer
    assert all(0.8 < t < 4 for t in silent_took), silent_took
    # And the slow ones get a 408 once the head timeout has passed since their first byte
    for took, got in slow_got:
        assert got.startswith(b"HTTP/1.1 408"), got
        assert b'"error":"head_timeout"' in got
        assert b"x-request-id" in got
        assert 0.8 < took < 4, took
    # And the idle ones are closed after the keep-alive time
    for status, took in idle_got:
        assert status == 200
        assert 0.8 < took < 4, took
    # And each bound that refused is logged, once per burst (not once per connection)
    assert len(refusals(api, "head_timeout_idle")) == 1
    assert len(refusals(api, "head_timeout")) == 1
    assert refusals(api, "head_timeout")[0]["level"] == "warning"


async def test_past_the_connection_cap_new_connections_get_503_and_open_ones_are_served(
    api_proc,
):
    cap = 10
    api = await api_proc(
        LONGRUN_MAX_CONNECTIONS=str(cap),
        LONGRUN_HEAD_TIMEOUT_SECONDS="30",
        LONGRUN_KEEPALIVE_SECONDS="30",
    )
    port = port_of(api)

    def health(sock: socket.socket) -> int:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_answer(sock)[0]

    # Given a client holding a kept-alive connection, and idle connections up to the cap
    probe = socket.create_connection(("127.0.0.1", port), timeout=10)
    idle = []
    try:
        assert health(probe) == 200
        for _ in range(cap - 1):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert health(probe) == 200  # every one of them is accepted (and held)
        # When more connections arrive
        answers = []
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                answers.append(read_answer(extra))
        # Then each is answered 503 at once, before it sends anything, and closed
        for status, headers, body in answers:
            assert status == 503
            assert headers["retry-after"] == "1"
            assert json.loads(body)["error"] == "too_many_connections"
            assert json.loads(body)["request_id"] == headers["x-request-id"]
        # And the connection already open is served
        assert health(probe) == 200
        # And once the idle connections go, new connections are served again
        for sock in idle:
            sock.close()
        idle.clear()

        def fresh_health() -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                return health(sock)

        deadline = time.monotonic() + 5
        while (status := await asyncio.to_thread(fresh_health)) != 200:
            assert time.monotonic() < deadline, status
    finally:
        probe.close()
        for sock in idle:
            sock.close()
    # And the refusals were logged once, at warning level
    lines = refusals(api, "max_connections")
    assert len(lines) == 1
    assert lines[0]["level"] == "warning"


async def test_an_event_stream_silent_for_longer_than_every_timer_is_not_cut(
    api_proc, api_key, worker_factory
):
    api = await api_proc(**QUICK_TIMERS)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        # Given a stream open on a run that no worker runs yet: nothing flows on it
        run_id = await submit(client, agent="ticker", params={"count": 5, "interval_ms": 10})
        reading = asyncio.create_task(read_events(client, run_id))
        # When it stays silent for three times the head timeout and the keep-alive time
        await asyncio.sleep(3)  # the silence is the scenario
        assert not reading.done()
        await worker_factory()
        # Then it still delivers the whole run
        status, events = await asyncio.wait_for(reading, 20)
    assert status == 200
    assert_gapless_ticker(events, 5)
