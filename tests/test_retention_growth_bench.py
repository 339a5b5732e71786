"""The growth benchmark (bench/growth.py) still runs: its smoke size fills both databases
server-side and measures every figure on each."""

from __future__ import annotations

from pathlib import Path

from tests.test_bench_smoke import run_smoke

FIGURES = {"submit req/s", "dispatch runs/s", "list p1 p99 ms", "list deep p99 ms", "replay p99 ms"}


def test_growth_bench_fills_both_databases_and_measures_each_figure(tmp_path: Path) -> None:
    r = run_smoke("bench.growth", tmp_path)
    assert r["full_fill"]["runs"] == 21_000
    assert r["full_fill"]["events"] == 21_000 * 20
    assert r["empty_fill"]["events"] == 1_000 * 20
    (one,) = r["rounds"]
    for side in ("empty", "full"):
        assert one[side]["dispatch"]["n"] > 0
        assert one[side]["replay"]["n"] == 50
    for side in ("empty", "full"):
        assert set(r["median"][side]) == FIGURES
        assert all(v > 0 for v in r["median"][side].values())
