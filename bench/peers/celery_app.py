"""Celery peer app (bench/.envs/celery): a no-op task on a Redis broker under a unique key
prefix. The worker process times itself through task signals: first task start to the N-th task
end, written as JSON to $BENCH_CELERY_TIMES when the N-th task finishes."""

from __future__ import annotations

import json
import os
import time

from celery import Celery
from celery.signals import task_postrun, task_prerun

app = Celery("bench_peer", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.broker_transport_options = {"global_keyprefix": os.environ.get("BENCH_CELERY_PREFIX", "")}
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True

_state = {"first": 0.0, "done": 0}
_N = int(os.environ.get("BENCH_N", "0"))


@app.task(name="noop")
def noop() -> None:
    return None


@task_prerun.connect
def _start(**_: object) -> None:
    if not _state["first"]:
        _state["first"] = time.time()


@task_postrun.connect
def _end(**_: object) -> None:
    _state["done"] += 1
    if _state["done"] == _N:
        with open(os.environ["BENCH_CELERY_TIMES"], "w") as f:
            json.dump({"first": _state["first"], "last": time.time(), "done": _N}, f)
