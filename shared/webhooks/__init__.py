"""Signed webhooks, the pure parts: the Standard Webhooks signature (`signing`), a target URL's
checks against server-side request forgery (`targets`), the retry schedule (`schedule`) and
the body sent (`payload`). The deliveries' rows are in `shared.store.webhooks`; the sender is
`worker.webhooks`; the endpoints are `api.webhooks`."""
