#!/usr/bin/env bash
# Run every benchmark (peers first set up in bench/.envs/). Extra args go to `python -m bench`,
# e.g. `bench/run_all.sh --smoke` or `bench/run_all.sh dispatch sse_fanout`.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
command -v wrk >/dev/null || echo "wrk not found (apt-get install wrk): using the asyncio load generator"
bench/setup_peers.sh
exec "$py" -m bench "$@"
