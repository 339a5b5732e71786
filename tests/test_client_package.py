"""The Python SDK as a package (clients/python, `longrun-client`): its own distribution, versioned,
depending on httpx and httpx-sse only and importing nothing of the server; and its decisions
(retries, backoff, where a stream stands) as pure functions, checked without I/O.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import longrun_client
import pytest
from httpx_sse import ServerSentEvent
from longrun_client import errors
from longrun_client._policy import Cursor, Reconnect, backoff, reopen_delay, retry_delay
from longrun_client.models import DoneEvent, Event, TokenEvent, parse_event

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
SERVER_PACKAGES = {"api", "worker", "shared", "cli", "tests", "bench"}
ALLOWED_IMPORTS = {"httpx", "httpx_sse", "longrun_client"}


def test_the_client_is_its_own_distribution_depending_on_httpx_and_httpx_sse_only() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]

    assert project["name"] == "longrun-client"
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names == {"httpx", "httpx-sse"}
    assert project["version"] == longrun_client.__version__


def test_the_client_imports_only_the_standard_library_httpx_and_httpx_sse() -> None:
    found: set[str] = set()
    for path in (CLIENT / "longrun_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    outside = {m for m in found - ALLOWED_IMPORTS if m not in sys.stdlib_module_names}
    assert outside == set()


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    code = (
        "import sys, longrun_client\n"
        "from longrun_client import Client, AsyncClient\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(CLIENT)!r})\n{code}"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    loaded = set(ast.literal_eval(out))
    assert loaded & (SERVER_PACKAGES | {"fastapi", "redis", "asyncpg", "starlette"}) == set()
    assert {"httpx", "httpx_sse", "longrun_client"} <= loaded


def test_the_client_works_on_a_path_holding_only_its_dependencies(tmp_path: Path) -> None:
    """As if installed alone: a Python without site-packages whose path holds the client and
    the packages of its dependency closure (httpx, httpx-sse and theirs), nothing else."""
    from importlib import metadata

    from tests.test_deploy import dependency_closure

    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    wanted = dependency_closure(project["dependencies"])
    for name, dists in metadata.packages_distributions().items():
        if {d.lower().replace("_", "-") for d in dists} & wanted:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin not in (None, "built-in", "frozen"):
                source = Path(spec.origin)
                source = source.parent if source.name == "__init__.py" else source
                (tmp_path / source.name).symlink_to(source)
    (tmp_path / "longrun_client").symlink_to(CLIENT / "longrun_client")
    code = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}]\n"
        "import longrun_client\n"
        "c = longrun_client.Client('http://127.0.0.1:9', 'lr_x')\n"
        "try:\n"
        "    c.runs.get('00000000-0000-4000-8000-000000000000')\n"
        "except longrun_client.APIConnectionError as exc:\n"
        "    print('unreachable', exc.code)\n"
        "finally:\n"
        "    c.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd="/"
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "unreachable connection_error"


# -- decisions, without I/O ---------------------------------------------------------------------


def sse(data: str = "", event: str = "", id: str = "", retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


def frame(seq: int, etype: str = "token", **fields: object) -> ServerSentEvent:
    import json

    return sse(json.dumps({"seq": seq, "type": etype, **fields}), etype, str(seq))


def test_a_cursor_hands_over_each_event_once_and_in_order() -> None:
    cursor = Cursor()

    got = [cursor.take(frame(1, "start")), cursor.take(frame(2, text="1"))]
    repeated = cursor.take(frame(2, text="1"))  # a server resending after a reconnect

    assert [e.seq for e in got if e is not None] == [1, 2]
    assert repeated is None
    assert cursor.headers() == {"Last-Event-ID": "2"}


def test_a_cursor_asks_to_reconnect_on_a_gap_and_on_the_servers_stream_error() -> None:
    cursor = Cursor(last=4)

    with pytest.raises(Reconnect):
        cursor.take(frame(6))
    with pytest.raises(Reconnect):
        cursor.take(sse('{"error": "events_unavailable"}', "stream_error", id="4", retry=10000))
    assert cursor.last == 4
    assert cursor.hint == 10.0


def test_a_cursor_ignores_keep_alives_hints_and_id_less_frames_but_keeps_the_retry_hint() -> None:
    cursor = Cursor(last=3)

    assert cursor.take(sse(id="3", retry=250)) is None  # the shutdown hint: an id-less frame
    assert cursor.take(sse('{"error": "x"}', "stream_token_expired", id="3")) is None
    assert cursor.hint == 0.25
    assert cursor.last == 3


def test_events_are_typed_and_unknown_types_stay_plain_events() -> None:
    token = parse_event({"seq": 2, "type": "token", "text": "hi"})
    done = parse_event({"seq": 3, "type": "done", "output": {"count": 1}})
    new = parse_event({"seq": 4, "type": "something_new", "x": 1})

    assert isinstance(token, TokenEvent)
    assert token.text == "hi"
    assert not token.terminal
    assert isinstance(done, DoneEvent)
    assert done.output == {"count": 1}
    assert done.terminal
    assert type(new) is Event
    assert new.data["x"] == 1
    assert new.id == "4"


def test_backoff_is_jittered_between_half_and_all_of_a_doubling_ceiling_or_the_servers_hint() -> (
    None
):
    assert backoff(0, rand=0.0) == 0.125
    assert backoff(0, rand=1.0) == 0.25
    assert backoff(10, rand=1.0) == 5.0
    assert backoff(3, hint=2.0, rand=0.5) == 1.5


def api_error(status: int, retry_after: float | None = None) -> errors.APIError:
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return errors.error_from(status, b'{"error": "e", "detail": "d"}', headers)


def test_only_429_and_503_are_retried_after_their_retry_after_within_bounds() -> None:
    assert retry_delay(api_error(429, 1), attempt=0, max_retries=3, max_wait=30) == 1.0
    assert retry_delay(api_error(503, 2), attempt=2, max_retries=3, max_wait=30) == 2.0
    assert retry_delay(api_error(503, 2), attempt=3, max_retries=3, max_wait=30) is None
    assert retry_delay(api_error(503, 60), attempt=0, max_retries=3, max_wait=30) is None
    assert retry_delay(api_error(500), attempt=0, max_retries=3, max_wait=30) is None
    assert retry_delay(api_error(422), attempt=0, max_retries=3, max_wait=30) is None


def test_a_stream_once_open_waits_out_a_5xx_but_not_a_4xx() -> None:
    assert reopen_delay(api_error(502), True, 0, None, 3, 30) is not None
    assert reopen_delay(api_error(502), False, 0, None, 3, 30) is None
    assert reopen_delay(api_error(404), True, 0, None, 3, 30) is None
    assert reopen_delay(api_error(429, 5), True, 9, None, 3, 30) == 5.0


def test_errors_carry_the_apis_code_detail_and_request_id_by_class() -> None:
    err = errors.error_from(
        404, b'{"error": "not_found", "detail": "no such run", "request_id": "r1"}', {}
    )
    proxy = errors.error_from(502, b"Bad Gateway\n<html>", {"x-request-id": "r2"})

    assert isinstance(err, errors.NotFound)
    assert (err.status, err.code, err.detail, err.request_id) == (
        404,
        "not_found",
        "no such run",
        "r1",
    )
    assert isinstance(proxy, errors.ServerError)
    assert (proxy.code, proxy.detail, proxy.request_id) == ("http_502", "Bad Gateway", "r2")
    assert isinstance(errors.error_from(503, b"", {}), errors.ServiceUnavailable)
    assert isinstance(errors.error_from(422, b"", {}), errors.BadRequest)
