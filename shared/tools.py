"""The tool registry, and the choice of a run's tools.

A deployment's tools are the built-ins (`calculator`, `clock`, `search_notes`), then tools from
entry points (group `longrun.tools`), then from `LONGRUN_TOOLS` ("name=package.module:attr" or
"package.module:attr", comma-separated); each reference names a `shared.llm.tools.Tool`, which
is registered under the reference's name (the tool's own without one). A later source replaces
an earlier tool of the same name. Every registration is checked as it is loaded (name, schema,
timeout: `shared.llm.tools.check_tool`), so a bad one stops the process with a ConfigError.

Every process loads the same registry at start-up: the API checks `params.tools` against it at
submit, a worker hands each run its tools as `ctx.tools`. The API thereby imports tool modules
too, which also proves they load before any run is accepted: keep heavy imports inside the
tool's function.

`params.tools`, for a run of any agent: the names of the registered tools the run may use, each
at most once. Absent (or null), the run may use the default set: every registered tool. `[]`:
none. Anything else is refused at submit (`tools_problem`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Collection, Mapping
from importlib.metadata import entry_points
from typing import Any

from shared.errors import ConfigError
from shared.llm.tools import InvalidTool, Tool, ToolRegistry, builtin_tools

ENTRY_POINT_GROUP = "longrun.tools"
PARAM = "tools"


def _import(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"tool reference {ref!r} must look like package.module:attr")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load tool {ref!r}: {exc}") from exc


def _register(registry: ToolRegistry, name: str | None, obj: Any, source: str) -> None:
    if isinstance(obj, Tool) and name and name != obj.name:
        obj = dataclasses.replace(obj, name=name)
    try:
        registry.add(obj)
    except InvalidTool as exc:
        raise ConfigError(f"tool {source!r}: {exc}") from None


def load_tools(configured: tuple[str, ...] = ()) -> ToolRegistry:
    """Every registered tool, checked; ConfigError on a registration that does not load or is
    not a valid tool. `configured`: the `LONGRUN_TOOLS` items (`Settings.tool_modules`)."""
    registry = ToolRegistry()
    for tool in builtin_tools():
        _register(registry, None, tool, f"built-in {tool.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load tool {ep.value!r}: {exc}") from exc
        _register(registry, ep.name, obj, ep.value)
    for item in configured:
        name, sep, ref = item.partition("=")
        if not sep:
            name, ref = "", item
        _register(registry, name.strip(), _import(ref.strip()), ref.strip())
    return registry


def tools_problem(registered: Collection[str], params: Mapping[str, Any]) -> str | None:
    """Why `params.tools` is not a choice among the `registered` tool names, or None. The one
    check of it: the API refuses such a run at submit (422 `bad_params`)."""
    names = params.get(PARAM)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return f"params.{PARAM} must be a list of tool names"
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return f"params.{PARAM} names {name!r} more than once"
        seen.add(name)
    unknown = [n for n in names if n not in registered]
    if unknown:
        known = ", ".join(sorted(registered)) or "none"
        return f"params.{PARAM} names unknown tools {unknown}; registered: {known}"
    return None


def run_tools(registry: ToolRegistry, params: Mapping[str, Any]) -> ToolRegistry:
    """The tools a run may use, in a registry of its own: the default set (all of `registry`),
    or those `params.tools` names. Never more than it names: a value the API would refuse gives
    none, and names this process does not have are left out (`tools_problem` tells an agent
    that cares)."""
    names = params.get(PARAM)
    if names is None:
        return registry.only(registry)
    if not isinstance(names, list):
        return ToolRegistry()
    return registry.only(n for n in names if isinstance(n, str))


__all__ = ["ENTRY_POINT_GROUP", "load_tools", "run_tools", "tools_problem"]
