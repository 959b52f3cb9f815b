#!/usr/bin/env bash
# Every burn / PyTorch row of docs/BENCHMARKS.md in one run: the DiT train step and sampling
# batch (bench_models.sh), the Editor's SDE sampling and one Flow-GRPO learner step
# (bench_flow_grpo.sh), and the SD UNet and SD3 MMDiT forwards (bench_sd.sh), both sides on 2
# threads with the same allocator settings. Installs the PyTorch reference (torch, diffusers from PyPI) into a
# virtual environment of its own on first use (VENV, default .venv-torch beside the repository)
# and prints the CPU model and the instruction sets each side can use. Not part of the tests or
# CI; run it on an idle machine (it takes 10–20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$(cd .. && pwd)/.venv-torch}
if [ ! -x "$VENV/bin/python" ]; then
    echo "installing the PyTorch reference into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch diffusers
fi
"$VENV/bin/python" -c 'import diffusers' 2>/dev/null || "$VENV/bin/pip" install -q diffusers

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
sets=""
for f in avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16; do
    case " $flags " in *" $f "*) sets="$sets $f" ;; esac
done
echo "instruction sets:$sets"
echo "burn: flex with gemm's x86-v4 kernels (AVX-512 when the CPU has avx512f, else AVX2 + FMA);" \
    "rlrig's fused kernels chosen the same way"
"$VENV/bin/python" -W ignore -c 'import torch; print(f"PyTorch {torch.__version__}: CPU capability {torch.backends.cpu.get_cpu_capability()}")'

# Build everything first, outside the timings.
cargo bench -q -p rlrig-models --no-run 2>/dev/null
cargo bench -q -p rlrig-sd --bench unet --no-run 2>/dev/null

echo; echo "== DiT (scripts/bench_models.sh)"
VENV=$VENV scripts/bench_models.sh
echo; echo "== Phase 2: Editor SDE sampling and Flow-GRPO step (scripts/bench_flow_grpo.sh)"
VENV=$VENV scripts/bench_flow_grpo.sh
echo; echo "== SD UNet forward (scripts/bench_sd.sh)"
PYTHON=$VENV/bin/python scripts/bench_sd.sh
echo; echo "== SD3 MMDiT forward (scripts/bench_sd.sh mmdit)"
PYTHON=$VENV/bin/python scripts/bench_sd.sh mmdit
