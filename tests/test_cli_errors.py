"""Every `longrun` command answers a failure with one line on stderr and the documented exit
code (`cli.exits.EXIT_CODES`), never a traceback: an API, Redis or Postgres that is not there
(2), a 4xx (3), a 5xx (4), bad usage or configuration (5).

Regression: `longrun submit` against an API that was not running printed a 60-line traceback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.config import Settings
from tests.cli_proc import Done, cli_env, longrun, longrun_sync
from tests.conftest import free_port

RUN = "00000000-0000-4000-8000-000000000000"
API_COMMANDS = [
    ["submit", "hi"],
    ["submit", "hi", "--follow"],
    ["runs", "get", RUN],
    ["runs", "list"],
    ["runs", "cancel", RUN],
    ["runs", "events", RUN],
    ["runs", "wait", RUN],
]


def assert_one_line(done: Done, code: int, *phrases: str) -> str:
    assert done.code == code, done
    assert "Traceback" not in done.err, done
    assert len(done.err_lines) == 1, done
    line = done.err_lines[0]
    assert line.startswith("longrun: "), done
    for phrase in phrases:
        assert phrase in line, done
    return line


@pytest.mark.parametrize("argv", API_COMMANDS, ids=" ".join)
def test_an_api_command_against_an_api_that_is_not_running_says_so_in_one_line_and_exits_2(
    argv: list[str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = cli_env(tmp_path, LONGRUN_URL=url, LONGRUN_API_KEY="lr_anything")

    done = longrun_sync(*argv, env=env)

    assert_one_line(done, 2, f"cannot reach the API at {url}", "connection refused")
    assert done.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["pause"],
        ["resume"],
        ["dlq", "list"],
        ["dlq", "ack"],
        ["worker"],
    ],
    ids=" ".join,
)
async def test_an_admin_command_with_redis_unreachable_names_it_in_one_line_and_exits_2(
    argv: list[str], settings: Settings, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = cli_env(tmp_path, settings, REDIS_URL=dead)

    done = await longrun(*argv, env=env)

    assert_one_line(done, 2, f"cannot reach Redis at {dead}")


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate"],
        ["keys", "create", "--user", "u"],
        ["keys", "list"],
        ["keys", "revoke", "k_1"],
        ["dlq", "list"],
        ["worker"],
    ],
    ids=" ".join,
)
async def test_an_admin_command_with_postgres_unreachable_names_it_in_one_line_and_exits_2(
    argv: list[str], settings: Settings, tmp_path: Path
) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/longrun"
    env = cli_env(tmp_path, settings, DATABASE_URL=dead)

    done = await longrun(*argv, env=env)

    assert_one_line(done, 2, f"cannot reach Postgres at {dead}")


async def test_a_missing_database_is_one_line_not_a_traceback(
    settings: Settings, tmp_path: Path
) -> None:
    missing = settings.database_url.rsplit("/", 1)[0] + "/longrun_no_such_database"
    env = cli_env(tmp_path, settings, DATABASE_URL=missing)

    done = await longrun("keys", "list", env=env)

    assert_one_line(done, 2, "longrun_no_such_database", "does not exist")


async def test_the_api_refusing_a_request_exits_3_with_its_error_code(
    api, api_key: str, settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, settings, LONGRUN_URL=api.url, LONGRUN_API_KEY=api_key)

    # A bad key (401), an unknown run (404), a malformed run id (400), bad params (422)
    bad_key = await longrun("runs", "list", "--key", "lr_not_a_key", env=env)
    unknown = await longrun("runs", "get", RUN, env=env)
    malformed = await longrun("runs", "events", "nope", env=env)
    params = await longrun(
        "submit", "hi", "--agent", "ticker", "--params", '{"count": -1}', env=env
    )

    assert_one_line(bad_key, 3, "the API refused the request: 401")
    assert_one_line(unknown, 3, "404 not_found")
    assert_one_line(malformed, 3, "400 invalid_run_id")
    assert_one_line(params, 3, "422")


async def test_a_paused_api_exits_4_and_says_when_to_retry(
    api, api_key: str, settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, settings, LONGRUN_URL=api.url, LONGRUN_API_KEY=api_key)
    assert (await longrun("pause", "--reason", "deploying", env=env)).code == 0

    done = await longrun("submit", "hi", env=env)

    assert_one_line(done, 4, "the API failed: 503 paused", "retry after")


class _Broken(BaseHTTPRequestHandler):
    """A proxy in front of a broken API: 500 with a plain-text body."""

    def do_GET(self) -> None:
        body = b"Internal Server Error\n"
        self.send_response(500)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def broken_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("argv", [["runs", "get", RUN], ["runs", "events", RUN]], ids=" ".join)
def test_a_server_error_without_json_exits_4_in_one_line(
    argv: list[str], broken_api: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, LONGRUN_URL=broken_api, LONGRUN_API_KEY="lr_x")

    done = longrun_sync(*argv, env=env)

    assert_one_line(done, 4, "the API failed: 500 Internal Server Error")


@pytest.mark.parametrize(
    ("argv", "extra", "phrase"),
    [
        (["submit", "hi"], {}, "no API key"),
        (["submit", "hi", "--params", "{oops"], {"LONGRUN_API_KEY": "k"}, "--params is not JSON"),
        (["submit", "hi", "--params", "[1]"], {"LONGRUN_API_KEY": "k"}, "JSON object"),
        (["status"], {"LONGRUN_LEASE_SECONDS": "soon"}, "LONGRUN_LEASE_SECONDS"),
        (["runs", "list"], {"LONGRUN_API_KEY": "k", "LONGRUN_URL": "127.0.0.1:1"}, "API URL"),
    ],
    ids=["no key", "params not json", "params not an object", "bad setting", "url no scheme"],
)
def test_bad_usage_or_configuration_exits_5_in_one_line(
    argv: list[str], extra: dict[str, str], phrase: str, tmp_path: Path
) -> None:
    done = longrun_sync(*argv, env=cli_env(tmp_path, **extra))

    assert_one_line(done, 5, phrase)


def test_a_malformed_command_line_exits_5_not_2_which_means_unreachable(tmp_path: Path) -> None:
    done = longrun_sync("runs", "get", env=cli_env(tmp_path))

    assert done.code == 5, done
    assert "the following arguments are required: run_id" in done.err


def test_longrun_dev_on_a_taken_port_says_so_in_one_line_and_exits_5(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = longrun_sync("dev", "--port", str(port), env=cli_env(tmp_path))

    assert done.code == 5, done
    assert done.err_lines == [
        f"longrun dev: port {port} on 127.0.0.1 is taken ([Errno 98] Address already in use); "
        "use --port"
    ]
