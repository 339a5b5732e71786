"""A run's webhook, for its owner: `GET /runs/{id}/webhooks` lists its deliveries (one per
terminal state) and their attempts (status, latency, answer code), and
`POST /runs/{id}/webhooks/redeliver` makes its latest delivery due again at once, under a new
retry schedule, with the same `webhook-id` (a receiver that already processed it may skip it).
Another user's run is the same 404 as a random id; the sending is the workers'
(`worker.webhooks`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.errors import ERROR_RESPONSES, ApiError, ErrorBody, JSONResp
from api.runs import RunIdPath, User, _owned_run, _state
from api.schemas import RedeliverAnswer, WebhookList, documented

router = APIRouter(responses=ERROR_RESPONSES)


@router.get(
    "/runs/{run_id}/webhooks",
    response_model=None,
    responses=documented(200, WebhookList, "the run's webhook deliveries and their attempts"),
)
async def list_webhooks(run_id: RunIdPath, request: Request, user: User) -> JSONResp:
    state = _state(request)
    run = await _owned_run(state, run_id, user)
    deliveries = await state.store.webhooks.deliveries(run.run_id, user)
    return JSONResp({"run_id": run.run_id, "webhook": run.webhook_url, "deliveries": deliveries})


@router.post(
    "/runs/{run_id}/webhooks/redeliver",
    status_code=202,
    response_model=None,
    responses={
        **documented(202, RedeliverAnswer, "the latest delivery is due again"),
        409: {"model": ErrorBody, "description": "no_delivery: nothing ended or paused it"},
    },
)
async def redeliver(run_id: RunIdPath, request: Request, user: User) -> JSONResp:
    state = _state(request)
    run = await _owned_run(state, run_id, user)
    delivery = await state.store.webhooks.redeliver(run.run_id, user)
    if delivery is None:
        why = "the run has no webhook" if run.webhook_url is None else "nothing ended or paused it"
        raise ApiError(409, "no_delivery", f"nothing to redeliver: {why}")
    body = {"run_id": run.run_id, "delivery_id": delivery, "state": "pending"}
    return JSONResp(body, status_code=202)
