#!/usr/bin/env bash
# Phase 2's benchmark of docs/BENCHMARKS.md: the Editor's SDE sampling and one Flow-GRPO learner
# step in burn (flex, rlrig-models) and in the PyTorch reference, back to back, then the ratios.
# Needs the PyTorch venv of scripts/torch_reference/README.md; not part of the tests or CI.
# Run on an idle machine: both sides use 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/work/.venv-torch}
NGROUPS=${NGROUPS:-6}
RUNS=${RUNS:-5}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
burn=$(RLRIG_BENCH_GROUPS=$NGROUPS RLRIG_BENCH_RUNS=$RUNS cargo bench -q -p rlrig-models --bench flow_grpo 2>/dev/null | grep '^flow-grpo')
echo "$burn"
torch=$("$VENV/bin/python" -W ignore scripts/torch_reference/flow_grpo_bench.py --groups "$NGROUPS" --runs "$RUNS" 2>/dev/null | grep '^torch')
echo "$torch"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
BURN="$burn" TORCH="$torch" python3 - <<'PY'
import os, re
num = lambda s: [float(x) for x in re.findall(r"sampling ([\d.]+) ms, learner step ([\d.]+) ms", s)[0]]
(bs, bl), (ts, tl) = num(os.environ["BURN"]), num(os.environ["TORCH"])
print(f"sampling: burn {bs:.1f} ms, torch {ts:.1f} ms, ratio {bs/ts:.2f}")
print(f"learner step: burn {bl:.1f} ms, torch {tl:.1f} ms, ratio {bl/tl:.2f}")
PY
