#!/usr/bin/env bash
# Set up, then run the whole test suite (slow tests included), lint and type checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
