"""Every Lua script longrun runs in Redis: one `.lua` file each, in this folder, read once when
this module is imported. Each file opens with its contract (KEYS, ARGV, the reply).

Where they run: the run-level scripts (append, fence, renew, ack, ack_many, handoff, cancel,
enqueue) in `shared.redis.runs`, the admission scripts (bucket, take_slot, refresh_slot) in
`shared.redis.admission`, the queue's pull and rebuild, drop_idle_consumers and release in
`shared.redis.group`, breaker_cas in `shared.redis.breakers`. Redis caches a script by its
SHA-1 after the first `SCRIPT LOAD`; calls go by EVALSHA and load the script again when Redis
answers NOSCRIPT (restarted, flushed).
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
    ENQUEUE,
    PULL,
    REBUILD,
) = ALL.values()
