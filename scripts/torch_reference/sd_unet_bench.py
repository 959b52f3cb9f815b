"""PyTorch reference of the SD UNet forward benchmark (actors/sd/benches/unet.rs): diffusers'
UNet2DConditionModel for the tiny test fixture (actors/sd/tests/fixtures/tiny-sd/unet, latents
[2, 4, 16, 16], context [2, 16, 32]) and a mid-size SD-shaped config (channels 64/128/256,
latents [2, 4, 32, 32], context [2, 16, 256]), with the same deterministic inputs and timesteps
as the burn side. torch.set_num_threads(2), torch.no_grad. Timing only: random weights.
Median of RUNS forwards after WARMUP, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TINY = os.path.join(ROOT, "actors", "sd", "tests", "fixtures", "tiny-sd", "unet", "config.json")

MID = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [64, 128, 256],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 256,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TIMESTEPS = [999.0, 500.0]

MASK = (1 << 64) - 1


def lcg(seed: int, shape) -> torch.Tensor:
    """The burn bench's inputs: a 64-bit LCG (Knuth's MMIX constants), top 24 bits, in [-1, 1)."""
    n = 1
    for d in shape:
        n *= d
    s, out = seed, []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & MASK
        out.append((s >> 40) / float(1 << 24) * 2.0 - 1.0)
    return torch.tensor(out, dtype=torch.float32).reshape(shape)


def bench(name, config, latents, context, runs, warmup):
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = UNet2DConditionModel(**config).eval()
    params = sum(p.numel() for p in model.parameters())
    sample, ctx = lcg(1, latents), lcg(2, context)
    t = torch.tensor(TIMESTEPS)
    with torch.no_grad():
        for _ in range(warmup):
            model(sample, t, encoder_hidden_states=ctx).sample
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(sample, t, encoder_hidden_states=ctx).sample
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median_high(times)  # v[len / 2] of the sorted times, as the burn side
    lat = "[" + ",".join(map(str, latents)) + "]"
    cx = "[" + ",".join(map(str, context)) + "]"
    print(f"unet {name:<5} {lat:>12} {cx:>14} {params:>10} {ms:>10.1f} {runs:>5}")
    return {"config": name, "params": params, "ms_median": ms, "runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RLRIG_BENCH_RUNS", 10)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("RLRIG_BENCH_WARMUP", 2)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/torch_sd_unet.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(TINY) as f:
        tiny = json.load(f)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per forward")
    print(f"unet {'cfg':<5} {'latents':>12} {'context':>14} {'params':>10} {'ms':>10} {'runs':>5}")
    rows = [
        bench("tiny", tiny, [2, 4, 16, 16], [2, 16, 32], args.runs, args.warmup),
        bench("mid", MID, [2, 4, 32, 32], [2, 16, 256], args.runs, args.warmup),
    ]
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
