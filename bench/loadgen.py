"""HTTP load generators: `wrk` with a Lua POST script when installed, else a lean asyncio
HTTP/1.1 keep-alive client in a separate process (`python -m bench.loadgen`). Both return
{"generator", "requests", "rps", "p50_ms", "p99_ms", "max_ms", "errors"}; any non-2xx answer is
an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LUA = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
if os.getenv("BENCH_KEYED") == "1" then
  -- a fresh Idempotency-Key per request: "<run>-<thread>-<n>"
  local threads = 0
  function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
  end
  local n = 0
  local run = os.getenv("BENCH_KEY_PREFIX") or "k"
  function request()
    n = n + 1
    wrk.headers["Idempotency-Key"] = run .. "-" .. tostring(tid) .. "-" .. n
    return wrk.format()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None and os.environ.get("BENCH_NO_WRK") != "1"


def run_load(
    url: str,
    body: str,
    auth: str | None,
    *,
    connections: int,
    duration: float,
    threads: int = 2,
    keyed: bool = False,
) -> dict[str, Any]:
    """`keyed`: a fresh Idempotency-Key on every request (wrk only)."""
    if have_wrk():
        return _wrk(url, body, auth, connections, duration, threads, keyed)
    if keyed:
        raise RuntimeError("keyed load needs wrk")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            "--body",
            body,
            "--auth",
            auth or "",
            "--connections",
            str(connections),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _wrk(
    url: str,
    body: str,
    auth: str | None,
    connections: int,
    duration: float,
    threads: int,
    keyed: bool,
) -> dict[str, Any]:
    from bench.lib import out_dir

    script = out_dir() / "post.lua"
    script.write_text(LUA)
    env = {
        **os.environ,
        "BENCH_BODY": body,
        "BENCH_AUTH": auth or "",
        "BENCH_KEYED": "1" if keyed else "0",
        "BENCH_KEY_PREFIX": f"k{time.time_ns()}",
    }
    res = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        env=env,
        check=True,
    )
    line = next(x for x in res.stdout.splitlines() if x.startswith("BENCHJSON "))
    w = json.loads(line.removeprefix("BENCHJSON "))
    seconds = w["duration_us"] / 1e6
    return {
        "generator": f"wrk -t{threads} -c{connections}",
        "requests": w["requests"],
        "rps": w["requests"] / seconds,
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "errors": w["errors"],
    }


# -- the fallback generator, run in its own process ------------------------------------------


async def _conn_loop(
    host: str, port: int, request: bytes, until: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not status_line.split(b" ")[1].startswith(b"2"):
                errors[0] += 1
    finally:
        writer.close()


async def _main(url: str, body: str, auth: str, connections: int, duration: float) -> None:
    from urllib.parse import urlparse

    from bench.lib import percentile

    u = urlparse(url)
    head = [
        f"POST {u.path or '/'} HTTP/1.1",
        f"Host: {u.hostname}:{u.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body.encode())}",
    ]
    if auth:
        head.append(f"Authorization: {auth}")
    request = ("\r\n".join(head) + "\r\n\r\n" + body).encode()
    lat: list[float] = []
    errors = [0]
    t0 = time.perf_counter()
    until = t0 + duration
    await asyncio.gather(
        *(
            _conn_loop(u.hostname or "127.0.0.1", u.port or 80, request, until, lat, errors)
            for _ in range(connections)
        )
    )
    seconds = time.perf_counter() - t0
    ms = [x * 1000 for x in lat]
    print(
        json.dumps(
            {
                "generator": f"asyncio client -c{connections}",
                "requests": len(lat),
                "rps": len(lat) / seconds,
                "p50_ms": percentile(ms, 50),
                "p99_ms": percentile(ms, 99),
                "max_ms": max(ms),
                "errors": errors[0],
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--body", required=True)
    p.add_argument("--auth", default="")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    a = p.parse_args()
    try:
        import uvloop

        uvloop.run(_main(a.url, a.body, a.auth, a.connections, a.duration))
    except ImportError:
        asyncio.run(_main(a.url, a.body, a.auth, a.connections, a.duration))


async def post_many(
    url: str, body: str, auth: str | None, n: int, connections: int = 32
) -> dict[str, Any]:
    """POST `body` exactly n times over `connections` keep-alive connections (in this process);
    returns {"n", "seconds", "per_s", "errors", "run_ids"} (ids parsed from JSON answers)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    head = [
        f"POST {u.path or '/'} HTTP/1.1",
        f"Host: {u.hostname}:{u.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body.encode())}",
    ]
    if auth:
        head.append(f"Authorization: {auth}")
    request = ("\r\n".join(head) + "\r\n\r\n" + body).encode()
    left = [n]
    errors: list[str] = []
    ids: list[str] = []

    async def conn() -> None:
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                payload = await reader.readexactly(length) if length else b""
                if status_line.split(b" ")[1].startswith(b"2"):
                    ids.append(json.loads(payload).get("run_id", ""))
                else:
                    errors.append(f"{status_line!r} {payload[:200]!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(min(connections, n))))
    seconds = time.perf_counter() - t0
    return {"n": n, "seconds": seconds, "per_s": n / seconds, "errors": errors, "run_ids": ids}
