"""The settings table: every knob declared once, settable from the environment, bounded, and
documented in docs/CONFIGURATION.md exactly as the table says."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from shared.config import GROUPS, Settings, knobs, markdown
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_a_knob_with_its_own_environment_variable() -> None:
    declared = [f.name for f, _ in knobs()]
    assert declared == [f.name for f in fields(Settings)]
    envs = [k.env for _, k in knobs()]
    assert len(envs) == len(set(envs)), "an environment variable names two knobs"
    assert all(k.group in GROUPS for _, k in knobs())
    assert all(k.help for _, k in knobs())


def test_an_empty_environment_gives_the_declared_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_every_knob_round_trips_through_the_environment() -> None:
    # Given settings where every knob differs from its default
    changed: dict[str, object] = {}
    for f, _ in knobs():
        default = f.default
        if isinstance(default, bool) or f.name == "log_json":
            changed[f.name] = not default
        elif isinstance(default, int):
            changed[f.name] = default + 7
        elif isinstance(default, float):
            changed[f.name] = default + 1.5
        elif isinstance(default, tuple):
            changed[f.name] = ("a=b:c", "d")
        elif f.name == "public_url":
            changed[f.name] = "https://api.example.com"
        elif f.name == "redis_mode":
            changed[f.name] = "cluster"
        else:
            changed[f.name] = f"value-of-{f.name}"
    s = Settings(**changed)  # type: ignore[arg-type]
    # When they are written to an environment and read back
    back = Settings.from_env(s.to_env())
    # Then nothing is lost
    assert back == s


def test_the_queue_follows_the_key_prefix_unless_named() -> None:
    assert Settings.from_env({"LONGRUN_KEY_PREFIX": "t1"}).queue == "t1:runs"
    env = {"LONGRUN_KEY_PREFIX": "t1", "LONGRUN_QUEUE": "q"}
    assert Settings.from_env(env).queue == "q"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LONGRUN_LEASE_SECONDS": "0.1"}, "LONGRUN_LEASE_SECONDS must be >= 0.3"),
        ({"LONGRUN_CONCURRENCY": "0"}, "LONGRUN_CONCURRENCY must be >= 1"),
        ({"LONGRUN_CONCURRENCY": "many"}, "LONGRUN_CONCURRENCY must be an integer"),
        ({"LONGRUN_PG_TIMEOUT": "soon"}, "LONGRUN_PG_TIMEOUT must be a number"),
        ({"LONGRUN_ACCEPT_RUNS": "maybe"}, "LONGRUN_ACCEPT_RUNS must be true or false"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_a_knob_once_missing_from_the_environment_is_settable() -> None:
    # Regression: the Redis connect timeout had a field but no variable.
    s = Settings.from_env({"LONGRUN_REDIS_CONNECT_TIMEOUT": "0.25"})
    assert s.redis_connect_timeout == 0.25


def test_the_configuration_reference_matches_the_table() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    assert doc == markdown(), "regenerate: python -m shared.config > docs/CONFIGURATION.md"
