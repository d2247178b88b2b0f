#!/usr/bin/env bash
# VNN-COMP run_instance.sh v1 BENCHMARK ONNX VNNLIB RESULTS_FILE TIMEOUT
#
# Runs `bab verify ONNX VNNLIB --timeout TIMEOUT --results-file RESULTS_FILE`, which writes
# the verdict (sat + witness / unsat / unknown / timeout) and finishes before TIMEOUT.
# Exit 0 after a verdict; otherwise the exit code of `bab verify` (the harness records it as
# error_exit_code_N). .gz inputs are unpacked first. The benchmark name changes no setting.
set -uo pipefail

if [ "$#" -lt 1 ] || [ "$1" != "v1" ]; then
    echo "run_instance.sh: expected version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi
if [ "$#" -ne 6 ]; then
    echo "usage: run_instance.sh v1 BENCHMARK ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi

BENCHMARK="$2"   # logged only
ONNX="$3"
VNNLIB="$4"
RESULTS="$5"
TIMEOUT="$6"
PYTHON="${PYTHON:-python3}"

# Print the path to use for $1: itself, or for a .gz file its unpacked copy (next to it when
# that folder is writable, else in a temporary folder).
unpacked() {
    local path="$1"
    case "$path" in
        *.gz) ;;
        *) echo "$path"; return 0 ;;
    esac
    local plain="${path%.gz}"
    if [ -f "$plain" ] && [ "$plain" -nt "$path" ]; then
        echo "$plain"; return 0
    fi
    if gunzip -c "$path" > "$plain.tmp.$$" 2>/dev/null && mv -f "$plain.tmp.$$" "$plain"; then
        echo "$plain"; return 0
    fi
    rm -f "$plain.tmp.$$"
    local dir="${TMPDIR:-/tmp}/bab-vnncomp"
    mkdir -p "$dir" || return 1
    plain="$dir/$(basename "${path%.gz}")"
    gunzip -c "$path" > "$plain" || return 1
    echo "$plain"
}

echo "run_instance.sh: benchmark=$BENCHMARK onnx=$ONNX vnnlib=$VNNLIB timeout=$TIMEOUT"
ONNX="$(unpacked "$ONNX")" || { echo "cannot unpack $3" >&2; exit 2; }
VNNLIB="$(unpacked "$VNNLIB")" || { echo "cannot unpack $4" >&2; exit 2; }

"$PYTHON" -m bab verify "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --results-file "$RESULTS"
code=$?
if [ "$code" -ne 0 ]; then
    echo "run_instance.sh: bab verify exited with $code" >&2
    exit "$code"
fi
exit 0
