#!/usr/bin/env bash
# VNN-COMP prepare_instance.sh v1 BENCHMARK ONNX VNNLIB
#
# Runs before every instance (not timed): kills stray verifier processes and pre-warms caches with `bab check ONNX VNNLIB` (loads the network, parses the property).
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

echo "prepare_instance.sh: benchmark=$BENCHMARK onnx=$ONNX vnnlib=$VNNLIB"

# Stray verifier processes from an earlier instance would steal CPU/GPU time.
pkill -f 'bab verify' || true

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
