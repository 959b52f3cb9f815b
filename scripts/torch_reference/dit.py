"""PyTorch reference of rlrig's small DiT (docs/models.md).

A benchmark and parity reference only: the burn implementation (crate `rlrig-models`) is the
real one; nothing in the Rust test suite or CI imports this file. Plain torch, no other packages.

Conventions that docs/models.md leaves open are fixed here (and must be matched by the burn side
for parity checks):

* Patch tokens are in row-major order (patch row, then patch column); each patch is flattened
  channel-major (C, P, P). The final Linear's P*P*out outputs are read back the same way
  (out, P, P).
* 1-D sin-cos position embedding of position p in dim d (MAE convention):
  omega_i = 1 / 10000^(i / (d/2)), i = 0 .. d/2-1; emb = [sin(p*omega), cos(p*omega)].
* 2-D sin-cos on a g x g grid of patches (MAE / DiT `get_2d_sincos_pos_embed`): the first D/2
  dims are the 1-D embedding of the patch *column* index, the last D/2 dims that of the patch
  *row* index.
* Timestep embedding (DiT): t = 1000*s, freqs_i = exp(-ln(10000) * i / 128), i = 0..127;
  emb = [cos(t*freqs), sin(t*freqs)] (256 dims).
* Attention: one Linear(D -> 3D) (q, k, v in that order, heads split as (3, H, D/H)), scaled
  dot-product attention, Linear(D -> D). All Linears have biases.
* Initialisation (DiT): Linears xavier-uniform with zero bias, except the timestep MLP (normal
  std 0.02), the adaLN modulation Linears and the final output Linear (all zero). Token embedding
  normal std 0.02. Position embeddings are fixed buffers, not parameters.
* Text encoder (``text_layers > 0``, burn's ``DitConfig::text_layers``): the embedded prompt
  (token + positions) passes ``text_layers`` pre-LayerNorm transformer blocks over the prompt
  alone (burn's ``vlm::Block``: affine LayerNorm eps 1e-5, the attention above, Linear-GELU(tanh)
  -Linear MLP, no adaLN), where a padding token is never a key except to itself; then an affine
  LayerNorm (eps 1e-5) and a zero-initialised Linear whose output is added to the embeddings.
  The blocks' Linears are xavier-uniform with zero bias, the LayerNorms ones / zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_ID = 0


@dataclass
class DiTConfig:
    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    patch: int = 4
    width: int = 128
    depth: int = 6
    heads: int = 4
    text_len: int = 48
    vocab: int = 32
    mlp_ratio: int = 4
    text_layers: int = 0


# --------------------------------------------------------------------------------------------
# Fixed embeddings
# --------------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(len(pos), dim): [sin(p*omega), cos(p*omega)], omega_i = 10000^(-i/(dim/2))."""
    assert dim % 2 == 0
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / (10000.0**omega)
    out = pos.to(torch.float64).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim), tokens row-major; first half encodes the column, second half the row."""
    assert dim % 4 == 0
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb_col = sincos_1d(dim // 2, cols.reshape(-1))
    emb_row = sincos_1d(dim // 2, rows.reshape(-1))
    return torch.cat([emb_col, emb_row], dim=1)


def timestep_embedding(s: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of 1000*s: [cos(t*f), sin(t*f)], f_i = exp(-ln(max_period)*i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    args = (1000.0 * s.float())[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(timestep_embedding(s, self.freq_dim))))


class TextEmbedder(nn.Module):
    """Embedding(V, D) + fixed 1-D sin-cos positions over text_len; with text_layers > 0, plus
    proj(ln(blocks(that))), proj zero-initialised (by DiT.reset_parameters)."""

    def __init__(self, vocab: int, width: int, text_len: int, heads: int = 4, mlp_ratio: int = 4,
                 text_layers: int = 0):
        super().__init__()
        self.text_len = text_len
        self.tok = nn.Embedding(vocab, width)
        self.register_buffer("pos", sincos_1d(width, torch.arange(text_len)), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(text_layers))
        if text_layers > 0:
            self.ln = nn.LayerNorm(width, eps=1e-5)
            self.proj = nn.Linear(width, width)
            self.register_buffer("own", torch.eye(text_len, dtype=torch.bool), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.shape[1] == self.text_len
        e = self.tok(ids) + self.pos[None]
        if len(self.blocks) == 0:
            return e
        # (B, 1, L, L), True = may attend: real keys, and every token to itself (so that an
        # all-padding prompt, the unconditional one, has a defined output; the DiT masks it out).
        allowed = ((ids != PAD_ID)[:, None, :] | self.own[None])[:, None]
        h = e
        for blk in self.blocks:
            h = blk(h, allowed)
        return e + self.proj(self.ln(h))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, Dh)
        # key_mask: (B, N) bool, True = may be attended to, broadcast over heads and queries; or
        # an already broadcastable (B, 1, N, N) mask.
        mask = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (burn's vlm::Block): z + Attn(LN(z)), then z + MLP(LN(z))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=1e-5)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = z + self.attn(self.ln1(z), mask)
        return z + self.fc2(F.gelu(self.fc1(self.ln2(z)), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)
        self.ada = nn.Linear(width, 6 * width)

    def forward(self, z: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        z = z + g1[:, None, :] * self.attn(modulate(layer_norm(z), sh1, sc1), key_mask)
        h = modulate(layer_norm(z), sh2, sc2)
        z = z + g2[:, None, :] * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))
        return z


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch: int, out_channels: int):
        super().__init__()
        self.ada = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, patch * patch * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh, sc = self.ada(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(layer_norm(x), sh, sc))


class DiT(nn.Module):
    """v_theta(x_s, s, text ids): (B, in, H, W), (B,), (B, text_len) long -> (B, out, H, W)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        p, g = cfg.patch, cfg.image_size // cfg.patch
        assert cfg.image_size % p == 0
        self.grid = g
        self.num_patches = g * g
        self.patch_embed = nn.Linear(cfg.in_channels * p * p, cfg.width)
        self.register_buffer("pos", sincos_2d(cfg.width, g), persistent=False)
        self.t_embed = TimestepEmbedder(cfg.width)
        self.text = TextEmbedder(cfg.vocab, cfg.width, cfg.text_len, cfg.heads, cfg.mlp_ratio,
                                 cfg.text_layers)
        self.blocks = nn.ModuleList(DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg.width, p, cfg.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.text.tok.weight, std=0.02)
        nn.init.normal_(self.t_embed.fc1.weight, std=0.02)
        nn.init.normal_(self.t_embed.fc2.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada.weight)
            nn.init.zeros_(blk.ada.bias)
        zero = [self.final.ada, self.final.linear]
        if self.cfg.text_layers > 0:
            zero.append(self.text.proj)
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # (B, C, H, W) -> (B, N, C*P*P), patches row-major, each flattened channel-major.
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p, g = self.cfg.patch, self.grid
        x = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, g * g, c * p * p)

    # (B, N, out*P*P) -> (B, out, H, W), inverse of patchify.
    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        b = t.shape[0]
        p, g, c = self.cfg.patch, self.grid, self.cfg.out_channels
        t = t.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return t.reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, s: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        img = self.patch_embed(self.patchify(x)) + self.pos[None]
        txt = self.text(ids)
        z = torch.cat([img, txt], dim=1)
        key_mask = torch.cat(
            [torch.ones(b, self.num_patches, dtype=torch.bool, device=x.device), ids != PAD_ID], dim=1
        )
        c = self.t_embed(s)
        for blk in self.blocks:
            z = blk(z, c, key_mask)
        return self.unpatchify(self.final(z[:, : self.num_patches], c))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Rectified flow
