#!/usr/bin/env bash
# The rlrig-qwen decoding benchmark, burn (flex) against transformers, same models, prompts and
# images, back to back, then the ratios: actors/qwen/benches/decode.rs vs
# scripts/torch_reference/qwen_decode_bench.py, for the tiny parity fixture and a mid-size
# random-weight Qwen2.5-VL (made once into target/qwen-bench/mid). Per config: `prefill` (one
# forward of the prompt), `step` (one KV-cached token), `generate16` (greedy, 16 tokens, with
# rlrig's re-scoring pass; the reference adds the same pass). Both sides must generate the same
# tokens (checked). Needs the PyTorch venv of scripts/torch_reference/README.md (or
# PYTHON=...) with transformers; not part of the tests or CI.
# Run on an idle machine: both sides use 2 threads. RUNS (default 10), WARMUP (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/work/.venv-torch/bin/python}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
REFERENCE=scripts/torch_reference/qwen_decode_bench.py
DIR=$PWD/target/qwen-bench
if [ ! -f "$DIR/mid/config.json" ]; then
  "$PYTHON" -W ignore "$REFERENCE" --make "$DIR" 2>/dev/null
fi
nice cargo bench -q -p rlrig-qwen --bench decode --no-run  # build first, outside the timing
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
burn=$(RAYON_NUM_THREADS=2 RLRIG_BENCH_RUNS=$RUNS RLRIG_BENCH_WARMUP=$WARMUP RLRIG_QWEN_BENCH_DIR=$DIR \
    cargo bench -q -p rlrig-qwen --bench decode 2>/dev/null | grep -E "^(qwen|burn|# qwen)")
echo "$burn"
torch=$("$PYTHON" -W ignore "$REFERENCE" --dir "$DIR" --runs "$RUNS" --warmup "$WARMUP" --threads 2 \
    2>/dev/null | grep -E "^(qwen|torch|# qwen)")
echo "$torch"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
BURN="$burn" TORCH="$torch" python3 - <<'PY'
import os, re
def rows(s):
    out, gen = {}, {}
    for line in s.splitlines():
        f = line.split()
        if f[0] == "qwen" and f[1] != "cfg":
            out[(f[1], f[2])] = (int(f[4]), float(f[5]))
        m = re.match(r"# qwen (\w+): prompt .*generate16 (\[.*\])", line)
        if m:
            gen[m.group(1)] = m.group(2).replace(" ", "")
    return out, gen
(b, bg), (t, tg) = rows(os.environ["BURN"]), rows(os.environ["TORCH"])
for cfg in bg:
    same = "same" if bg[cfg] == tg.get(cfg) else "DIFFERENT"
    print(f"{cfg}: burn and torch generate16 tokens {same}")
print(f"{'cfg':<5} {'what':<10} {'burn ms':>9} {'torch ms':>9} {'burn/torch':>10} {'burn params':>12} {'torch params':>12}")
for k in b:
    if k not in t:
        continue
    (bp, bm), (tp, tm) = b[k], t[k]
    print(f"{k[0]:<5} {k[1]:<10} {bm:>9.2f} {tm:>9.2f} {bm/tm:>10.2f} {bp:>12} {tp:>12}")
PY
