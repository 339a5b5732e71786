"""`python -m bench [--smoke] [--skip-peers] [NAME ...]`: run the benchmarks, one process each.

Order: submit, e2e, dispatch, langgraph, sse_fanout, memory, paging, wait, growth, fairness.
Each prints its table and ratios and appends a JSON line to bench/out/NAME.jsonl. Exit status 1
if any script failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.lib import REPO

ALL = {
    "submit": "bench.submit",
    "e2e": "bench.e2e",
    "dispatch": "bench.dispatch",
    "langgraph": "bench.langgraph_bench",
    "sse_fanout": "bench.sse_fanout",
    "memory": "bench.memory",
    "paging": "bench.paging",
    "wait": "bench.wait",
    "growth": "bench.growth",
    "fairness": "bench.fairness",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*", help=f"any of {', '.join(ALL)} (default: all)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--skip-peers", action="store_true")
    a = p.parse_args()
    unknown = [n for n in a.names if n not in ALL]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in a.names or list(ALL):
        argv = [sys.executable, "-m", ALL[name]]
        argv += ["--smoke"] if a.smoke else []
        argv += ["--skip-peers"] if a.skip_peers else []
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"\n=== {name} ({time.strftime('%H:%M:%S', time.gmtime())} UTC, load {load})",
            flush=True,
        )
        t0 = time.monotonic()
        rc = subprocess.run(argv, cwd=REPO, check=False).returncode
        print(f"=== {name}: exit {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
