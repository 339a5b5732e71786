"""A submit's webhook, checked before anything is written: the caller must be able to sign it
(an API key with a webhook secret: a JWT caller has no key, so no secret), and its target must
be a public address (`shared.webhooks.targets`: resolved, so this is the one step of a submit's
checks that does I/O). Every refusal is a 422."""

from __future__ import annotations

from api.auth import Principal
from api.state import AppState
from shared.errors import InvalidWebhook
from shared.webhooks import targets


async def check_webhook(state: AppState, who: Principal, url: str) -> None:
    if who.key_id is None:
        raise InvalidWebhook(
            "webhooks are signed with an API key's secret: submit with an API key to ask for one"
        )
    await targets.checked(url, state.settings.webhook_allow_hosts)
    if not await state.store.users.signs_webhooks(who.key_id):
        raise InvalidWebhook(
            "this API key has no webhook secret: `longrun keys rotate-webhook-secret KEY_ID` "
            "gives it one"
        )
