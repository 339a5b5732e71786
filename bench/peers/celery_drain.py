"""Celery peer (run with bench/.envs/celery): enqueue N no-op tasks with `.delay()`, then drain
them with one worker (`--pool=solo` by default). Prints one JSON object. Everything lives under a
unique broker key prefix, deleted after.

usage: python celery_drain.py N PREFIX [--pool solo|prefork|threads] [--concurrency C]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

args = argparse.ArgumentParser()
args.add_argument("n", type=int)
args.add_argument("prefix")
args.add_argument("--pool", default="solo")
args.add_argument("--concurrency", type=int, default=1)
opts = args.parse_args()
os.environ["BENCH_CELERY_PREFIX"] = opts.prefix
os.environ["BENCH_N"] = str(opts.n)

import redis  # noqa: E402

from bench.peers.celery_app import app, noop  # noqa: E402

r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
times = Path(tempfile.mkdtemp()) / "times.json"
try:
    t0 = time.perf_counter()
    for _ in range(opts.n):
        noop.delay()
    enqueue_s = time.perf_counter() - t0
    env = {**os.environ, "BENCH_CELERY_TIMES": str(times)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.peers.celery_app",
            "worker",
            f"--pool={opts.pool}",
            f"--concurrency={opts.concurrency}",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not times.exists() and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.02)
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(5)
    if not times.exists():
        err = worker.stderr.read().decode()[-2000:] if worker.stderr else ""
        raise SystemExit(f"celery worker did not finish {opts.n} tasks:\n{err}")
    t = json.loads(times.read_text())
    drain_s = t["last"] - t["first"]
    print(
        json.dumps(
            {
                "system": f"celery {opts.pool}"
                + (f" -c{opts.concurrency}" if opts.pool != "solo" else ""),
                "n": opts.n,
                "done": t["done"],
                "enqueue_per_s": opts.n / enqueue_s,
                "drain_s": drain_s,
                "drain_per_s": t["done"] / drain_s if drain_s else None,
            }
        )
    )
finally:
    app.close()
    keys = list(r.scan_iter(match=f"{opts.prefix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()
