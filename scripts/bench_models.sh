#!/usr/bin/env bash
# The DiT benchmark of docs/BENCHMARKS.md: burn (flex, rlrig-models) and the PyTorch reference
# (scripts/torch_reference) timed back to back on the same machine, then their ratio.
# Needs the PyTorch venv of scripts/torch_reference/README.md; not part of the tests or CI.
# Run on an idle machine: both sides use 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/work/.venv-torch}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# The allocator, the same on both sides: rlrig's glibc settings (device::keep_freed_memory; the
# same values go to PyTorch's process as MALLOC_* variables), or glibc's defaults for both with
# RLRIG_MALLOC=default.
TORCH_ENV=()
if [ "${RLRIG_MALLOC:-}" != default ]; then
    TORCH_ENV=(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456)
fi
out=$(cargo bench -q -p rlrig-models --bench dit 2>/dev/null)
echo "$out" | grep '^malloc'
burn=$(echo "$out" | grep '^patch')
echo "$burn"
env "${TORCH_ENV[@]}" "$VENV/bin/python" -W ignore scripts/torch_reference/bench.py --out /tmp/torch_bench.json >/dev/null
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
BURN="$burn" python3 - <<'PY'
import json, os, re
torch = json.load(open("/tmp/torch_bench.json"))
# Rows are keyed by label: "4", "8", "8+text2" (patch 8 with a 2-layer text encoder).
rows = {m[0]: (int(m[1]), float(m[2]), float(m[3])) for m in re.findall(
    r"patch (\S+) \((\d+) params\): train step ([\d.]+) ms, sampling batch ([\d.]+) ms",
    os.environ["BURN"])}
print(f"{'patch':>7} {'burn train':>11} {'torch train':>12} {'ratio':>6} {'burn sample':>12} {'torch sample':>13} {'ratio':>6}")
for r in torch["results"]:
    p = r.get("label", str(r["patch"]))
    n, bt, bs = rows[p]
    if n != r["params"]:
        print(f"warning: patch {p}: burn has {n:,} parameters, torch {r['params']:,}")
    tt, ts = r["train_step_ms_median"], r["sample_batch_ms_median"]
    print(f"{p:>7} {bt:>11.1f} {tt:>12.1f} {bt/tt:>6.2f} {bs:>12.1f} {ts:>13.1f} {bs/ts:>6.2f}")
PY
