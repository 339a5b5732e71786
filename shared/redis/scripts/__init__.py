"""Every Lua script longrun runs in Redis: one `.lua` file each, in this folder, read once when
this module is imported. Each file opens with its contract (KEYS, ARGV, the reply).

Where they run: the run-level scripts (append, fence, renew, ack, ack_many, handoff, cancel,
enqueue) in `shared.redis.runs`, the admission scripts (bucket, take_slot, refresh_slot) in
`shared.redis.admission`, the queue's pull and rebuild, drop_idle_consumers and release in
`shared.redis.group`, breaker_cas in `shared.redis.breakers`, delay and take_due in
`shared.redis.delayed`. Redis caches a script by its SHA-1 after the first `SCRIPT LOAD`; calls
go by EVALSHA and load the script again when Redis answers NOSCRIPT (restarted, flushed).

On a Redis Cluster a script runs on one node, so the keys of each call share one hash slot:
a run's keys carry its id as a `{hash tag}`, a queue shard's keys its ready stream's name, the
delayed set and its hash share `{due}`, every other script takes one key
(`tests/test_cluster.py` checks every script against the keys its call sites pass).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Final


def _read(name: str) -> str:
    return (files(__name__) / f"{name}.lua").read_text(encoding="utf-8")


# File names (without `.lua`), in the order of the constants below.
NAMES: Final = (
    "append",
    "fence",
    "renew",
    "ack",
    "ack_many",
    "handoff",
    "cancel",
    "bucket",
    "take_slot",
    "refresh_slot",
    "drop_idle_consumers",
    "breaker_cas",
    "release",
    "delay",
    "take_due",
    "enqueue",
    "pull",
    "rebuild",
)
# File name -> source.
ALL: Final[dict[str, str]] = {name: _read(name) for name in NAMES}
(
    APPEND,
    FENCE,
    RENEW,
    ACK,
    ACK_MANY,
    HANDOFF,
    CANCEL,
    BUCKET,
    TAKE_SLOT,
    REFRESH_SLOT,
    DROP_IDLE_CONSUMERS,
    BREAKER_CAS,
    RELEASE,
    DELAY,
    TAKE_DUE,
    ENQUEUE,
    PULL,
    REBUILD,
) = ALL.values()
