#!/usr/bin/env bash
# Set up ModelMora on a fresh Debian/Ubuntu machine: system packages, .venv, the package with
# every extra; and .venv310, the oldest Python that pyproject.toml accepts with the light
# dependencies only (no ML framework), where scripts/test.sh runs the tests that need no model.
# Idempotent: a second run with an unchanged pyproject.toml takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The declared minimum (requires-python): pyenv's, else one on PATH; none found: skipped.
PYTHON_MIN=${PYTHON_MIN:-$(ls -d "$HOME"/.pyenv/versions/3.10.*/bin/python 2>/dev/null | sort -V | tail -1)}
PYTHON_MIN=${PYTHON_MIN:-$(command -v python3.10 || true)}
# wrk: the server benchmark's load generator; chromium + chromium-driver, firefox-esr: the HTML
# viewer's browser tests; libreoffice-writer-nogui + poppler-utils: the DOCX test converts to PDF.
SYSTEM_PACKAGES=(espeak-ng sox libsndfile1 wrk chromium chromium-driver firefox-esr
    libreoffice-writer-nogui poppler-utils)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        echo "setup: installing system packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: please install these system packages: ${missing[*]}" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.modelmora-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/modelmora ]; then
    echo "setup: installing ModelMora and its dependencies into .venv (llama-cpp-python compiles: a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first and pinned: 2.13.0 is the CPU build this project is tested with.
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[all,dev,ray,bench-peers]"
    echo "$want" > "$stamp"
fi

# The minimum-Python venv: the core dependencies, the server's and the test tools only.
if [ -n "$PYTHON_MIN" ]; then
    if [ ! -x .venv310/bin/python ]; then
        echo "setup: creating .venv310 ($("$PYTHON_MIN" --version))"
        "$PYTHON_MIN" -m venv .venv310
    fi
    if [ ! -f .venv310/.modelmora-installed ] || [ "$(cat .venv310/.modelmora-installed)" != "$want" ]; then
        echo "setup: installing ModelMora (light dependencies) into .venv310"
        .venv310/bin/python -m pip install -q --upgrade pip
        .venv310/bin/python -m pip install -q -e ".[server]" pytest pytest-timeout hypothesis \
            pysrt "webvtt-py>=0.6" python-docx openai
        echo "$want" > .venv310/.modelmora-installed
    fi
else
    echo "setup: no Python 3.10 found (pyenv or PATH): the minimum-Python tests will be skipped" >&2
fi
echo "setup: ready ($(.venv/bin/modelmora --version 2>/dev/null || echo modelmora))"