# --------------------------------------------------------------------------------------------


def unconditional_ids(batch: int, text_len: int, device=None) -> torch.Tensor:
    return torch.full((batch, text_len), PAD_ID, dtype=torch.long, device=device)


def rf_loss(model: DiT, x0: torch.Tensor, ids: torch.Tensor, p_uncond: float = 0.1) -> torch.Tensor:
    """x0 in [-1, 1]. s ~ sigmoid(N(0,1)), x_s = (1-s) x0 + s eps, target v = eps - x0."""
    b = x0.shape[0]
    s = torch.sigmoid(torch.randn(b, device=x0.device))
    eps = torch.randn_like(x0)
    sb = s[:, None, None, None]
    xs = (1.0 - sb) * x0 + sb * eps
    drop = torch.rand(b, device=x0.device) < p_uncond
    ids = torch.where(drop[:, None], torch.full_like(ids, PAD_ID), ids)
    v = model(xs, s, ids)
    return F.mse_loss(v, eps - x0)


def cfg_velocity(model: DiT, x: torch.Tensor, s: float, ids: torch.Tensor, guidance: float) -> torch.Tensor:
    """v = v_u + w (v_c - v_u): two forward passes (conditional, unconditional)."""
    b = x.shape[0]
    sv = torch.full((b,), s, device=x.device)
    v_c = model(x, sv, ids)
    v_u = model(x, sv, unconditional_ids(b, ids.shape[1], x.device))
    return v_u + guidance * (v_c - v_u)


@torch.no_grad()
def sample_euler(
    model: DiT, ids: torch.Tensor, steps: int = 20, guidance: float = 1.0, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Euler ODE from s = 1 (noise) to s = 0: x <- x + (s_next - s) v."""
    cfg = model.cfg
    b = ids.shape[0]
    x = noise if noise is not None else torch.randn(b, cfg.out_channels, cfg.image_size, cfg.image_size)
    levels = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for s, s_next in zip(levels[:-1], levels[1:]):
        x = x + (s_next - s) * cfg_velocity(model, x, s, ids, guidance)
    return x


def sde_step(
    x: torch.Tensor, v: torch.Tensor, s: float, s_next: float, s_one_next: float, a: float = 0.7,
    noise: torch.Tensor | None = None, x_next: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Flow-GRPO SDE step (docs/models.md). Returns (x', per-sample mean log p(x')).

    s_one_next is the noise level after s = 1 in the schedule (used in the denominator at s = 1).
    If x_next is given its log-density is evaluated instead of drawing a new sample.
    """
    dt = s_next - s  # < 0
    sigma = a * math.sqrt(s / (1.0 - (s_one_next if s >= 1.0 else s)))
    mean = x * (1.0 + sigma**2 / (2.0 * s) * dt) + v * (1.0 + sigma**2 * (1.0 - s) / (2.0 * s)) * dt
    std = sigma * math.sqrt(-dt)
    if x_next is None:
        x_next = mean + std * (noise if noise is not None else torch.randn_like(x))
    logp = -((x_next - mean) ** 2) / (2.0 * std**2) - math.log(std) - 0.5 * math.log(2.0 * math.pi)
    return x_next, logp.flatten(1).mean(dim=1)
