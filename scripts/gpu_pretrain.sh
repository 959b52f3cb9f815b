#!/usr/bin/env bash
# Pre-trains built-in models on a GPU through burn's wgpu backend (Vulkan), several jobs at
# once, each for MINUTES minutes of wall time (kernel compilation included); used on borrowed
# H100s (see docs/models.md and docs/RESULTS.md, "How the shipped weights were trained").
#
#   RLRIG=target/release/rlrig MINUTES=6 OUT=/tmp/gpu scripts/gpu_pretrain.sh [JOBS]
#
# RLRIG must be built with `--features wgpu`. JOBS is a file with one job per line:
#   <name> <flow> [--set key=value ...]
# (blank lines and `#` comments skipped); without it the four models are trained from scratch
# at batch 128. Each job runs in RUNS/gpu-<name> and writes OUT/<name>.safetensors; OUT also
# gets logs.tar.gz (each run's log, loss.jsonl, sample grids and evaluations) and summary.txt.
set -u
RLRIG=${RLRIG:-target/release/rlrig}
MINUTES=${MINUTES:-6}
OUT=${OUT:-/tmp/gpu}
RUNS=${RUNS:-/tmp/gpu-runs}
JOBS=${1:-}
mkdir -p "$OUT" "$RUNS"
common=(--set run_dir="$RUNS" --set pretrain.device=${DEVICE:-wgpu} --set pretrain.max_minutes="$MINUTES"
        --set pretrain.steps=1000000 --set pretrain.checkpoint_every=${CKPT:-1000}
        --set pretrain.sample_every=${SAMPLE:-1000} --overwrite)
if [ -z "$JOBS" ]; then
  JOBS=$(mktemp)
  for m in diffuser editor checker policy; do
    echo "$m flows/pretrain-$m.toml --set pretrain.batch=128" >> "$JOBS"
  done
fi
names=()
while read -r name flow rest; do
  case "$name" in ''|'#'*) continue ;; esac
  names+=("$name")
  # shellcheck disable=SC2086 # `rest` is a list of --set arguments without spaces in them
  "$RLRIG" run "$flow" "${common[@]}" --set name="gpu-$name" $rest \
    --set pretrain.export="$OUT/$name.safetensors" > "$RUNS/$name.log" 2>&1 &
done < "$JOBS"
wait
{
  for n in "${names[@]}"; do
    echo "== $n"; tail -n 6 "$RUNS/$n.log"
    tail -n 1 "$RUNS/gpu-$n/loss.jsonl" 2>/dev/null
  done
} > "$OUT/summary.txt"
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" --exclude=checkpoint --exclude=pool --exclude="*.safetensors" . 2>/dev/null
cat "$OUT/summary.txt"
