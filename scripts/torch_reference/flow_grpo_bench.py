"""PyTorch reference of phase 2's costs (actors/models/benches/flow_grpo.rs): the Editor DiT
(in 6 = noisy image + source, out 3, patch 8, width 128, depth 6, 4 heads, clean-image
prediction) sampling B edits with the 10-step Flow-GRPO SDE sampler (states rounded to f16 as
rlrig stores them), and one Flow-GRPO learner step on those chains: per-step log-probs with
autograd, the frozen reference's step means for the Gaussian KL (beta 0.04), clipped ratio
(eps 1e-3), token-mean, backward, per-tensor gradient-norm clipping (as burn's
GradientClipping::Norm), AdamW. torch.set_num_threads(2). Timing only: random weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit import DiT, DiTConfig  # noqa: E402


def velocity(model, x, cond, s, ids):
    out = model(torch.cat([x, cond], dim=1), torch.full((x.shape[0],), s), ids)
    return (x - out) / max(s, 1e-4)  # clean-image prediction -> velocity


def coefs(k, steps, a=0.7):
    levels = [1.0 - i / steps for i in range(steps + 1)]
    s, s_next = levels[k], levels[k + 1]
    dt = s_next - s
    sigma = a * math.sqrt(s / (1.0 - (levels[1] if s >= 1.0 else s)))
    return s, sigma * math.sqrt(-dt), 1.0 + sigma**2 / (2 * s) * dt, (1.0 + sigma**2 * (1 - s) / (2 * s)) * dt


def gaussian(x_next, mean, std):
    lp = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


@torch.no_grad()
def sample(model, cond, ids, steps, gen):
    b = cond.shape[0]
    x = torch.randn(b, 3, 32, 32, generator=gen).half().float()
    states, logps = [x], []
    for k in range(steps):
        s, std, xc, vc = coefs(k, steps)
        mean = xc * x + vc * velocity(model, x, cond, s, ids)
        x = (mean + std * torch.randn(x.shape, generator=gen)).half().float()
        logps.append(gaussian(x, mean, std))
        states.append(x)
    return torch.stack(states, 1), torch.stack(logps, 1)


def learner_step(model, ref, opt, states, old, adv, cond, ids, beta=0.04, eps=1e-3):
    steps = old.shape[1]
    opt.zero_grad(set_to_none=True)
    logps, kls = [], []
    for k in range(steps):
        s, std, xc, vc = coefs(k, steps)
        x, xn = states[:, k], states[:, k + 1]
        mean = xc * x + vc * velocity(model, x, cond, s, ids)
        logps.append(gaussian(xn, mean, std))
        with torch.no_grad():
            mean_ref = xc * x + vc * velocity(ref, x, cond, s, ids)
        kls.append(((mean - mean_ref) ** 2 / (2 * std**2)).flatten(1).mean(1))
    logp, kl = torch.stack(logps, 1), torch.stack(kls, 1)
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    obj = torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
    loss = (-obj + beta * kl).mean()
    loss.backward()
    for p in model.parameters():
        torch.nn.utils.clip_grad_norm_([p], 1.0)
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/torch_flow_grpo.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = DiTConfig(in_channels=6, out_channels=3, patch=8, width=128, depth=6, heads=4, text_len=48, vocab=32)
    model = DiT(cfg)
    for p in model.parameters():  # the zero-initialised layers would hide nothing of the cost
        p.data.add_(0.02 * torch.randn(p.shape, generator=gen))
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    b = args.groups * 8
    cond = torch.rand(b, 3, 32, 32, generator=gen) * 2 - 1
    ids = torch.zeros(b, 48, dtype=torch.long)
    ids[:, :11] = torch.randint(1, 24, (b, 11), generator=gen)
    states, old = sample(model, cond, ids, 10, gen)
    sampling = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        states, old = sample(model, cond, ids, 10, gen)
        sampling.append((time.perf_counter() - t0) * 1e3)
    adv = torch.randn(b, generator=gen)
    learner_step(model, ref, opt, states, old, adv, cond, ids)
    steps = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        learner_step(model, ref, opt, states, old, adv, cond, ids)
        steps.append((time.perf_counter() - t0) * 1e3)
    r = {"torch": torch.__version__, "threads": torch.get_num_threads(), "chains": b, "steps": 10,
         "sampling_ms_median": statistics.median(sampling), "learner_step_ms_median": statistics.median(steps)}
    print(f"torch flow-grpo {b} chains x 10 steps: sampling {r['sampling_ms_median']:.1f} ms, "
          f"learner step {r['learner_step_ms_median']:.1f} ms (medians of {args.runs})")
    with open(args.out, "w") as f:
        json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
