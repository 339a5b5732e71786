"""`POST /runs`: one pipeline, two adapters, one renderer.

    route.py  FastAPI: parses; OpenAPI ──┐
                                         ├──> pipeline.submit ──> Outcome ──> render ──> 202/error
    lane.py   raw ASGI: parses cheaply ──┘         │
                                                   ├─ request    the body's checks, the agent and
                                                   │             its params, the Idempotency-Key
                                                   ├─ pipeline   first_step / after_group: grouped
                                                   │             or alone (a key's replay, admit,
                                                   │             thread mode, the locked count)
                                                   ├─ groups     admit + commit many at once
                                                   └─ enqueue    the queue entries; a row whose
                                                                 entry Redis refused goes (503)

The lane takes what it can parse without I/O (a JSON body `SubmitRun` accepts, a bearer token
known from the key cache or a JWT) and hands anything else, untouched, to the route: the
pipeline runs once per request, in whichever adapter took it.
"""
