#!/usr/bin/env bash
# VNN-COMP run_instance.sh v1 BENCHMARK ONNX VNNLIB RESULTS_FILE TIMEOUT
#
# Runs `bab verify ONNX VNNLIB --timeout TIMEOUT --results-file RESULTS_FILE`, which writes
# the verdict (sat + witness / unsat / unknown / timeout) and finishes before TIMEOUT.
# Exit 0 after a verdict; otherwise the exit code of `bab verify` (the harness records it as
# error_exit_code_N). bab reads .onnx.gz and .vnnlib.gz itself. The benchmark name changes no setting.
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

echo "run_instance.sh: benchmark=$BENCHMARK onnx=$ONNX vnnlib=$VNNLIB timeout=$TIMEOUT"

"$PYTHON" -m bab verify "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --results-file "$RESULTS"
code=$?
if [ "$code" -ne 0 ]; then
    echo "run_instance.sh: bab verify exited with $code" >&2
    exit "$code"
fi
exit 0
