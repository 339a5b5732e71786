"""The webhook sender: a loop of each worker that claims due deliveries from Postgres (`FOR UPDATE
SKIP LOCKED`: workers share them without waiting on each other) and makes one attempt of each,
at most `webhook_concurrency` at once.

One attempt: the body (rendered once per message, `shared.webhooks.payload`), the target
resolved and checked again (`shared.webhooks.targets`: an address that stopped being public is
refused, and the connection goes to the address checked, with the URL's host in `Host` and in
TLS), the Standard Webhooks headers signed with the key's secret(s), one POST under one time
limit (`webhook_timeout_seconds`, the whole exchange), no redirect followed, at most
`MAX_ANSWER_BYTES` of the answer read, then the outcome recorded and the next step decided
(`shared.webhooks.schedule`).

At least once, through crashes: a claim starts the attempt in Postgres and leases the delivery
past the attempt's time limit. A worker that dies mid-attempt leaves its attempt `sending`;
the delivery is due again when the lease ends and another worker makes a new attempt (a new
`longrun-attempt-id`, the same `webhook-id`). Each attempt is sent once.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import structlog

from shared.config import Settings
from shared.errors import InvalidWebhook, Unavailable
from shared.store import Store
from shared.store.webhooks import Claimed, Outcome
from shared.webhooks import payload, signing, targets
from shared.webhooks.schedule import Policy, retry_after, verdict

log = structlog.get_logger("longrun.webhooks")

MAX_ANSWER_BYTES = 4096
USER_AGENT = "longrun-webhooks/1"
# A claim's lease past the attempt's own limit: the resolution's limit and a margin.
LEASE_MARGIN_SECONDS = targets.RESOLVE_TIMEOUT_SECONDS + 1.0


class Sender:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.policy = Policy.of(settings)
        self.timeout = settings.webhook_timeout_seconds
        self.lease = self.timeout + LEASE_MARGIN_SECONDS
        self.allow = settings.webhook_allow_hosts

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and send until `stopping`, then let the attempts in flight end within their
        time limit; cancelled ones (the worker closing) are claimed again when their leases
        end."""
        slots = self.settings.webhook_concurrency
        if slots == 0:
            return
        tasks: set[asyncio.Task[None]] = set()
        # trust_env off: no proxy or .netrc from the environment sees a webhook.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            try:
                while not stopping.is_set():
                    free = slots - len(tasks)
                    claimed = await self._claim(free)
                    for c in claimed:
                        task = asyncio.create_task(self._attempt(client, c))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    # A full claim: more may be due, so claim again as soon as a slot frees.
                    busy = bool(claimed) and len(claimed) == free
                    await self._pause(stopping, set(tasks) if busy else set())
                if tasks:  # stopping: the attempts in flight may end (each is time-limited)
                    await asyncio.wait(set(tasks), timeout=self.timeout)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim(self, free: int) -> list[Claimed]:
        """Due deliveries for the free slots; none while Postgres is away (the attempts in
        flight go on)."""
        if free <= 0:
            return []
        try:
            return await self.store.webhooks.claim_due(free, self.lease)
        except Unavailable:
            log.warning("webhook_claim_failed")
            return []

    async def _pause(self, stopping: asyncio.Event, tasks: set[asyncio.Task[None]]) -> None:
        """Until the poll interval passes, the worker stops, or one of `tasks` ends."""
        waiter = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait(
                {waiter, *tasks},
                timeout=self.settings.webhook_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()

    async def _attempt(self, client: httpx.AsyncClient, c: Claimed) -> None:
        structlog.contextvars.bind_contextvars(run_id=c.run.run_id, webhook_id=c.delivery_id)
        try:
            body = c.payload or await self.store.webhooks.keep_payload(
                c.delivery_id, payload.body(c.run, c.event_type, self.settings.public_url)
            )
            outcome, hint = await self._send(client, c, body)
            elapsed = c.elapsed + (outcome.latency_ms or 0.0) / 1000
            jitter = random.random()  # noqa: S311  (spreads retries; nothing secret)
            v = verdict(self.policy, outcome.code, c.schedule_attempt, elapsed, jitter, hint)
            await self.store.webhooks.record(c, outcome, v.state, v.delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres away: the lease ends and another attempt follows
            log.warning("webhook_attempt_unrecorded", error=type(exc).__name__)
            return
        log.info(
            "webhook_attempt",
            attempt=c.attempt,
            code=outcome.code,
            error=outcome.error,
            state=str(v.state),
            reason=v.reason,
        )

    async def _send(
        self, client: httpx.AsyncClient, c: Claimed, body: bytes
    ) -> tuple[Outcome, float | None]:
        """One POST; the outcome and the answer's `Retry-After` (seconds), if any."""
        if c.secret is None or c.run.webhook_url is None:
            return Outcome(None, None, "no_secret"), None
        try:
            target = targets.parse(c.run.webhook_url, self.allow)
            ips = await targets.resolve(target, self.allow)
        except InvalidWebhook as exc:
            return Outcome(None, None, f"refused_target: {exc.detail}"), None
        keys = signing.signing_secrets(c.secret, c.previous_secret, c.rotated_at, c.now)
        headers = {
            **signing.headers(keys, c.delivery_id, int(time.time()), body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": target.host_header,
            "longrun-attempt-id": c.attempt_id,
            "longrun-attempt": str(c.attempt),
        }
        # TLS checks the certificate against the URL's host, not the address connected to.
        tls_name = targets.literal_ip(target.host) is None and target.scheme == "https"
        extensions = {"sni_hostname": target.host} if tls_name else {}
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                request = client.build_request(
                    "POST",
                    target.pinned(ips[0]),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                )
                response = await client.send(request, stream=True)
                try:
                    await _read_some(response, MAX_ANSWER_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            return Outcome(None, _ms(start), "timeout"), None
        except httpx.HTTPError as exc:
            return Outcome(None, _ms(start), type(exc).__name__), None
        code = response.status_code
        error = None if 200 <= code < 300 else f"answered {code}"
        return Outcome(code, _ms(start), error), retry_after(response.headers.get("retry-after"))


async def _read_some(response: httpx.Response, limit: int) -> None:
    """Read at most about `limit` bytes of the answer (as sent: no decompression), then stop."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen >= limit:
            return


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
