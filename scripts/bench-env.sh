#!/bin/sh
# Create (or refresh) .bench-venv, the benchmark-only environment of bench/ops.py:
# torch 2.13.0 (the CPU build, from the local wheel cache), mixkit in editable mode, and the
# peer libraries of bench/requirements-peers.txt installed with --no-deps, so that no peer
# pulls another torch or torchvision. The peers are never mixkit dependencies.
#   sh scripts/bench-env.sh            # create or update .bench-venv
#   BENCH_VENV=/tmp/bv sh scripts/bench-env.sh
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-.bench-venv}
STAMP="$VENV/.bench-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt bench/requirements-peers.txt ] && [ "$STAMP" -nt pyproject.toml ]; then
    echo "bench-env: $VENV is up to date"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet torch==2.13.0
$PIP install --quiet -e .
$PIP install --quiet --no-deps -r bench/requirements-peers.txt
# the peers' checks: none of them may have brought another torch
"$VENV/bin/python" - <<'PY'
import importlib.util, torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be in the bench venv"
print("bench-env: torch", torch.__version__)
PY
touch "$STAMP"
echo "bench-env: ready ($VENV)"
