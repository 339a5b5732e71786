"""Benchmark 4, LangGraph: `langgraph dev` (in-memory runtime, one process, a one-node graph,
offline) against longrun (one API and one worker process, ticker count=1 interval 0), same run.

Per repeat, 200 runs: create them with 16 requests in flight (LangGraph: one fresh thread each,
`POST /threads/{id}/runs` with stream_mode ["values"] and stream_resumable; longrun: `POST /runs`),
then follow all 200 streams at once to their end. Reported: create runs/s, create p50/p99,
end-to-end runs/s (first create -> last stream done), create->done p50/p99, and the ratios.
Every run is checked to have ended successfully. A fresh httpx client per repeat (a pool still
holding 200 finished streams slows later requests: BASELINES.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.lib import (
    PEERS,
    Proc,
    free_port,
    latency_ms,
    median,
    parser,
    peer_python,
    print_table,
    ratio,
    record,
    run_async,
    tool,
    wait_http,
)
from bench.loadgen import have_wrk, run_load
from bench.stack import Stack, longrun_stack

IN_FLIGHT = 16
# Creates under wrk: the httpx client above binds first (a bare FastAPI 202 answers it only
# ~400-550/s here), so the create rates it reports compare clients more than servers.
WRK_CONNECTIONS, WRK_SECONDS = 64, 5.0
LONGRUN_BODY = '{"input": "wrk", "agent": "ticker", "params": {"count": 1, "interval_ms": 0}}'
LANGGRAPH_BODY = '{"assistant_id": "agent", "input": {"input": "wrk"}}'


async def _bounded(n: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _drain_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[float, str]:
    last_event = ""
    async with client.stream("GET", url, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                last_event = line[6:].strip()
    return time.perf_counter(), last_event


def _summary(
    n: int, creates: list[tuple[float, float]], dones: list[float], t_first: float
) -> dict[str, Any]:
    create_span = max(c[1] for c in creates) - t_first
    e2e_span = max(dones) - t_first
    return {
        "n": n,
        "create_per_s": n / create_span,
        "create": latency_ms([e - s for s, e in creates]),
        "e2e_per_s": n / e2e_span,
        "create_to_done": latency_ms([d - s for (s, _), d in zip(creates, dones, strict=True)]),
    }


async def langgraph_round(port: int, n: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=n + IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        threads = await _bounded(n, lambda i: client.post("/threads", json={}))
        threads_per_s = n / (time.perf_counter() - t0)
        tids = [t.json()["thread_id"] for t in threads]

        async def create(i: int) -> tuple[float, float, str]:
            s = time.perf_counter()
            r = await client.post(
                f"/threads/{tids[i]}/runs",
                json={
                    "assistant_id": "agent",
                    "input": {"input": f"run{i}"},
                    "stream_mode": ["values"],
                    "stream_resumable": True,
                },
            )
            r.raise_for_status()
            return s, time.perf_counter(), r.json()["run_id"]

        t_first = time.perf_counter()
        made = await _bounded(n, create)
        streams = await asyncio.gather(
            *(
                _drain_stream(client, f"/threads/{tids[i]}/runs/{m[2]}/stream", {})
                for i, m in enumerate(made)
            )
        )
        finals = await _bounded(n, lambda i: client.get(f"/threads/{tids[i]}/runs/{made[i][2]}"))
        bad = [f.json().get("status") for f in finals if f.json().get("status") != "success"]
        if bad:
            raise RuntimeError(f"{len(bad)} LangGraph runs did not succeed: {bad[:3]}")
    out = _summary(n, [(m[0], m[1]) for m in made], [s[0] for s in streams], t_first)
    return {"threads_per_s": threads_per_s, **out}


async def longrun_round(st: Stack, n: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n + IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(
        base_url=st.base_url, timeout=60, limits=limits, headers=st.auth
    ) as client:

        async def create(i: int) -> tuple[float, float, str]:
            s = time.perf_counter()
            r = await client.post(
                "/runs",
                json={
                    "input": f"run{i}",
                    "agent": "ticker",
                    "params": {"count": 1, "interval_ms": 0},
                },
            )
            if r.status_code != 202:
                raise RuntimeError(f"POST /runs answered {r.status_code}: {r.text[:200]}")
            return s, time.perf_counter(), r.json()["run_id"]

        t_first = time.perf_counter()
        made = await _bounded(n, create)
        streams = await asyncio.gather(
            *(_drain_stream(client, f"/runs/{m[2]}/events", {}) for m in made)
        )
    bad = [s[1] for s in streams if s[1] != "done"]
    if bad:
        raise RuntimeError(f"{len(bad)} longrun runs did not end with done: {bad[:3]}")
    return _summary(n, [(m[0], m[1]) for m in made], [s[0] for s in streams], t_first)


def start_langgraph(workdir: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc(
        "langgraph-dev",
        [
            tool("langgraph", "langgraph"),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            "langgraph.json",
            "--server-log-level",
            "WARNING",
        ],
        env={
            "LANGSMITH_TRACING": "false",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "PATH": f"{Path(tool('langgraph', 'python')).parent}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": "",
        },
        cwd=workdir,
    ).start()
    wait_http(f"http://127.0.0.1:{port}/ok", proc, timeout=120)
    return proc, port


async def main(smoke: bool, skip_peers: bool) -> dict[str, Any]:
    n, repeats = (5, 1) if smoke else (200, 3)
    rounds: list[dict[str, Any]] = []
    wrk: dict[str, dict[str, Any]] = {}
    have_peer = not skip_peers and peer_python("langgraph") is not None
    if not have_peer and not skip_peers:
        print("(peer langgraph skipped: run bench/setup_peers.sh langgraph)")
    workdir = Path(tempfile.mkdtemp(prefix="lrbench_lg_"))
    lg: Proc | None = None
    try:
        if have_peer:
            # `langgraph dev` pickles its state into <cwd>/.langgraph_api: run from a scratch copy.
            shutil.copytree(PEERS / "langgraph_peer", workdir / "peer")
            lg, lg_port = start_langgraph(workdir / "peer")
            await langgraph_round(lg_port, min(n, 20))  # warm-up
        async with longrun_stack() as st:
            st.start_workers(1)
            await longrun_round(st, min(n, 20))
            for _ in range(repeats):
                rnd = {"longrun": await longrun_round(st, n)}
                if lg is not None:
                    rnd["langgraph dev"] = await langgraph_round(lg_port, n)
                rounds.append(rnd)
            if have_wrk():
                # Each system executes what it accepts meanwhile (longrun: one worker process;
                # LangGraph: its in-memory runtime, in the server's process).
                seconds = 1.0 if smoke else WRK_SECONDS
                wrk["longrun POST /runs"] = run_load(
                    f"{st.base_url}/runs",
                    LONGRUN_BODY,
                    st.auth["Authorization"],
                    connections=WRK_CONNECTIONS,
                    duration=seconds,
                )
                if lg is not None:
                    wrk["langgraph dev POST /runs (stateless)"] = run_load(
                        f"http://127.0.0.1:{lg_port}/runs",
                        LANGGRAPH_BODY,
                        None,
                        connections=WRK_CONNECTIONS,
                        duration=seconds,
                    )
    finally:
        if lg is not None:
            lg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {**summarize(rounds), "wrk": summarize_wrk(wrk)}


def summarize_wrk(wrk: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not wrk:
        return {}
    print_table(
        f"creates under wrk -c{WRK_CONNECTIONS} for {WRK_SECONDS:g} s, each system executing them",
        ["endpoint", "req/s", "p50 ms", "p99 ms", "errors"],
        [[k, v["rps"], v["p50_ms"], v["p99_ms"], v["errors"]] for k, v in wrk.items()],
    )
    names = list(wrk)
    out: dict[str, Any] = {"runs": wrk}
    if len(names) == 2:
        out["create_ratio"] = ratio(wrk[names[0]]["rps"], wrk[names[1]]["rps"])
        print(f"longrun / langgraph dev creates under wrk: {out['create_ratio']}x (goal >= 5)")
    return out


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(rounds[0])
    med = {
        k: {
            "create_per_s": median(r[k]["create_per_s"] for r in rounds),
            "create_p50_ms": median(r[k]["create"]["p50_ms"] for r in rounds),
            "create_p99_ms": median(r[k]["create"]["p99_ms"] for r in rounds),
            "e2e_per_s": median(r[k]["e2e_per_s"] for r in rounds),
            "done_p50_ms": median(r[k]["create_to_done"]["p50_ms"] for r in rounds),
            "done_p99_ms": median(r[k]["create_to_done"]["p99_ms"] for r in rounds),
        }
        for k in names
    }
    ratios = {}
    if "langgraph dev" in names:
        ratios = {
            m: median(ratio(r["longrun"][m], r["langgraph dev"][m]) for r in rounds)
            for m in ("create_per_s", "e2e_per_s")
        }
    cols = [
        "create_per_s",
        "create_p50_ms",
        "create_p99_ms",
        "e2e_per_s",
        "done_p50_ms",
        "done_p99_ms",
    ]
    print_table(
        f"LangGraph dev vs longrun: {rounds[0]['longrun']['n']} runs, {IN_FLIGHT} creates "
        f"in flight, then all streams followed; median of {len(rounds)}",
        [
            "system",
            "create runs/s",
            "create p50 ms",
            "create p99 ms",
            "end-to-end runs/s",
            "create->done p50 ms",
            "p99 ms",
        ],
        [[k, *(med[k][c] for c in cols)] for k in names],
    )
    if ratios:
        print(
            f"longrun / langgraph dev: create {ratios['create_per_s']}x (goal >= 5), "
            f"end-to-end {ratios['e2e_per_s']}x"
        )
    return {"rounds": rounds, "median": med, "ratios": ratios}


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    record("langgraph", run_async(main(args.smoke, args.skip_peers)), smoke=args.smoke)
