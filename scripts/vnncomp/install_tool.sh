#!/usr/bin/env bash
# VNN-COMP install_tool.sh v1: install the bab verifier (this repository) with pip.
# Run once on a fresh machine. Set PYTHON to choose the interpreter (default python3).
set -euo pipefail

if [ "$#" -lt 1 ] || [ "$1" != "v1" ]; then
    echo "install_tool.sh: expected version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi

PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

echo "installing bab-verifier from $REPO_ROOT with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m pip install "$REPO_ROOT" "torch==2.13.0"
"$PYTHON" -m bab --help > /dev/null
echo "install_tool.sh: done"
