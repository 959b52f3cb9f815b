#!/usr/bin/env bash
# The rlrig-sd forward benchmarks, burn (flex) against diffusers, same configs, shapes and
# inputs, back to back, then the ratios. `scripts/bench_sd.sh` (or `unet`): the SD UNet
# (actors/sd/benches/unet.rs vs scripts/torch_reference/sd_unet_bench.py); `scripts/bench_sd.sh
# mmdit`: the SD3 MMDiT (actors/sd/benches/mmdit.rs vs scripts/torch_reference/sd3_mmdit_bench.py).
# Needs the PyTorch venv of scripts/torch_reference/README.md (or PYTHON=...); not part of the
# tests or CI.
# Run on an idle machine: both sides use 2 threads. RUNS (default 10), WARMUP (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-unet}
case "$MODEL" in
  unet) REFERENCE=scripts/torch_reference/sd_unet_bench.py ;;
  mmdit) REFERENCE=scripts/torch_reference/sd3_mmdit_bench.py ;;
  *) echo "usage: $0 [unet|mmdit]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-/work/.venv-torch/bin/python}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
nice cargo bench -q -p rlrig-sd --bench "$MODEL" --no-run  # build first, outside the timing
burn=$(RAYON_NUM_THREADS=2 RLRIG_BENCH_RUNS=$RUNS RLRIG_BENCH_WARMUP=$WARMUP \
    cargo bench -q -p rlrig-sd --bench "$MODEL" 2>/dev/null | grep -E "^($MODEL|burn)")
echo "$burn"
torch=$("$PYTHON" -W ignore "$REFERENCE" --runs "$RUNS" --warmup "$WARMUP" --threads 2 \
    2>/dev/null | grep -E "^($MODEL|torch)")
echo "$torch"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
MODEL="$MODEL" BURN="$burn" TORCH="$torch" python3 - <<'PY'
import os
def rows(s):
    out = {}
    for line in s.splitlines():
        f = line.split()
        if f[0] == os.environ["MODEL"] and f[1] != "cfg":
            out[f[1]] = (int(f[4]), float(f[5]))
    return out
b, t = rows(os.environ["BURN"]), rows(os.environ["TORCH"])
print(f"{'cfg':<5} {'burn ms':>9} {'torch ms':>9} {'burn/torch':>10} {'burn params':>12} {'torch params':>12}")
for k in b:
    (bp, bm), (tp, tm) = b[k], t[k]
    print(f"{k:<5} {bm:>9.1f} {tm:>9.1f} {bm/tm:>10.2f} {bp:>12} {tp:>12}")
PY
