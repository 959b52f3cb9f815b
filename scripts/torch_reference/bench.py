"""Benchmark of the PyTorch reference DiT (docs/models.md, "Benchmark configuration").

Train step  = forward + backward + AdamW (lr 1e-3) update, batch 16, 32x32x3, random inputs.
Sampling    = 16 images x 20 Euler steps with CFG (two forward passes per step), no_grad.
For patch 4, patch 8, and patch 8 with a 2-layer text encoder (text_layers 2, the shipped
Diffuser's; labelled "8+text2"), on torch.set_num_threads(2). Prints a table, writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit import DiT, DiTConfig, param_count, rf_loss, sample_euler  # noqa: E402


def random_ids(batch: int, text_len: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Random token ids 1..vocab-1 with a random prompt length 4..24, the rest <pad> = 0."""
    ids = torch.randint(1, vocab, (batch, text_len), generator=gen)
    lengths = torch.randint(4, 25, (batch,), generator=gen)
    keep = torch.arange(text_len)[None, :] < lengths[:, None]
    return torch.where(keep, ids, torch.zeros_like(ids))


def time_it(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def parse_config(label: str) -> tuple[int, int]:
    """"8" -> (patch 8, no text encoder); "8+text2" -> (patch 8, text_layers 2)."""
    patch, _, text = label.partition("+text")
    return int(patch), int(text) if text else 0


def bench_patch(patch: int, args, text_layers: int = 0) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = DiTConfig(in_channels=3, out_channels=3, patch=patch, width=128, depth=6, heads=4,
                    text_len=48, vocab=32, text_layers=text_layers)
    model = DiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    b = args.batch
    x0 = torch.rand(b, 3, 32, 32, generator=gen) * 2.0 - 1.0
    ids = random_ids(b, cfg.text_len, cfg.vocab, gen)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = rf_loss(model, x0, ids)
        loss.backward()
        opt.step()

    model.train()
    train_ms = time_it(train_step, args.warmup, args.reps)

    model.eval()
    noise = torch.randn(b, 3, 32, 32, generator=gen)

    def sample():
        sample_euler(model, ids, steps=args.steps, guidance=2.0, noise=noise)

    sample_ms = time_it(sample, args.sample_warmup, args.sample_reps)
    return {
        "label": f"{patch}+text{text_layers}" if text_layers else str(patch),
        "text_layers": text_layers,
        "patch": patch,
        "tokens": cfg.image_size // patch * (cfg.image_size // patch) + cfg.text_len,
        "params": param_count(model),
        "train_step_ms_median": statistics.median(train_ms),
        "train_step_ms_all": train_ms,
        "sample_batch_ms_median": statistics.median(sample_ms),
        "sample_batch_ms_all": sample_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/torch_bench.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="Euler steps per sampling batch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sample-warmup", type=int, default=1)
    ap.add_argument("--sample-reps", type=int, default=5)
    ap.add_argument("--patches", type=int, nargs="+", default=[4, 8],
                    help="patch sizes timed without a text encoder")
    ap.add_argument("--text-configs", nargs="*", default=["8+text2"],
                    help="configurations with a text encoder, PATCH+textLAYERS")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    configs = [(p, 0) for p in args.patches] + [parse_config(c) for c in args.text_configs]
    results = [bench_patch(p, args, text_layers=t) for p, t in configs]
    load_after = os.getloadavg()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load avg before {load[0]:.2f} / after {load_after[0]:.2f}")
    print(f"{'patch':>7} {'tokens':>6} {'params':>10} {'train step ms':>14} {'sample batch ms':>16}")
    for r in results:
        print(f"{r['label']:>7} {r['tokens']:>6} {r['params']:>10,} "
              f"{r['train_step_ms_median']:>14.1f} {r['sample_batch_ms_median']:>16.1f}")
    print(f"(train: batch {args.batch}, median of {args.reps} after {args.warmup} warm-ups; "
          f"sample: {args.batch} images x {args.steps} Euler steps x 2 passes (CFG), "
          f"median of {args.sample_reps} after {args.sample_warmup} warm-up)")

    report = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "loadavg_before": load,
        "loadavg_after": load_after,
        "config": {"batch": args.batch, "image": [3, 32, 32], "width": 128, "depth": 6, "heads": 4,
                   "text_len": 48, "vocab": 32, "euler_steps": args.steps, "cfg_passes_per_step": 2,
                   "warmup": args.warmup, "reps": args.reps, "sample_warmup": args.sample_warmup,
                   "sample_reps": args.sample_reps, "optimizer": "AdamW lr 1e-3 betas 0.9/0.999 wd 0"},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
