"""The production agent loop and everything it talks to, each behind a small seam.

`loop` drives the run (events, tools, budgets, checkpoints, cancellation) over `state` (what a
run remembers and checkpoints); `model` is the seam a model client plugs into
(`anthropic_model` for the real SDK, `scripted` for the offline and test models); `retry`,
`pricing`, `budget` and `breaker` hold pure decisions; `tools` and `schema` define a tool,
run one call and check its arguments (which tools a deployment registers and a run may use is
`shared.tools`); `cancel` races waits against a run's cancel flag;
`breaker_store` is the only module here that touches Redis; `services` wires one process's
clients together for `shared.agents.chat`.
"""
