#!/usr/bin/env bash
# Pre-trains the built-in models on a GPU through burn's wgpu backend (Vulkan), all four at
# once, each for MINUTES minutes of wall time; used on a borrowed H100 (see docs/models.md).
#
#   RLRIG=target/release/rlrig MINUTES=6 OUT=/tmp/gpu scripts/gpu_pretrain.sh
#
# RLRIG must be built with `--features wgpu`. Writes OUT/<model>.safetensors, OUT/logs.tar.gz
# (each run's log, loss.jsonl, sample grids and evaluations) and OUT/summary.txt.
set -u
RLRIG=${RLRIG:-target/release/rlrig}
MINUTES=${MINUTES:-6}
OUT=${OUT:-/tmp/gpu}
RUNS=${RUNS:-/tmp/gpu-runs}
mkdir -p "$OUT" "$RUNS"
common=(--set run_dir="$RUNS" --set pretrain.device=wgpu --set pretrain.max_minutes="$MINUTES"
        --set pretrain.steps=1000000 --set pretrain.checkpoint_every=${CKPT:-1000} --set pretrain.sample_every=1000
        --overwrite)
"$RLRIG" run flows/pretrain-diffuser.toml "${common[@]}" --set name=gpu-diffuser \
  --set pretrain.init=weights/diffuser.safetensors --set pretrain.warmup=100 --set pretrain.batch=128 \
  --set pretrain.export="$OUT/diffuser.safetensors" > "$RUNS/diffuser.log" 2>&1 &
"$RLRIG" run flows/pretrain-editor.toml "${common[@]}" --set name=gpu-editor --set pretrain.batch=128 \
  --set pretrain.export="$OUT/editor.safetensors" > "$RUNS/editor.log" 2>&1 &
"$RLRIG" run flows/pretrain-checker.toml "${common[@]}" --set name=gpu-checker --set pretrain.batch=128 \
  --set pretrain.export="$OUT/checker.safetensors" > "$RUNS/checker.log" 2>&1 &
"$RLRIG" run flows/pretrain-policy.toml "${common[@]}" --set name=gpu-policy --set pretrain.batch=128 \
  --set pretrain.export="$OUT/policy.safetensors" > "$RUNS/policy.log" 2>&1 &
wait
{
  for m in diffuser editor checker policy; do
    echo "== $m"; tail -n 6 "$RUNS/$m.log"
    tail -n 1 "$RUNS/gpu-$m/loss.jsonl" 2>/dev/null
  done
} > "$OUT/summary.txt"
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" --exclude=checkpoint --exclude=pool . 2>/dev/null
cat "$OUT/summary.txt"
