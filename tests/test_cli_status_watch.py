"""`longrun status --watch`: the operator's live view redraws in place (no scrolling stream of
reports) every `--interval`, keeps going while Redis is away, and Ctrl-C ends it with exit 0."""

from __future__ import annotations

from pathlib import Path

from cli.status import CLEAR_BELOW, CLEAR_SCREEN, HOME, frame
from shared.config import Settings
from tests.cli_proc import Running, cli_env
from tests.conftest import free_port


def test_a_frame_overwrites_the_previous_one_line_by_line() -> None:
    first = frame("a\nb", "head", first=True)
    later = frame("a", "head", first=False)

    assert first.startswith(CLEAR_SCREEN + HOME)
    assert later.startswith(HOME)
    assert CLEAR_SCREEN not in later
    assert later == HOME + "head\x1b[K\n\x1b[K\na\x1b[K\n" + CLEAR_BELOW


async def test_status_watch_redraws_in_place_and_ctrl_c_exits_0(
    settings: Settings, tmp_path: Path, worker
) -> None:
    # Given an operator watching the status every 0.1 s
    watch = await Running.start(
        "status", "--watch", "--interval", "0.1", env=cli_env(tmp_path, settings)
    )
    try:
        await watch.read_until(HOME + "longrun status", timeout=30, times=3)
        # When three frames have been drawn, and Ctrl-C is pressed
        done = await watch.interrupt()
    finally:
        await watch.kill()

    # Then each frame went home and redrew over the last; the view shows the live worker
    assert done.code == 0, done
    assert "Traceback" not in done.err
    assert done.out.startswith(CLEAR_SCREEN + HOME + "longrun status, every 0.1 s")
    assert done.out.count(HOME) >= 3
    assert "workers alive: 1" in done.out


async def test_status_watch_shows_an_unreachable_redis_and_keeps_watching(
    settings: Settings, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    watch = await Running.start(
        "status", "--watch", "--interval", "0.1", env=cli_env(tmp_path, settings, REDIS_URL=dead)
    )
    try:
        seen = await watch.read_until(f"PROBLEM: cannot reach Redis at {dead}", times=2, timeout=30)
        done = await watch.interrupt()
    finally:
        await watch.kill()

    assert seen.count(HOME + "longrun status") >= 2  # still watching after the first failure
    assert done.code == 0, done
    assert "Traceback" not in done.err
