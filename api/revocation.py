"""Ends the open event streams of revoked API keys.

Every stream opened with an API key (in the header, or through an `events_url` token that key
minted) is held here under the key's id, with the key epoch it was last found active under.
One task per API process sweeps them every POLL_SECONDS:

    sweep ─ GET key epoch (one Redis call, only while streams are held)
          ├─ due: streams whose epoch moved since their last check, or checked RECHECK_SECONDS ago
          ├─ one Postgres query: which of their key ids are still active
          └─ the others' streams stop (between two events) and end with a comment

`longrun keys revoke` commits the revocation, then bumps the epoch: a held stream of that key
ends within POLL_SECONDS plus one sweep, 2 seconds at most. If the bump never happened (Redis
unreachable from the CLI) or Redis does not answer here, the periodic re-check still ends it:
a stream may be opened on a cached look-up up to KEY_CACHE_SECONDS old, and is re-checked
RECHECK_SECONDS after it opened, so within 5 + 5 + 1 seconds plus one sweep (12 documented).
Postgres not answering delays the sweep; nothing is stopped on a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import structlog

from shared.redis.client import REDIS_DOWN

log = structlog.get_logger("longrun.api.revocation")

POLL_SECONDS = 1.0
RECHECK_SECONDS = 5.0  # = api.auth.KEY_CACHE_SECONDS: a revocation holds within it regardless

ActiveKeyIds = Callable[[Collection[str]], Awaitable[set[str]]]
KeyEpoch = Callable[[], Awaitable[bytes]]  # the API-key epoch now (`Admission.key_epoch`)


@dataclass(eq=False)
class Held:
    """One open stream of an API key."""

    key_id: str
    checked: bytes | None  # the key epoch the key was last found active under (None: unknown)
    at: float  # monotonic time of that check
    stop: Callable[[], None]
    revoked: bool = False  # set when the sweep stopped it


def due(held: Held, epoch: bytes | None, now: float, recheck_seconds: float) -> bool:
    """Whether a held stream's key must be looked up again: its last check is older than
    `recheck_seconds`, or the epoch (None: Redis did not answer) moved since that check."""
    if now - held.at >= recheck_seconds:
        return True
    if epoch is None:
        return False
    return held.checked is None or not hmac.compare_digest(held.checked, epoch)


class Revocations:
    def __init__(
        self,
        key_epoch: KeyEpoch,
        active_key_ids: ActiveKeyIds,
        poll_seconds: float = POLL_SECONDS,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.key_epoch = key_epoch
        self.active_key_ids = active_key_ids
        self.poll_seconds = poll_seconds
        self.recheck_seconds = recheck_seconds
        self.held: set[Held] = set()
        self._task: asyncio.Task[None] | None = None

    def hold(self, key_id: str, checked: bytes | None, stop: Callable[[], None]) -> Held:
        """Stop the stream (`stop`) once `key_id` is found revoked; `checked` is the epoch the
        key was found active under when the stream was authenticated."""
        held = Held(key_id, checked, time.monotonic(), stop)
        self.held.add(held)
        return held

    def let_go(self, held: Held) -> None:
        self.held.discard(held)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.sweep()
            except Exception as exc:  # Postgres away, a bug: the next sweep tries again
                log.warning("revocation_sweep_failed", error=type(exc).__name__)

    async def _epoch(self) -> bytes | None:
        try:
            return await self.key_epoch()
        except REDIS_DOWN:
            return None

    async def sweep(self) -> int:
        """One pass: stops the held streams whose key is no longer active; returns how many."""
        if not self.held:
            return 0
        epoch = await self._epoch()
        now = time.monotonic()
        stale = [h for h in self.held if due(h, epoch, now, self.recheck_seconds)]
        if not stale:
            return 0
        active = await self.active_key_ids({h.key_id for h in stale})
        stopped: set[str] = set()
        for h in stale:
            if h.key_id in active:
                h.checked, h.at = epoch, now
                continue
            h.revoked = True
            self.held.discard(h)
            h.stop()
            stopped.add(h.key_id)
        if stopped:
            n = sum(1 for h in stale if h.revoked)
            log.info("revoked_streams_ended", streams=n, key_ids=sorted(stopped))
            return n
        return 0


@dataclass(frozen=True)
class KeyGuard:
    """What an open stream needs to be ended when the API key behind it is revoked."""

    revocations: Revocations
    key_id: str
    checked: bytes | None

    def hold(self, stop: Callable[[], None]) -> Held:
        return self.revocations.hold(self.key_id, self.checked, stop)

    def let_go(self, held: Held) -> None:
        self.revocations.let_go(held)
