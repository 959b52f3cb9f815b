#!/usr/bin/env bash
# Reflection-GRPO phase 1 on a borrowed machine's CPUs (burn flex; the device machines have 16
# cores): trains the Policy with flows/train.toml for TRAIN_SECONDS of wall time (then stops it
# as Ctrl-C would: the trainer takes what is committed, publishes its weights and checkpoints),
# then runs the inference flow on 500 held-out prompts with the trained Policy and with the
# shipped one, on the same machine.
#
#   RLRIG=target/release/rlrig TRAIN_SECONDS=330 OUT=/tmp/phase1 scripts/device_phase1.sh
#
# Writes OUT/train/ (metrics.jsonl, metrics.svg, train.json, policy.safetensors, log),
# OUT/infer-phase1/ and OUT/infer-untrained/ (metrics.json, log) and OUT/machine.txt.
set -u
RLRIG=${RLRIG:-target/release/rlrig}
OUT=${OUT:-/tmp/phase1}
RUNS=${RUNS:-/tmp/phase1-runs}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
EVAL_PROMPTS=${EVAL_PROMPTS:-500}   # 0: no evaluation here
# More replicas than flows/train.toml's one per actor: each batch of these small networks keeps
# about one core busy, so a 16-core machine needs several replicas to be used.
REPLICAS=${REPLICAS:-"--set actors.editor.replicas=6 --set actors.diffuser.replicas=2 --set actors.checker.replicas=2 --set actors.policy.replicas=2 --set engine.max_in_flight=48"}
mkdir -p "$OUT/train" "$OUT/infer-phase1" "$OUT/infer-untrained" "$RUNS"
{ nproc; lscpu | grep 'Model name'; free -g | head -2; } > "$OUT/machine.txt"
start=$(date +%s)
timeout -s INT -k 120 "$TRAIN_SECONDS" "$RLRIG" run flows/train.toml --set run_dir="$RUNS" \
  --set name=train --set train.steps=100000 $REPLICAS --overwrite \
  > "$OUT/train/log.txt" 2>&1
echo "train: exit $? after $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"
cp "$RUNS/train/"{metrics.jsonl,metrics.svg,train.json,policy.safetensors,flow.toml} "$OUT/train/" 2>/dev/null
cp -r "$RUNS/train/checkpoint" "$OUT/train/" 2>/dev/null
[ "$EVAL_PROMPTS" = 0 ] && exit 0
for which in phase1 untrained; do
  weights=weights/policy.safetensors
  [ "$which" = phase1 ] && weights="$RUNS/train/policy.safetensors"
  t0=$(date +%s)
  "$RLRIG" run flows/infer.toml --set run_dir="$RUNS" --set name="infer-$which" \
    --set prompts.count="$EVAL_PROMPTS" --set actors.policy.settings.weights="$weights" \
    --set store.trajectories=false $REPLICAS --overwrite > "$OUT/infer-$which/log.txt" 2>&1
  echo "infer-$which: exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/machine.txt"
  cp "$RUNS/infer-$which/metrics.json" "$OUT/infer-$which/" 2>/dev/null
done
cat "$OUT/machine.txt"; tail -n 3 "$OUT/train/log.txt"; tail -n 8 "$OUT"/infer-*/log.txt
