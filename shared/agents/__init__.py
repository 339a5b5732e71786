"""The agent registry: built-in agents, plus user agents from entry points (group
`longrun.agents`) and from `LONGRUN_AGENTS` ("name=package.module:attr", comma-separated)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from shared.agents.base import Agent, RunContext
from shared.errors import ConfigError

ENTRY_POINT_GROUP = "longrun.agents"
DEFAULT_AGENT = "chat"


def builtin_agents() -> dict[str, Agent]:
    from shared.agents.chat import chat
    from shared.agents.ticker import ticker

    return {"ticker": ticker, "chat": chat}


def _load_ref(ref: str) -> Agent:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"agent reference {ref!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
        agent: Agent = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent {ref!r}: {exc}") from exc
    return agent


def load_agents(configured: tuple[str, ...] = ()) -> dict[str, Agent]:
    """All agents by name. Later sources override earlier ones: built-ins, entry points, config."""
    agents = builtin_agents()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        agents[ep.name] = ep.load()
    for item in configured:
        name, sep, ref = item.partition("=")
        if not sep:
            ref = item
            name = item.rpartition(":")[2]
        agents[name.strip()] = _load_ref(ref.strip())
    return agents


__all__ = ["DEFAULT_AGENT", "Agent", "RunContext", "load_agents"]
