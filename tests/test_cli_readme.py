"""The README a newcomer follows: its links lead to files of this repository, its "Try it" uses
the names `longrun dev`'s banner prints, and its commands, pasted in order into bash, work
against a live stack (the API and a worker as processes, as `longrun dev` runs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cli.devinfo import TRY_IT, api_exports
from shared.config import Settings
from tests.cli_proc import LONGRUN, cli_env
from tests.conftest import free_port
from tests.procs import ROOT

README = (ROOT / "README.md").read_text()
MARK = "@@@ command "


def try_it_block() -> list[str]:
    section = README.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "the Try it section has a sh block"
    return found.group(1).splitlines()


def commands(lines: list[str]) -> list[str]:
    """The block's commands, continuation lines joined; comments dropped."""
    out: list[str] = []
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if not line.endswith("\\"):
            out.append(pending)
            pending = ""
    assert not pending
    return out


def test_every_relative_link_in_the_readme_resolves_to_a_file_in_the_repository() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    paths = re.findall(r"`([\w.-]+(?:/[\w.-]+)+\.\w+)`", README)  # `dir/file.ext`
    assert links, "the README links somewhere"
    made_at_run_time = [
        line.strip("/") for line in (ROOT / ".gitignore").read_text().split() if line.endswith("/")
    ]
    missing = []
    for target in [*links, *paths]:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if target.split("/", 1)[0] in made_at_run_time:  # e.g. `.longrun/dev.lock`
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT.resolve() not in path.parents:
            missing.append(target)
    assert missing == []


def test_the_readme_anchors_name_its_sections() -> None:
    anchors = set(re.findall(r"\]\(#([\w-]+)\)", README))
    headings = {
        re.sub(r"[^\w -]", "", h).strip().lower().replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", README, re.M)
    }
    assert anchors <= headings


def test_try_it_starts_with_the_banners_settings_line_and_holds_its_commands() -> None:
    lines = try_it_block()
    assert lines[0] == api_exports("http://127.0.0.1:8000", "lr_…")
    assert all(command in lines for command in TRY_IT)
    assert "localhost" not in "\n".join(lines)  # one host name, the one the banner prints


def test_make_clean_says_what_it_leaves_on_configured_servers() -> None:
    makefile = (ROOT / "Makefile").read_text()
    described = makefile.split("\nclean:", 1)[0].rsplit("\n\n", 1)[1]
    assert "does not remove" in described
    assert "database" in described
    assert "Redis keys" in described


async def _wait_healthy(url: str, procs: list[asyncio.subprocess.Process]) -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            assert all(p.returncode is None for p in procs), "a process of the stack exited"
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url}/health did not answer")


@contextlib.asynccontextmanager
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """`longrun api` and one `longrun worker`, as processes; yields the API's URL."""
    port = free_port()
    env = cli_env(tmp_path / ".longrun", settings)
    procs = []
    for i, argv in enumerate((["api", "--port", str(port)], ["worker"])):
        log = (tmp_path / f"stack-{i}.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                LONGRUN, *argv, env=env, cwd=str(ROOT), stdout=log, stderr=log
            )
        )
        log.close()
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_healthy(url, procs)
        yield url
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 30)
            except TimeoutError:
                p.kill()
                await p.wait()


@pytest.mark.timeout(120)
async def test_the_try_it_commands_run_in_order_against_a_live_stack(
    settings: Settings, api_key: str, tmp_path: Path
) -> None:
    assert shutil.which("curl"), "the README's commands use curl"
    lines = try_it_block()
    async with stack(settings, tmp_path) as url:
        # Given the block as a user pastes it, its first line being the banner's, with its values
        lines[0] = api_exports(url, api_key)
        cmds = commands(lines)
        script = "set -eu -o pipefail\nexec 2>&1\n" + "".join(
            f"printf '\\n{MARK}{i}\\n'\n{cmd}" for i, cmd in enumerate(cmds)
        )
        env = cli_env(tmp_path / ".longrun")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

        # When bash runs it in the repository's folder
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, env=env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE
        )
        raw, _ = await asyncio.wait_for(proc.communicate(), 90)

    # Then every command ran, and each printed what the README's comments promise
    out = raw.decode().replace("\r\n", "\n")  # SSE lines end with CRLF
    assert proc.returncode == 0, out
    said = dict(zip(cmds, re.split(rf"\n{MARK}\d+\n", out)[1:], strict=True))

    def output_of(fragment: str, *, without: str = "\0") -> str:
        return next(v for k, v in said.items() if fragment in k and without not in k)

    assert re.fullmatch(r"run [0-9a-f-]{36} queued\n", output_of("RUN_ID=$(longrun submit"))
    stream = output_of("/events", without="Last-Event-ID")
    ids = re.findall(r"^id: (\d+)$", stream, re.M)
    assert ids == [str(i) for i in range(1, 8)], stream
    assert re.findall(r"^event: (\w+)$", stream, re.M) == ["start", *["token"] * 5, "done"]
    resumed = output_of("Last-Event-ID: 3")
    assert re.findall(r"^id: (\d+)$", resumed, re.M) == ["4", "5", "6", "7"], resumed
    assert re.match(
        r"run [0-9a-f-]{36}: succeeded \(agent ticker, attempt 1\)", output_of("runs get")
    )
    assert '{"count": 5}' in output_of("runs get")
    assert '"status":"queued"' in output_of("-X POST").replace(" ", "")
    streamed = output_of("/runs/stream")
    where = re.search(r"^content-location: /runs/([0-9a-f-]{36})$", streamed, re.M | re.I)
    assert where, streamed
    assert re.findall(r"^event: (\w+)$", streamed, re.M) == ["start", *["token"] * 3, "done"]
    assert f'"run_id":"{where.group(1)}"' in streamed
    waited = output_of("/wait?timeout=30").replace(" ", "")
    assert '"status":"succeeded"' in waited, waited
    assert '"output":{"count":5}' in waited, waited
    assert '"status":"succeeded"' in output_of("/runs/wait?timeout=60").replace(" ", "")
    assert output_of("import longrun_client").strip() == "{'count': 10}"
    followed = output_of('submit "hello" --follow')
    assert followed.splitlines()[-1].endswith(" succeeded"), followed
    assert "[tool " in followed
