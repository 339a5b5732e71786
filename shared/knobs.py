"""How a setting is declared and read: `Knob` (its variable, concern, lower bound and meaning),
the parsers that turn an environment variable's text into its value (a malformed or
out-of-bounds value is a `ConfigError` naming the variable), and the configuration reference
rendered from the declarations. The declarations themselves are `shared.config.Settings`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigError

# The concerns a knob belongs to, in the order the docs list them.
GROUPS = (
    "servers",
    "http",
    "queue",
    "leases",
    "events",
    "pools",
    "limits",
    "admission",
    "auth",
    "llm",
    "agents",
    "webhooks",
    "schedules",
    "retention",
    "ops",
)


@dataclass(frozen=True)
class Knob:
    """How one setting is read: its variable, its concern, its lower bound, what it means, and
    its parser when its type's is not enough."""

    env: str
    group: str
    minimum: float | None
    help: str
    parse: Callable[[str, str], Any] | None = None


def knob(
    default: Any,
    env: str,
    group: str,
    help: str,
    *,
    minimum: float | None = None,
    parse: Callable[[str, str], Any] | None = None,
) -> Any:
    """A `Settings` field read from `env` (see the module docstring)."""
    assert group in GROUPS, group
    return field(default=default, metadata={"knob": Knob(env, group, minimum, help, parse)})


# A settings class's fields with how each is read (`shared.config.knobs`).
Knobs = Iterable[tuple[Field[Any], Knob]]


def read(knobs: Knobs, types: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The value of every knob set (not empty) in `env`, by field name (`types`: each field's
    type, which picks its parser unless the knob has its own)."""
    values: dict[str, Any] = {}
    for f, k in knobs:
        raw = env.get(k.env)
        if raw is None or raw == "":
            continue
        values[f.name] = parse(f.name, types[f.name], k, raw)
    return values


def written(knobs: Knobs, settings: Any) -> dict[str, str]:
    """The environment that `read` turns back into `settings` (every knob that is set)."""
    out: dict[str, str] = {}
    for f, k in knobs:
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            out[k.env] = ",".join(value)
        elif isinstance(value, bool):
            out[k.env] = "true" if value else "false"
        else:
            out[k.env] = str(value)
    return out


def parse(name: str, kind: Any, k: Knob, raw: str) -> Any:
    """`raw`, the text of `k`'s variable, as the value of setting `name` (of type `kind`)."""
    parser = k.parse or _PARSERS.get(kind)
    if parser is None:
        raise AssertionError(f"no parser for {name}: {kind}")  # a new type in the table
    value = parser(k.env, raw)
    if k.minimum is not None and isinstance(value, int | float) and value < k.minimum:
        bound = int(k.minimum) if isinstance(value, int) else k.minimum
        raise ConfigError(f"{k.env} must be >= {bound}, got {value}")
    return value


def _int(env: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{env} must be an integer, got {raw!r}") from None


def _float(env: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{env} must be a number, got {raw!r}") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(env: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{env} must be true or false, got {raw!r}")


def _csv(env: str, raw: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip())


def _text(env: str, raw: str) -> str:
    return raw


def base_url(env: str, raw: str) -> str:
    """An absolute http(s) URL without query or fragment, kept without its trailing slash."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{env} must be an http(s) URL like https://api.example.com, got {raw!r}")
    return raw.rstrip("/")


def choice(env: str, raw: str, choices: tuple[str, ...]) -> str:
    text = raw.strip().lower()
    if text not in choices:
        raise ConfigError(f"{env} must be one of {', '.join(choices)}, got {raw!r}")
    return text


def hosts(env: str, raw: str) -> tuple[str, ...]:
    return tuple(h.lower() for h in _csv(env, raw))


_PARSERS: dict[Any, Callable[[str, str], Any]] = {
    int: _int,
    float: _float,
    bool: _bool,
    bool | None: _bool,
    str: _text,
    str | None: _text,
    tuple[str, ...]: _csv,
}


def markdown(groups: Iterable[tuple[str, Knobs]]) -> str:
    """The configuration reference of these knobs, by concern (`shared.config.markdown`)."""
    lines = [
        "# Configuration",
        "",
        "Every knob longrun reads, by concern. Generated from `shared/config.py`, the one place",
        "each is declared (`python -m shared.config > docs/CONFIGURATION.md`). Values are read",
        "once, at start-up; a malformed or out-of-bounds value stops the process with a message",
        "naming the variable.",
    ]
    for group, rows in groups:
        lines += ["", f"## {group}", "", "| variable | default | minimum | meaning |"]
        lines.append("|---|---|---|---|")
        for f, k in rows:
            default = f.default
            shown = "unset" if default in (None, ()) else f"`{default}`"
            minimum = "" if k.minimum is None else f"{k.minimum:g}"
            lines.append(f"| `{k.env}` | {shown} | {minimum} | {k.help} |")
    return "\n".join(lines) + "\n"
