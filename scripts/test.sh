#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite, the real-data training test included.
# Plain `pytest` runs only the fast tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "slow or not slow" -rs "$@"
