#!/usr/bin/env bash
# Run every benchmark (peers first set up in bench/.envs/). Extra args go to `python -m bench`,
# e.g. `bench/run_all.sh --smoke` or `bench/run_all.sh dispatch sse_fanout`.
set -euo pipefail  # pipefail: the exit status is python's, not tee's
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
command -v wrk >/dev/null || echo "wrk not found (apt-get install wrk): using the asyncio load generator"
bench/setup_peers.sh
mkdir -p bench/out
log="bench/out/run-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "logging to $log (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
"$py" -m bench "$@" 2>&1 | tee "$log"
