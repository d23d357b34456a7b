#!/usr/bin/env bash
# Every GPU comparison of the benchmarks and the CUDA-path correctness checks, in one run of at most 8 minutes:
# benchmarks/gpu.py on this checkout, with the checkout's own virtual environment when it has one (else python3).
#
#   bash benchmarks/gpu.sh DIR [gpu.py options]   # writes DIR/gpu.md, gpu.json, rows.jsonl, gpu.log
#   bash benchmarks/gpu.sh                        # the same into $OUT
#   bash benchmarks/gpu.sh DIR --dry-run          # every section on the CPU at tiny sizes
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -gt 0 && $1 != -* ]]; then
  out=$1
  shift
else
  out=${OUT:?give the output folder as the first argument (or set OUT)}
fi
python=${PYTHON:-python3}
if [[ -z ${PYTHON:-} && -x $root/.venv/bin/python ]]; then
  python=$root/.venv/bin/python
fi
exec "$python" "$root/benchmarks/gpu.py" --out "$out" "$@"
