"""Quick sanity checks of the PyTorch reference DiT (not a test suite; run by hand).

* parameter count for patch 4 and patch 8,
* zero-init: the untrained network outputs exactly 0,
* patchify / unpatchify are inverses; padding keys are really masked (changing the token id
  under a <pad> position does not change the output),
* the rectified-flow loss on one fixed random batch decreases over 50 AdamW (lr 1e-3) steps,
* the CFG Euler sampler runs and gives finite images.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit import DiT, DiTConfig, param_count, rf_loss, sample_euler  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for p in (4, 8):
        print(f"patch {p}: {param_count(DiT(DiTConfig(patch=p))):,} parameters")

    cfg = DiTConfig(patch=4)
    model = DiT(cfg)
    b = 16
    x0 = torch.rand(b, 3, 32, 32) * 2 - 1
    ids = torch.randint(1, cfg.vocab, (b, cfg.text_len))
    ids[:, 12:] = 0
    s = torch.rand(b)

    # Zero-init output layer -> v == 0 exactly.
    assert model(x0, s, ids).abs().max().item() == 0.0
    # patchify / unpatchify round trip (out_channels == in_channels here).
    assert torch.equal(model.unpatchify(model.patchify(x0)), x0)

    # Perturb weights so the masking check is meaningful, then check pad keys are masked.
    probe = DiT(cfg)
    with torch.no_grad():
        for prm in probe.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    ids2 = ids.clone()
    ids2[:, 30] = 7  # would be a real token, but now position 30 is not <pad> -> output changes
    out1 = probe(x0, s, ids)
    assert not torch.allclose(out1, probe(x0, s, ids2))
    probe_pad = DiT(cfg)
    probe_pad.load_state_dict(probe.state_dict())
    with torch.no_grad():
        probe_pad.text.tok.weight[0].add_(1.0)  # change the <pad> embedding: image output unaffected
    assert torch.allclose(out1, probe_pad(x0, s, ids), atol=1e-5)
    print("zero-init, patchify round trip and padding mask: ok")

    # Loss on a fixed batch decreases over 50 AdamW steps (fixed noise/s per step via reseeding).
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)

    def eval_loss() -> float:
        with torch.no_grad():
            g = torch.get_rng_state()
            torch.manual_seed(1234)
            val = sum(rf_loss(model, x0, ids, p_uncond=0.0).item() for _ in range(8)) / 8
            torch.set_rng_state(g)
            return val

    first = eval_loss()
    losses = []
    for step in range(50):
        opt.zero_grad(set_to_none=True)
        loss = rf_loss(model, x0, ids)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    last = eval_loss()
    print(f"fixed-batch loss (8 fixed noise draws): {first:.4f} before -> {last:.4f} after 50 steps")
    print("train losses: " + " ".join(f"{l:.3f}" for l in losses[::5]))
    assert last < first, "loss did not decrease"

    img = sample_euler(model, ids[:4], steps=5, guidance=2.0)
    assert img.shape == (4, 3, 32, 32) and torch.isfinite(img).all()
    print("sampler: ok")


if __name__ == "__main__":
    main()
