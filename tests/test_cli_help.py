"""`longrun --help` and every command's `--help` describe every option and state the exit
codes; `longrun --version` names the installed version."""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path

from cli.exits import EXIT_CODES, Exit
from cli.parser import build
from tests.cli_proc import cli_env, longrun_sync


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) of the command line, the top level first."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += commands(child, (*path, name))
    return found


def test_every_option_of_every_command_has_a_description() -> None:
    missing = [
        f"longrun {' '.join(path)} {action.option_strings or action.dest}"
        for path, parser in commands(build())
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_every_commands_help_lists_its_options_and_the_exit_codes() -> None:
    for path, parser in commands(build()):
        text = parser.format_help()  # what `--help` prints: the test below runs the real one
        assert EXIT_CODES in text, (path, text)
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, (path, option)


def test_the_installed_commands_help_is_the_parsers(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    found = dict(commands(build()))
    for path in [(), ("keys", "create"), ("submit",)]:
        done = longrun_sync(*path, "--help", env=env)
        assert done.code == 0, (path, done)
        assert _words(done.out) == _words(found[path].format_help()), path


def _words(text: str) -> list[str]:
    """The help's words (a terminal's width wraps the real command's lines differently)."""
    return text.split()


def test_the_exit_code_table_lists_every_code_the_commands_use() -> None:
    listed = {int(line.split()[0]) for line in EXIT_CODES.splitlines()[1:]}
    assert listed == {int(code) for code in Exit}


def test_longrun_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = longrun_sync("--version", env=cli_env(tmp_path))

    assert done.code == 0, done
    assert done.out == f"longrun {metadata.version('longrun')}\n"
