#!/usr/bin/env python3
"""From-scratch re-implementation of the tiny SD fixtures with plain torch.nn.functional.

It imports neither diffusers nor transformers: it reads only config.json /
scheduler_config.json / vocab.json / merges.txt and the safetensors files written by
make_sd_fixtures.py, recomputes every reference in out/refs/ and reports the max abs
error. It is the executable version of WEIGHTS.md and a template for the Rust port.

    python functional_reference.py [--out out]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import regex
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

torch.set_num_threads(1)
ATOL = 2e-4  # float32, different op order than diffusers; observed errors are ~1e-6


def load_meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["meta"])


# ----------------------------------------------------------------------------- primitives


def conv(x, w, p, stride=1, padding=None):
    k = w[p + ".weight"]
    pad = (k.shape[-1] - 1) // 2 if padding is None else padding
    return F.conv2d(x, k, w.get(p + ".bias"), stride=stride, padding=pad)


def lin(x, w, p):
    return F.linear(x, w[p + ".weight"], w.get(p + ".bias"))


def gn(x, w, p, groups, eps):
    return F.group_norm(x, groups, w[p + ".weight"], w[p + ".bias"], eps)


def ln(x, w, p, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w[p + ".weight"], w[p + ".bias"], eps)


def mha(q, k, v, heads, causal=False):
    """q: [B, Nq, C], k/v: [B, Nk, C] -> [B, Nq, C]; softmax(q k^T / sqrt(d)) v per head."""
    B, Nq, C = q.shape
    d = C // heads
    q = q.reshape(B, Nq, heads, d).transpose(1, 2)
    k = k.reshape(B, -1, heads, d).transpose(1, 2)
    v = v.reshape(B, -1, heads, d).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) * d**-0.5
    if causal:
        n = s.shape[-1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(B, Nq, C)


# ----------------------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ClipBpe:
    PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.I)

    def __init__(self, tok_dir: Path, max_len: int):
        self.vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
        lines = (tok_dir / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]  # skip "#version"
        self.ranks = {tuple(l.split()): i for i, l in enumerate(x for x in lines if x)}
        self.b2u = bytes_to_unicode()
        self.max_len = max_len
        self.bos, self.eos = self.vocab["<|startoftext|>"], self.vocab["<|endoftext|>"]

    def bpe(self, word):
        sym = list(word[:-1]) + [word[-1] + "</w>"]
        while len(sym) > 1:
            pairs = list(zip(sym, sym[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            out, i = [], 0
            while i < len(sym):
                if i < len(sym) - 1 and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        return sym

    def __call__(self, text: str) -> list[int]:
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for w in self.PAT.findall(text):
            ids += [self.vocab[s] for s in self.bpe("".join(self.b2u[b] for b in w.encode("utf-8")))]
        ids = [self.bos] + ids[: self.max_len - 2] + [self.eos]  # truncation keeps BOS/EOS
        return ids + [self.eos] * (self.max_len - len(ids))  # pad with pad_token (= EOS for SD1)


# ----------------------------------------------------------------------------- CLIP text


def clip_text(w, cfg, ids):
    w = {k.removeprefix("text_model."): v for k, v in w.items()}
    L = ids.shape[1]
    h = w["embeddings.token_embedding.weight"][ids] + w["embeddings.position_embedding.weight"][:L][None]
    hidden = [h]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        x = ln(h, w, p + "layer_norm1", cfg["layer_norm_eps"])
        a = mha(lin(x, w, p + "self_attn.q_proj"), lin(x, w, p + "self_attn.k_proj"), lin(x, w, p + "self_attn.v_proj"),
                cfg["num_attention_heads"], causal=True)
        h = h + lin(a, w, p + "self_attn.out_proj")
        x = lin(ln(h, w, p + "layer_norm2", cfg["layer_norm_eps"]), w, p + "mlp.fc1")
        x = x * torch.sigmoid(1.702 * x) if cfg["hidden_act"] == "quick_gelu" else F.gelu(x)
        h = h + lin(x, w, p + "mlp.fc2")
        hidden.append(h)
    last = ln(h, w, "final_layer_norm", cfg["layer_norm_eps"])
    eos_pos = (ids == cfg["eos_token_id"]).int().argmax(-1)
    return last, last[torch.arange(ids.shape[0]), eos_pos], hidden


# ----------------------------------------------------------------------------- UNet


def timestep_embedding(t, dim, flip_sin_to_cos, freq_shift, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))
    a = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(a), torch.cos(a)], -1)
    return torch.cat([emb[:, half:], emb[:, :half]], -1) if flip_sin_to_cos else emb


def resnet(x, temb, w, p, groups, eps):
    h = conv(F.silu(gn(x, w, p + ".norm1", groups, eps)), w, p + ".conv1")
    if temb is not None:
        h = h + lin(F.silu(temb), w, p + ".time_emb_proj")[:, :, None, None]
    h = conv(F.silu(gn(h, w, p + ".norm2", groups, eps)), w, p + ".conv2")
    if p + ".conv_shortcut.weight" in w:
        x = conv(x, w, p + ".conv_shortcut")
    return x + h  # output_scale_factor = 1


def transformer2d(x, ctx, w, p, heads, groups, linear_proj):
    B, C, H, W = x.shape
    h = gn(x, w, p + ".norm", groups, 1e-6)
    if linear_proj:
        h = lin(h.permute(0, 2, 3, 1).reshape(B, H * W, C), w, p + ".proj_in")
    else:
        h = conv(h, w, p + ".proj_in").permute(0, 2, 3, 1).reshape(B, H * W, C)
    j = 0
    while f"{p}.transformer_blocks.{j}.norm1.weight" in w:
        q = f"{p}.transformer_blocks.{j}"
        n = ln(h, w, q + ".norm1")
        h = h + lin(mha(lin(n, w, q + ".attn1.to_q"), lin(n, w, q + ".attn1.to_k"), lin(n, w, q + ".attn1.to_v"), heads), w, q + ".attn1.to_out.0")
        n = ln(h, w, q + ".norm2")
        h = h + lin(mha(lin(n, w, q + ".attn2.to_q"), lin(ctx, w, q + ".attn2.to_k"), lin(ctx, w, q + ".attn2.to_v"), heads), w, q + ".attn2.to_out.0")
        a, gate = lin(ln(h, w, q + ".norm3"), w, q + ".ff.net.0.proj").chunk(2, -1)  # GEGLU
        h = h + lin(a * F.gelu(gate), w, q + ".ff.net.2")
        j += 1
    if linear_proj:
        h = lin(h, w, p + ".proj_out").reshape(B, H, W, C).permute(0, 3, 1, 2)
    else:
        h = conv(h.reshape(B, H, W, C).permute(0, 3, 1, 2), w, p + ".proj_out")
    return h + x


def unet(w, cfg, x, t, ctx, trace=None):
    trace = {} if trace is None else trace
    g, eps, lin_proj = cfg["norm_num_groups"], cfg["norm_eps"], cfg["use_linear_projection"]
    nblk = len(cfg["block_out_channels"])
    heads = cfg["attention_head_dim"]  # sic: number of heads (diffusers naming bug)
    heads = [heads] * nblk if isinstance(heads, int) else heads
    lpb = cfg["layers_per_block"]
    t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
    temb = timestep_embedding(t, cfg["block_out_channels"][0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
    trace["time_proj"] = temb
    emb = lin(F.silu(lin(temb, w, "time_embedding.linear_1")), w, "time_embedding.linear_2")
    trace["time_embedding"] = emb
    h = conv(x, w, "conv_in")
    trace["conv_in"] = h
    skips = [h]
    for i, bt in enumerate(cfg["down_block_types"]):
        for j in range(lpb):
            h = resnet(h, emb, w, f"down_blocks.{i}.resnets.{j}", g, eps)
            if bt.startswith("CrossAttn"):
                h = transformer2d(h, ctx, w, f"down_blocks.{i}.attentions.{j}", heads[i], g, lin_proj)
            skips.append(h)
        if i < nblk - 1:
            h = conv(h, w, f"down_blocks.{i}.downsamplers.0.conv", stride=2, padding=1)
            skips.append(h)
        trace[f"down_blocks.{i}"] = h
    h = resnet(h, emb, w, "mid_block.resnets.0", g, eps)
    h = transformer2d(h, ctx, w, "mid_block.attentions.0", heads[-1], g, lin_proj)
    h = resnet(h, emb, w, "mid_block.resnets.1", g, eps)
    trace["mid_block"] = h
    rheads = heads[::-1]
    for i, bt in enumerate(cfg["up_block_types"]):
        for j in range(lpb + 1):
            h = torch.cat([h, skips.pop()], 1)  # [current, skip] along channels; skips popped LIFO
            h = resnet(h, emb, w, f"up_blocks.{i}.resnets.{j}", g, eps)
            if bt.startswith("CrossAttn"):
                h = transformer2d(h, ctx, w, f"up_blocks.{i}.attentions.{j}", rheads[i], g, lin_proj)
        if i < nblk - 1:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), w, f"up_blocks.{i}.upsamplers.0.conv")
        trace[f"up_blocks.{i}"] = h
    return conv(F.silu(gn(h, w, "conv_norm_out", g, eps)), w, "conv_out")


# ----------------------------------------------------------------------------- VAE


def vae_attn(x, w, p, groups):
    B, C, H, W = x.shape
    h = gn(x, w, p + ".group_norm", groups, 1e-6).reshape(B, C, H * W).transpose(1, 2)
    a = mha(lin(h, w, p + ".to_q"), lin(h, w, p + ".to_k"), lin(h, w, p + ".to_v"), heads=1)
    return lin(a, w, p + ".to_out.0").transpose(1, 2).reshape(B, C, H, W) + x


def vae_mid(h, w, p, g):
    h = resnet(h, None, w, p + ".resnets.0", g, 1e-6)
    h = vae_attn(h, w, p + ".attentions.0", g)
    return resnet(h, None, w, p + ".resnets.1", g, 1e-6)


def vae_encode(w, cfg, x):
    g, lpb, n = cfg["norm_num_groups"], cfg["layers_per_block"], len(cfg["block_out_channels"])
    h = conv(x, w, "encoder.conv_in")
    for i in range(n):
        for j in range(lpb):
            h = resnet(h, None, w, f"encoder.down_blocks.{i}.resnets.{j}", g, 1e-6)
        if i < n - 1:  # asymmetric pad (right/bottom by 1), then 3x3 stride-2 conv without padding
            h = conv(F.pad(h, (0, 1, 0, 1)), w, f"encoder.down_blocks.{i}.downsamplers.0.conv", stride=2, padding=0)
    h = vae_mid(h, w, "encoder.mid_block", g)
    h = conv(F.silu(gn(h, w, "encoder.conv_norm_out", g, 1e-6)), w, "encoder.conv_out")
    moments = conv(h, w, "quant_conv")
    mean, logvar = moments.chunk(2, 1)
    logvar = logvar.clamp(-30.0, 20.0)
    return mean, torch.exp(0.5 * logvar), logvar


def vae_decode(w, cfg, z):
    g, lpb, n = cfg["norm_num_groups"], cfg["layers_per_block"], len(cfg["block_out_channels"])
    h = conv(conv(z, w, "post_quant_conv"), w, "decoder.conv_in")
    h = vae_mid(h, w, "decoder.mid_block", g)
    for i in range(n):
        for j in range(lpb + 1):
            h = resnet(h, None, w, f"decoder.up_blocks.{i}.resnets.{j}", g, 1e-6)
        if i < n - 1:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), w, f"decoder.up_blocks.{i}.upsamplers.0.conv")
    return conv(F.silu(gn(h, w, "decoder.conv_norm_out", g, 1e-6)), w, "decoder.conv_out")


# ----------------------------------------------------------------------------- schedulers


def alphas_cumprod(c):
    assert c["beta_schedule"] == "scaled_linear"
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, c["num_train_timesteps"], dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, 0)


class Ddim:
    def __init__(self, c):
        self.c, self.ac = c, alphas_cumprod(c)
        self.final = torch.tensor(1.0) if c["set_alpha_to_one"] else self.ac[0]
        self.init_noise_sigma = 1.0

    def set_timesteps(self, n):
        assert self.c["timestep_spacing"] == "leading"
        self.n = n
        ratio = self.c["num_train_timesteps"] // n
        self.timesteps = (np.arange(n) * ratio).round()[::-1].astype(np.int64) + self.c["steps_offset"]
        return self.timesteps

    def scale_model_input(self, x, _i):
        return x

    def step(self, out, i, x):  # eta = 0
        t = int(self.timesteps[i])
        prev = t - self.c["num_train_timesteps"] // self.n
        a_t = self.ac[t]
        a_prev = self.ac[prev] if prev >= 0 else self.final
        b_t = 1 - a_t
        if self.c["prediction_type"] == "epsilon":
            x0, eps = (x - b_t**0.5 * out) / a_t**0.5, out
        else:  # v_prediction
            x0, eps = a_t**0.5 * x - b_t**0.5 * out, a_t**0.5 * out + b_t**0.5 * x
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps, x0


class Euler:
    def __init__(self, c):
        self.c, self.ac = c, alphas_cumprod(c)
        self.all_sigmas = (((1 - self.ac) / self.ac) ** 0.5).numpy()

    def set_timesteps(self, n):
        assert self.c["timestep_spacing"] == "leading" and self.c["interpolation_type"] == "linear"
        ratio = self.c["num_train_timesteps"] // n
        ts = (np.arange(n) * ratio).round()[::-1].astype(np.float32) + self.c["steps_offset"]
        sig = np.interp(ts, np.arange(len(self.all_sigmas)), self.all_sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self.timesteps = ts
        smax = self.sigmas.max()
        self.init_noise_sigma = float((smax**2 + 1) ** 0.5)  # "leading"; linspace/trailing: smax
        return ts

    def scale_model_input(self, x, i):
        return x / (self.sigmas[i] ** 2 + 1) ** 0.5

    def step(self, out, i, x):  # s_churn = 0 -> gamma = 0, sigma_hat = sigma
        s = self.sigmas[i]
        if self.c["prediction_type"] == "epsilon":
            x0 = x - s * out
        else:
            x0 = out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)
        d = (x - x0) / s
        return x + d * (self.sigmas[i + 1] - s), x0


def make_sched(c):
    return Ddim(c) if c["_class_name"] == "DDIMScheduler" else Euler(c)


# ----------------------------------------------------------------------------- checks


class Report:
    def __init__(self):
        self.worst, self.fail = 0.0, []

    def __call__(self, name, got, ref, atol=ATOL):
        err = (got.float() - ref.float()).abs().max().item()
        scale = ref.float().abs().max().item()
        self.worst = max(self.worst, err)
        ok = err <= atol * max(1.0, scale)
        if not ok:
            self.fail.append(name)
        print(f"  {'ok ' if ok else 'BAD'} {name:55s} max|err| {err:.2e}  (max|ref| {scale:.2e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    out = Path(ap.parse_args().out)
    refs = out / "refs"
    sd = out / "tiny-sd"
    rep = Report()
    jl = lambda p: json.loads(Path(p).read_text())  # noqa: E731

    # tokenizer
    tok_cases = jl(refs / "tokenizer_cases.json")
    tok = ClipBpe(sd / "tokenizer", tok_cases["max_length"])
    bad = [c["text"] for c in tok_cases["cases"] if tok(c["text"]) != c["input_ids"]]
    print(f"tokenizer: {len(tok_cases['cases']) - len(bad)}/{len(tok_cases['cases'])} cases match", bad or "")
    if bad:
        rep.fail.append("tokenizer")

    # CLIP
    te_w, te_cfg = load_file(str(sd / "text_encoder/model.safetensors")), jl(sd / "text_encoder/config.json")
    r = load_file(str(refs / "clip.safetensors"))
    last, pooled, hidden = clip_text(te_w, te_cfg, r["input_ids"])
    print("clip:")
    rep("last_hidden_state", last, r["last_hidden_state"])
    rep("pooler_output", pooled, r["pooler_output"])
    for i, h in enumerate(hidden):
        rep(f"hidden_states.{i}", h, r[f"hidden_states.{i}"])

    # UNets
    unets = {}
    for name, d in (("unet_sd", sd / "unet"), ("unet_sd2", out / "tiny-sd2/unet"), ("unet_ip2p", out / "tiny-ip2p/unet")):
        w, cfg = load_file(str(d / "diffusion_pytorch_model.safetensors")), jl(d / "config.json")
        unets[name] = (w, cfg)
        r = load_file(str(refs / f"{name}.safetensors"))
        print(f"{name}:")
        tr = {}
        rep("out", unet(w, cfg, r["sample"], r["timestep"], r["encoder_hidden_states"], tr), r["out"])
        rep("out_t500", unet(w, cfg, r["sample"], torch.tensor(500), r["encoder_hidden_states"]), r["out_t500"])
        for k, v in tr.items():
            if "inter." + k in r:
                rep("inter." + k, v[:1], r["inter." + k])
    w16 = load_file(str(sd / "unet/diffusion_pytorch_model.fp16.safetensors"))
    assert all(w16[k].dtype == torch.float16 and torch.equal(w16[k], v.half()) for k, v in unets["unet_sd"][0].items())
    print("unet fp16 variant: all tensors == fp32.half()")

    # VAE
    vw, vcfg = load_file(str(sd / "vae/diffusion_pytorch_model.safetensors")), jl(sd / "vae/config.json")
    r = load_file(str(refs / "vae.safetensors"))
    mean, std, logvar = vae_encode(vw, vcfg, r["image"])
    print("vae:")
    rep("latent_mean", mean, r["latent_mean"])
    rep("latent_std", std, r["latent_std"])
    rep("decoded", vae_decode(vw, vcfg, r["latent"]), r["decoded"])
    rep("decoded_from_mean", vae_decode(vw, vcfg, mean), r["decoded_from_mean"])

    # schedulers
    r = load_file(str(refs / "schedulers.safetensors"))
    meta = load_meta(refs / "schedulers.safetensors")["configs"]
    print("schedulers:")
    rep("alphas_cumprod", alphas_cumprod(meta["ddim_eps"]), r["alphas_cumprod"], atol=1e-6)
    for sname, c in meta.items():
        s = make_sched(c)
        for n in (2, 10, 50):
            ts = s.set_timesteps(n)
            rep(f"{sname}.n{n}.timesteps", torch.tensor(ts.astype(np.float32)), r[f"{sname}.n{n}.timesteps"], atol=0)
            if isinstance(s, Euler):
                rep(f"{sname}.n{n}.sigmas", s.sigmas, r[f"{sname}.n{n}.sigmas"], atol=1e-6)
        s.set_timesteps(2)
        rep(f"{sname}.init_noise_sigma", torch.tensor([s.init_noise_sigma]), r[f"{sname}.init_noise_sigma"], atol=1e-6)
        x = r["step_input.sample"]
        for i in range(2):
            rep(f"{sname}.step{i}.scaled_input", s.scale_model_input(x, i), r[f"{sname}.step{i}.scaled_input"], atol=1e-6)
            prev, x0 = s.step(r[f"step_input.model_output.{i}"], i, x)
            rep(f"{sname}.step{i}.prev_sample", prev, r[f"{sname}.step{i}.prev_sample"], atol=1e-5)
            rep(f"{sname}.step{i}.pred_original_sample", x0, r[f"{sname}.step{i}.pred_original_sample"], atol=1e-5)
            x = prev

    # pipelines: text -> CLIP -> CFG UNet loop -> VAE decode, all functional
    for pname, uname, sched_path, ip2p in (
        ("pipeline_sd_ddim", "unet_sd", sd / "scheduler", False),
        ("pipeline_sd_euler", "unet_sd", sd / "scheduler_euler", False),
        ("pipeline_sd2_vpred", "unet_sd2", out / "tiny-sd2/scheduler", False),
        ("pipeline_ip2p", "unet_ip2p", out / "tiny-ip2p/scheduler", True),
    ):
        r = load_file(str(refs / f"{pname}.safetensors"))
        m = load_meta(refs / f"{pname}.safetensors")
        print(f"{pname}:")
        cond_ids = torch.tensor([tok(m["prompt"])])
        unc_ids = torch.tensor([tok("")])
        rep("cond_input_ids", cond_ids, r["cond_input_ids"], atol=0)
        cond = clip_text(te_w, te_cfg, cond_ids)[0]
        unc = clip_text(te_w, te_cfg, unc_ids)[0]
        ctx = torch.cat([cond, unc, unc]) if ip2p else torch.cat([unc, cond])
        rep("encoder_hidden_states", ctx, r["encoder_hidden_states"])
        s = make_sched(jl(sched_path / "scheduler_config.json"))
        s.set_timesteps(int(m["num_inference_steps"]))
        lat = r["latents_in"] * s.init_noise_sigma
        w, cfg = unets[uname]
        if ip2p:
            mean, _, _ = vae_encode(vw, vcfg, r["image_in_01"] * 2 - 1)  # mode() == mean, no scaling_factor
            rep("image_latents", mean, r["image_latents"])
            img_lat = torch.cat([mean, mean, torch.zeros_like(mean)])
        for i, t in enumerate(s.timesteps):
            rep(f"step{i}.timestep", torch.tensor([float(t)]), r[f"step{i}.timestep"], atol=0)
            xin = s.scale_model_input(torch.cat([lat] * (3 if ip2p else 2)), i)
            if ip2p:
                xin = torch.cat([xin, img_lat], 1)
            rep(f"step{i}.unet_sample", xin, r[f"step{i}.unet_sample"])
            o = unet(w, cfg, xin, torch.tensor([float(t)]), ctx)
            rep(f"step{i}.unet_out", o, r[f"step{i}.unet_out"])
            if ip2p:
                o_text, o_img, o_unc = o.chunk(3)
                g = o_unc + float(m["guidance_scale"]) * (o_text - o_img) + float(m["image_guidance_scale"]) * (o_img - o_unc)
            else:
                o_unc, o_text = o.chunk(2)
                g = o_unc + float(m["guidance_scale"]) * (o_text - o_unc)
            lat = s.step(g, i, lat)[0]
            rep(f"step{i}.latents_after", lat, r[f"step{i}.latents_after"])
        rep("latents_out", lat, r["latents_out"])
        raw = vae_decode(vw, vcfg, lat / vcfg["scaling_factor"])
        rep("vae_decoded_raw", raw, r["vae_decoded_raw"])
        rep("image_out", (raw / 2 + 0.5).clamp(0, 1), r["image_out"])

    print(f"\nworst max|err| {rep.worst:.2e}; failures: {rep.fail or 'none'}")
    raise SystemExit(1 if rep.fail else 0)


if __name__ == "__main__":
    main()
