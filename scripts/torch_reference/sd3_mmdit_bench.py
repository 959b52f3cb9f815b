"""PyTorch reference of the SD3 MMDiT forward benchmark (actors/sd/benches/mmdit.rs): diffusers'
SD3Transformer2DModel for the tiny test fixture (actors/sd/tests/fixtures/sd3/tiny-sd3/transformer,
latents [2, 4, 8, 8], text [2, 24, 48], pooled [2, 32]) and a mid-size SD3.5-shaped config
(4 joint blocks of width 384, QK RMSNorm; latents [2, 16, 32, 32], text [2, 96, 512], pooled
[2, 256]), with the same deterministic inputs and timesteps as the burn side.
torch.set_num_threads(2), torch.no_grad. Timing only: random weights. Median of RUNS forwards
after WARMUP, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import sys

import torch
from diffusers import SD3Transformer2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sd_unet_bench import lcg  # noqa: E402  (the burn benches' inputs)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TINY = os.path.join(ROOT, "actors", "sd", "tests", "fixtures", "sd3", "tiny-sd3", "transformer", "config.json")

MID = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 4,
    "attention_head_dim": 64,
    "num_attention_heads": 6,
    "joint_attention_dim": 512,
    "caption_projection_dim": 384,
    "pooled_projection_dim": 256,
    "out_channels": 16,
    "pos_embed_max_size": 32,
    "qk_norm": "rms_norm",
}

TIMESTEPS = [999.0, 500.0]

def bench(name, config, latents, context, pooled, runs, warmup):
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = SD3Transformer2DModel(**config).eval()
    params = sum(p.numel() for p in model.parameters())
    sample, ctx, pool = lcg(1, latents), lcg(2, context), lcg(3, pooled)
    t = torch.tensor(TIMESTEPS)
    with torch.no_grad():
        for _ in range(warmup):
            model(sample, ctx, pool, t).sample
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(sample, ctx, pool, t).sample
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median_high(times)  # v[len / 2] of the sorted times, as the burn side
    lat = "[" + ",".join(map(str, latents)) + "]"
    cx = "[" + ",".join(map(str, context)) + "]"
    print(f"mmdit {name:<5} {lat:>14} {cx:>12} {params:>10} {ms:>10.1f} {runs:>5}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RLRIG_BENCH_RUNS", 10)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("RLRIG_BENCH_WARMUP", 2)))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(TINY) as f:
        tiny = json.load(f)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per forward")
    print(f"mmdit {'cfg':<5} {'latents':>14} {'context':>12} {'params':>10} {'ms':>10} {'runs':>5}")
    bench("tiny", tiny, [2, 4, 8, 8], [2, 24, 48], [2, 32], args.runs, args.warmup)
    bench("mid", MID, [2, 16, 32, 32], [2, 96, 512], [2, 256], args.runs, args.warmup)


if __name__ == "__main__":
    main()
