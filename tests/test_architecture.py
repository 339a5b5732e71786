"""The shape the code base keeps: three packages and one direction (`api -> shared <- worker`,
`cli` on top of all three), and the status transition table, checked pair by pair."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.models import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    RunStatus,
    Transition,
    sources,
    transition,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "shared", "cli")
# Which of our packages each package may import.
ALLOWED = {
    "shared": {"shared"},
    "api": {"api", "shared"},
    "worker": {"worker", "shared"},
    "cli": {"cli", "api", "worker", "shared"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Our top-level packages a module imports, with the line (relative imports stay home)."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.add((top, node.lineno))
    return found


def violations() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for top, line in imported_packages(path):
                if top not in ALLOWED[package]:
                    out.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return out


def test_packages_import_only_downwards() -> None:
    assert violations() == []


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    # The checker itself can fail: a module in shared/ importing api/ is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom api.app import create_app\nfrom . import sibling\n")
    assert imported_packages(bad) == {("api", 2)}


# -- the transition table ------------------------------------------------------------------

# Every legal (from, move) -> to, written out independently of the table in shared/models.py.
LEGAL = {
    (RunStatus.QUEUED, Transition.CLAIM): RunStatus.RUNNING,
    (RunStatus.RUNNING, Transition.CLAIM): RunStatus.RUNNING,
    (RunStatus.RUNNING, Transition.REQUEUE): RunStatus.QUEUED,
    (RunStatus.QUEUED, Transition.REQUEUE): RunStatus.QUEUED,
    (RunStatus.RUNNING, Transition.SUCCEED): RunStatus.SUCCEEDED,
    (RunStatus.RUNNING, Transition.FAIL): RunStatus.FAILED,
    (RunStatus.QUEUED, Transition.FAIL): RunStatus.FAILED,
    (RunStatus.RUNNING, Transition.CANCEL): RunStatus.CANCELLED,
    (RunStatus.QUEUED, Transition.CANCEL): RunStatus.CANCELLED,
    (RunStatus.FAILED, Transition.RETRY): RunStatus.QUEUED,
    (RunStatus.RUNNING, Transition.WAIT): RunStatus.WAITING,
    (RunStatus.WAITING, Transition.RESUME): RunStatus.QUEUED,
    (RunStatus.WAITING, Transition.CANCEL): RunStatus.CANCELLED,
    (RunStatus.WAITING, Transition.FAIL): RunStatus.FAILED,
}
PAIRS = [(s, m) for s in RunStatus for m in Transition]


@pytest.mark.parametrize(("status", "move"), PAIRS, ids=[f"{s}-{m}" for s, m in PAIRS])
def test_every_status_and_move_pair_is_legal_or_refused(
    status: RunStatus, move: Transition
) -> None:
    if (status, move) in LEGAL:
        assert transition(status, move) is LEGAL[(status, move)]
        assert status in sources(move)
    else:
        with pytest.raises(IllegalTransition):
            transition(status, move)
        assert status not in sources(move)


def test_the_table_holds_nothing_beyond_the_legal_pairs() -> None:
    assert TRANSITIONS == LEGAL


def test_no_move_leaves_a_terminal_status_except_an_operator_retry_of_a_failure() -> None:
    for (status, move), _ in TRANSITIONS.items():
        if status in TERMINAL:
            assert (status, move) == (RunStatus.FAILED, Transition.RETRY)
    assert ACTIVE.isdisjoint(TERMINAL)
    assert set(RunStatus) == ACTIVE | TERMINAL
