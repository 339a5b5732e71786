"""Who may say what: every SQL statement lives in `shared/store/` (and the migrations), so one
folder holds everything longrun asks of Postgres."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "worker", "shared", "cli")
# The places allowed to hold SQL: the store, and the schema and its migration runner.
SQL_HOMES = (ROOT / "shared" / "store", ROOT / "shared" / "migrations", ROOT / "shared/migrate.py")

# A string that opens with a statement keyword, or holds a `SELECT ... FROM`, `INSERT INTO`,
# `UPDATE x SET` or `DELETE FROM` anywhere (an f-string's pieces are checked one by one).
_STATEMENT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|EXPLAIN|CREATE|ALTER|DROP|TRUNCATE|LOCK)\s"
    r"|\bSELECT\b.+\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b",
    re.DOTALL,
)


def looks_like_sql(text: str) -> bool:
    return bool(_STATEMENT.search(text))


def _in_sql_home(path: Path) -> bool:
    return any(path == home or home in path.parents for home in SQL_HOMES)


def _docstrings(tree: ast.AST) -> list[ast.expr]:
    """Prose may say SELECT: the docstrings of modules, classes and functions are left out."""
    owners = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    return [
        node.body[0].value
        for node in ast.walk(tree)
        if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr)
    ]


def sql_outside_the_store() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _in_sql_home(path):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                )
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and looks_like_sql(node.value)
                ):
                    rel = path.relative_to(ROOT)
                    found.append(f"{rel}:{node.lineno}: {node.value.strip()[:60]!r}")
    return found


def test_what_looks_like_sql_is_told_apart_from_prose() -> None:
    assert looks_like_sql("SELECT 1")
    assert looks_like_sql("  UPDATE runs SET status = 'queued' WHERE run_id = $1")
    assert looks_like_sql("WITH req AS (SELECT 1) SELECT * FROM req")
    assert looks_like_sql("SELECT run_id, status FROM runs WHERE run_id = ANY($1::uuid[])")
    assert looks_like_sql("ON CONFLICT DO NOTHING; DELETE FROM run_events WHERE seq = $2")
    assert not looks_like_sql("Update the run when it ends")
    assert not looks_like_sql("select a model, then delete the old one from the list")
    assert not looks_like_sql("queued -> running")


def test_no_sql_outside_the_store() -> None:
    assert sql_outside_the_store() == []
