"""Who may say what, checked on the source: every SQL statement lives in `shared/store/` (and
the migrations), every Redis command is sent from `shared/redis/`, so one folder holds
everything longrun asks of each server."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "worker", "shared", "cli")
REDIS_PACKAGE = ROOT / "shared" / "redis"
REDIS_MODULES = {"redis", "hiredis"}
# Names that hold a Redis client, a pipeline or a pub/sub by this code base's habits.
CLIENT_NAMES = {"redis", "pipe", "pipeline", "pubsub", "reader", "waker"}
# Calls whose result is a client (or a pipeline, a pub/sub of one).
CLIENT_MAKERS = {"create_redis", "blocking_pool_of", "pipeline", "pubsub", "from_url", "Redis"}


def _redis_command_names() -> set[str]:
    """Every public method of redis-py's asyncio client, its pipeline and its pub/sub."""
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline, PubSub

    names: set[str] = set()
    for cls in (aioredis.Redis, Pipeline, PubSub):
        names |= {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}
    return names


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if REDIS_PACKAGE not in path.parents:
                yield path


def _last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _mentions_redis(annotation: ast.expr | None) -> bool:
    """An annotation naming the client type (`Redis`, `aioredis.Redis`, `Redis | None`)."""
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    return any(_last_name(n) == "Redis" for n in ast.walk(annotation) if isinstance(n, ast.expr))


def _makes_client(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Call) and _last_name(value.func) in CLIENT_MAKERS


class _Bindings(ast.NodeVisitor):
    """Which names of a module hold a Redis client (annotated `Redis`, or made by a client
    factory, `.pipeline()` or `.pubsub()`), and which `self.` attributes are declared as
    something else."""

    def __init__(self) -> None:
        self.clients: set[str] = set()
        self.not_clients: set[str] = set()

    def visit_arg(self, node: ast.arg) -> None:
        if _mentions_redis(node.annotation):
            self.clients.add(node.arg)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        name = _last_name(node.target)
        if _mentions_redis(node.annotation) or _makes_client(node.value):
            self.clients.add(name)
        elif isinstance(node.target, ast.Attribute):
            self.not_clients.add(name)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if _makes_client(node.value):
            self.clients.update(_last_name(t) for t in node.targets)
        self.generic_visit(node)

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None and _makes_client(node.context_expr):
            self.clients.add(_last_name(node.optional_vars))
        self.generic_visit(node)


def _is_client(receiver: ast.expr, bindings: _Bindings) -> bool:
    name = _last_name(receiver)
    if isinstance(receiver, ast.Attribute) and name in bindings.not_clients:
        return False
    return name in bindings.clients or name in CLIENT_NAMES or "redis" in name.lower()


def redis_reach(source: str, where: str, commands: set[str]) -> list[str]:
    """Where a module imports redis-py, calls a Redis command on a client, or reaches through an
    object to its client (`x.r`)."""
    tree = ast.parse(source, where)
    bindings = _Bindings()
    bindings.visit(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{where}:{node.lineno} imports {a.name}"
                for a in node.names
                if a.name.split(".")[0] in REDIS_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in REDIS_MODULES:
                found.append(f"{where}:{node.lineno} imports {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            if node.func.attr in commands and _is_client(receiver, bindings):
                found.append(
                    f"{where}:{node.lineno} calls {_last_name(receiver)}.{node.func.attr}()"
                )
        elif isinstance(node, ast.Attribute) and node.attr == "r":
            found.append(f"{where}:{node.lineno} reaches through {_last_name(node.value)}.r")
    return found


def test_no_redis_command_outside_shared_redis() -> None:
    commands = _redis_command_names()
    offenders = [
        hit
        for path in _sources()
        for hit in redis_reach(path.read_text(), str(path.relative_to(ROOT)), commands)
    ]
    assert offenders == []


def test_the_redis_check_sees_each_way_of_reaching_redis() -> None:
    # Given a module that imports redis-py, sends a command, pipelines by hand and reaches
    # through an object to its client
    sample = (
        "import redis.asyncio as aioredis\n"
        "from redis.exceptions import ResponseError\n"
        "async def f(state, rio, store, client: Redis, rows):\n"
        "    await state.redis.xadd('k', {})\n"
        "    async with rio.r.pipeline() as p:\n"
        "        p.hincrby('c', 'n', 1)\n"
        "    await client.zrem('w', 'me')\n"
        "    made = create_redis(settings, 'cli')\n"
        "    await made.aclose()\n"
        "    await store.get_run('x')\n"
        "    await store.execute('SELECT 1')\n"
        "    return [r.get('status') for r in rows]\n"
    )
    # When the check reads it
    hits = redis_reach(sample, "sample.py", _redis_command_names())
    # Then each way is reported, and calls on other objects are not
    assert sorted(h.split(" ", 1)[1] for h in hits) == [
        "calls client.zrem()",
        "calls made.aclose()",
        "calls p.hincrby()",
        "calls redis.xadd()",
        "imports redis.asyncio",
        "imports redis.exceptions",
        "reaches through rio.r",
    ]


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
