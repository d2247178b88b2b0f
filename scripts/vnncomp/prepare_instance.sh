#!/usr/bin/env bash
# VNN-COMP prepare_instance.sh v1 BENCHMARK ONNX VNNLIB
#
# Runs before every instance (not timed): kills stray verifier processes, unpacks .gz inputs
# and pre-warms caches with `bab check ONNX VNNLIB` (loads the network, parses the property).
# Exit status: 0 normally; non-zero only when the inputs are bad (`bab check` exit code 2:
# unreadable or unsupported model/property), which makes the harness skip the instance as
# prepare_instance_error (scored as unknown). Any other failure of the check is only logged:
# run_instance.sh then still gets its chance. The benchmark name does not change any setting.
set -uo pipefail

if [ "$#" -lt 1 ] || [ "$1" != "v1" ]; then
    echo "prepare_instance.sh: expected version string 'v1' as first argument, got '${1:-}'" >&2
    exit 1
fi
if [ "$#" -ne 4 ]; then
    echo "usage: prepare_instance.sh v1 BENCHMARK ONNX VNNLIB" >&2
    exit 1
fi

BENCHMARK="$2"   # logged only
ONNX="$3"
VNNLIB="$4"
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

echo "prepare_instance.sh: benchmark=$BENCHMARK onnx=$ONNX vnnlib=$VNNLIB"

# Stray verifier processes from an earlier instance would steal CPU/GPU time.
pkill -f 'bab verify' || true

ONNX="$(unpacked "$ONNX")" || { echo "cannot unpack $3" >&2; exit 2; }
VNNLIB="$(unpacked "$VNNLIB")" || { echo "cannot unpack $4" >&2; exit 2; }

"$PYTHON" -m bab check "$ONNX" "$VNNLIB"
code=$?
if [ "$code" -eq 2 ]; then
    echo "prepare_instance.sh: bad input (bab check exit 2); skipping this instance" >&2
    exit 2
fi
if [ "$code" -ne 0 ]; then
    echo "prepare_instance.sh: warning: bab check exited with $code; continuing" >&2
fi
exit 0
