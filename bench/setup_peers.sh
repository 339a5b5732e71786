#!/usr/bin/env bash
# Create the peer systems' virtualenvs under bench/.envs/ (gitignored). Bench-only: nothing here
# is a dependency of longrun itself. Versions follow shared/bench/BASELINES.md.
#   arq      arq 0.28 + redis-py 5.3.1 (arq 0.28 needs redis<6)
#   celery   celery 5.7 + redis-py 8.1 (kombu 5.7 refuses redis-py < 6.1 at run time)
#   langgraph  langgraph-cli[inmem] 0.4.x + langgraph (the `langgraph dev` server)
#   plot     matplotlib, for the PNG plots
# Usage: bench/setup_peers.sh [arq|celery|langgraph|plot ...]   (default: all). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
envs="$here/.envs"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
mkdir -p "$envs"

make_env() {  # name, pip requirements...
  local name="$1"; shift
  local dir="$envs/$name"
  if [[ -f "$dir/.ok" ]] && [[ "$(cat "$dir/.ok")" == "$*" ]]; then
    echo "peer env $name: up to date"; return
  fi
  echo "peer env $name: installing $*"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  echo "$*" > "$dir/.ok"
}

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(arq celery langgraph plot)
for name in "${want[@]}"; do
  case "$name" in
    arq) make_env arq "arq==0.28.0" "redis[hiredis]==5.3.1" ;;
    celery) make_env celery "celery[redis]==5.7.0" "redis[hiredis]==8.1.0" ;;
    langgraph) make_env langgraph "langgraph-cli[inmem]>=0.4,<0.5" "langgraph>=1.2,<1.3" ;;
    plot) make_env plot "matplotlib>=3.8" ;;
    *) echo "unknown peer env: $name" >&2; exit 2 ;;
  esac
done
