#!/usr/bin/env bash
# Re-measures every number of docs/RESULTS.md that depends on the shipped Diffuser
# (weights/diffuser.safetensors), 500 held-out prompts (seed 1000), the oracle judging.
# ≈ 25 minutes on a 2-core AMD EPYC (docs/BENCHMARKS.md, "The allocator").
#
#   scripts/measure_diffuser.sh [OUT]        # OUT: a folder for the logs (default runs/measure)
#
# Run dirs land in runs/ under the names docs/RESULTS.md uses (diffuser-eval*, infer-500, infer-phase1,
# infer-phase2*, …); the printed tables and comparisons are in OUT/*.log. RLRIG (default
# target/release/rlrig) picks the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
RLRIG=${RLRIG:-target/release/rlrig}
OUT=${1:-runs/measure}
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

run() { # run NAME LOG ARGS…: one flow run, its output in OUT/LOG.log
    local name=$1 logname=$2
    shift 2
    log "$name"
    "$RLRIG" run "$@" --set name="$name" --overwrite >"$OUT/$logname.log" 2>&1
}

# The Diffuser alone, guidance 1 / 3 / 5, and its error classes at 3.
run diffuser-eval-g1 diffuser-eval-g1 flows/diffuser-eval.toml --set actors.diffuser.settings.guidance=1
run diffuser-eval diffuser-eval flows/diffuser-eval.toml --set actors.diffuser.settings.guidance=3
run diffuser-eval-g5 diffuser-eval-g5 flows/diffuser-eval.toml --set actors.diffuser.settings.guidance=5
python3 scripts/diffuser_errors.py runs/diffuser-eval >"$OUT/diffuser-errors.log"

# The loop with the repair-rule Policy (weights/policy.safetensors), the phase-1 Policy of
# 10a45a3 (written out of git), the phase-2 Editor with either Policy; the baseline. The
# phase-1 Policy trained from the broad prior is measured by the commands of RESULTS.md.
P500=(--set prompts.count=500)
RULE=(--set actors.policy.settings.weights=weights/policy.safetensors)
OLD1=runs/policy-phase1-10a45a3.safetensors
git show 10a45a3:weights/policy-phase1.safetensors >"$OLD1"
run infer-500 infer-500 flows/infer.toml "${P500[@]}" "${RULE[@]}"
python3 scripts/edit_gains.py runs/infer-500 >"$OUT/edit-gains.log"
run infer-phase1 infer-phase1 flows/infer.toml "${P500[@]}" \
    --set actors.policy.settings.weights="$OLD1"
run infer-phase2 infer-phase2 flows/infer.toml "${P500[@]}" \
    --set actors.policy.settings.weights="$OLD1" \
    --set actors.editor.settings.weights=weights/editor-phase2.safetensors
run infer-phase2-untrained infer-phase2-untrained flows/infer.toml "${P500[@]}" "${RULE[@]}" \
    --set actors.editor.settings.weights=weights/editor-phase2.safetensors
{
    "$RLRIG" compare runs/infer-500 runs/infer-phase1
    "$RLRIG" compare runs/infer-phase1 runs/infer-phase2
    "$RLRIG" compare runs/infer-500 runs/infer-phase2-untrained
} >"$OUT/compare-loops.log" 2>&1

# The other models on this Diffuser's images.
log "quality editor / checker / policy"
"$RLRIG" quality editor --json "$OUT/editor.json" >"$OUT/quality-editor.log" 2>&1
"$RLRIG" quality editor --editor weights/editor-phase2.safetensors \
    --json "$OUT/editor-phase2.json" >"$OUT/quality-editor-phase2.log" 2>&1
"$RLRIG" quality checker --json "$OUT/checker.json" >"$OUT/quality-checker.log" 2>&1
"$RLRIG" quality policy --json "$OUT/policy.json" >"$OUT/quality-policy.log" 2>&1
log "done: $OUT"
