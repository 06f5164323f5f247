#!/usr/bin/env bash
# Set up, then run lint and type checks, the model-free tests on the oldest Python that
# pyproject.toml accepts (.venv310, about a minute), and the whole test suite (slow tests
# included) on the main Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/ruff format --check  # every Python file and the Python blocks of the Markdown docs
.venv/bin/mypy
# Tests that need no model and no ML framework: they catch what only the oldest Python does
# differently (asyncio.TimeoutError is not TimeoutError before 3.11, ...).
MIN_PYTHON_TESTS=(
    tests/test_layers.py
    tests/test_units.py
    tests/test_config.py
    tests/test_transcript.py
    tests/test_formats.py
    tests/test_workflow_runners.py
    tests/test_runtime.py
    tests/test_server.py
    tests/test_http_app.py
)
if [ -x .venv310/bin/python ]; then
    echo "test: $(.venv310/bin/python --version): the model-free tests"
    .venv310/bin/python -m pytest -q -m "not slow" -p no:cacheprovider "${MIN_PYTHON_TESTS[@]}"
else
    echo "test: no .venv310 (no Python 3.10 found): the minimum-Python tests are skipped" >&2
fi
.venv/bin/python -m pytest "$@"
