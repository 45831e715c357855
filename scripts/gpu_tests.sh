#!/usr/bin/env bash
# Run every `gpu`-marked test on a CUDA machine, each in its own pytest process, JOBS at a time (the
# Triton/PTX compiles are CPU-bound, so serially the tensor-core GEMV grid alone outlasts a 10-minute
# device call). The PTX paths are on (TRITON_INTERPRET=0).
#
# Usage: bash scripts/gpu_tests.sh [SUMMARY_FILE] [JOBS]     (defaults: gpu_tests.txt, 12)
# SUMMARY_FILE gets the device, versions, one line per test (exit code, test id, pytest's last line),
# the counts, and the full log of every test that did not pass (a skip counts as not passed).
# Exit code 1 if any test did not pass.
set -u
summary=${1:-gpu_tests.txt}
jobs=${2:-12}
logs=$(mktemp -d)
export TRITON_INTERPRET=0
python -m pytest -m gpu --collect-only -q -p no:cacheprovider tests/ 2>/dev/null | grep "::" > "$logs/ids.txt"
start=$(date +%s)
xargs -P "$jobs" -I{} bash -c '
  id="$1"; logs="$2"; n=$(printf %s "$id" | tr -c "a-zA-Z0-9" "_")
  python -m pytest -q -m gpu -p no:cacheprovider "$id" > "$logs/$n.log" 2>&1
  echo "rc=$? $id | $(tail -n 1 "$logs/$n.log")"' _ {} "$logs" < "$logs/ids.txt" | sort -k2 > "$logs/lines.txt"
wall=$(( $(date +%s) - start ))
total=$(wc -l < "$logs/ids.txt")
ok=$(grep -c "^rc=0 .* | 1 passed" "$logs/lines.txt")  # a skip (no GPU) is not a pass
{
  echo "# GPU tests (pytest -m gpu, one process per test, $jobs at a time, TRITON_INTERPRET=0)"
  python - <<'PY' 2>&1
import torch, triton
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
print("versions: torch", torch.__version__, "triton", triton.__version__)
PY
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  wall: ${wall} s"
  cat "$logs/lines.txt"
  echo "passed: $ok of $total"
  grep -v "^rc=0 .* | 1 passed" "$logs/lines.txt" | while read -r _ id _; do
    n=$(printf %s "$id" | tr -c "a-zA-Z0-9" "_")
    echo; echo "## log of $id"; cat "$logs/$n.log"
  done
} > "$summary"
cat "$summary"
[ "$ok" -eq "$total" ] && [ "$total" -gt 0 ]
