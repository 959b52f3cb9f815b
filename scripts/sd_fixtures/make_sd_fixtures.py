#!/usr/bin/env python3
"""Build tiny random-weight Stable Diffusion fixtures for framework-parity tests.

Everything is built from configs with fixed seeds (no model hub access, no
``from_pretrained`` on hub ids). Output layout (default ``out/``)::

    tiny-sd/            StableDiffusionPipeline directory (diffusers layout)
      model_index.json
      unet/             UNet2DConditionModel, fp32 + fp16 variant weights
      vae/              AutoencoderKL
      text_encoder/     CLIPTextModel (keys with the classic ``text_model.`` prefix)
      tokenizer/        hand-made CLIP BPE (vocab.json, merges.txt, tokenizer.json)
      scheduler/        DDIMScheduler config (epsilon)
      scheduler_euler/  EulerDiscreteScheduler config (epsilon)
    tiny-sd2/           SD 2.x-style UNet + v_prediction scheduler configs
      unet/ scheduler/ scheduler_euler/
      (vae / text encoder / tokenizer are shared with tiny-sd)
    tiny-ip2p/          InstructPix2Pix-shaped UNet (in_channels 8)
      unet/ scheduler/ (EulerDiscrete, epsilon)
    refs/               fixed inputs + reference outputs (safetensors, float32)
      tokenizer_cases.json, clip.safetensors, unet_sd.safetensors,
      unet_sd2.safetensors, unet_ip2p.safetensors, vae.safetensors,
      schedulers.safetensors, pipeline_sd_ddim.safetensors,
      pipeline_sd_euler.safetensors, pipeline_sd2_vpred.safetensors,
      pipeline_ip2p.safetensors, index.json
    tensor_inventory.md every tensor (name, dtype, shape) of every file above
    SHA256SUMS          checksums of all files in out/ (determinism check)

Usage::

    python make_sd_fixtures.py [--out out] [--small] [--update-weights-md WEIGHTS.md]

``--small`` uses block_out_channels (16, 32) everywhere (≈1/4 of the size).

All reference tensors are computed from the models *re-loaded from the written
fixture directories* (so the weights on disk are exactly the ones that produced
the references). CPU, float32, one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import warnings
from collections import Counter, OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore")

import regex  # noqa: E402  (dependency of transformers; supports \p{L})
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

MAX_LEN = 16  # tokenizer model_max_length == text encoder max_position_embeddings
HIDDEN = 32  # CLIP hidden size == UNet cross_attention_dim

# --------------------------------------------------------------------------------------
# Tokenizer: a tiny CLIP byte-level BPE built from a handful of words
# --------------------------------------------------------------------------------------

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Same pre-tokenizer regex as the original CLIP tokenizer (after lower-casing).
PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)

# Words the BPE is trained on (every one of them ends up a single token).
CORPUS = """
a photo of an astronaut riding a horse on mars
turn the sky into a starry night
make it look like a painting
make it snow
a cat and a dog
high quality detailed picture of the city at night
red green blue
"""
# Strings whose tokenization is recorded (some words are NOT in CORPUS on purpose).
TOKENIZER_CASES = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "Turn the SKY into a   starry\tnight!",
    "make it look like a painting, 2 cats & 10 dogs",
    "zebra's quixotic jump",
    "café naïve",
    "a photo of a cat and a dog and a horse and a cat and a dog on mars at night",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode char map (order matters for ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_ENCODER = bytes_to_unicode()


def pre_tokenize(text: str) -> list[str]:
    """CLIP text cleanup (whitespace collapse + lower) and regex split, then byte->unicode."""
    text = regex.sub(r"\s+", " ", text).strip().lower()
    return ["".join(BYTE_ENCODER[b] for b in w.encode("utf-8")) for w in PAT.findall(text)]


def train_bpe(corpus: str) -> list[tuple[str, str]]:
    """Tiny deterministic BPE trainer: merge the most frequent pair (ties: lexicographic)."""
    words = Counter(pre_tokenize(corpus))
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for w, sym in seqs.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, sym in seqs.items():
            out, i = [], 0
            while i < len(sym):
                if i < len(sym) - 1 and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            seqs[w] = tuple(out)
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP vocab order: 256 byte chars, 256 byte chars + '</w>', merge results, BOS, EOS."""
    base = list(BYTE_ENCODER.values())
    toks = base + [t + "</w>" for t in base]
    seen = set(toks)
    for a, b in merges:
        if a + b not in seen:
            toks.append(a + b)
            seen.add(a + b)
    toks += [BOS, EOS]
    return {t: i for i, t in enumerate(toks)}


def reference_bpe_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    """Pure-python CLIP BPE (what the Rust port must reproduce). Returns ids incl. BOS/EOS, no padding."""
    ranks = {m: i for i, m in enumerate(merges)}
    ids = [vocab[BOS]]
    for word in pre_tokenize(text):
        sym = list(word[:-1]) + [word[-1] + "</w>"]
        while len(sym) > 1:
            pairs = [(sym[i], sym[i + 1]) for i in range(len(sym) - 1)]
            best = min(pairs, key=lambda p: ranks.get(p, math.inf))
            if best not in ranks:
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
        ids += [vocab[s] for s in sym]
    ids.append(vocab[EOS])
    return ids


def write_tokenizer(tok_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]], CLIPTokenizer]:
    merges = train_bpe(CORPUS)
    vocab = build_vocab(merges)
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (tok_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (tok_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    cfg = {
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MAX_LEN,
        "tokenizer_class": "CLIPTokenizer",
        **special,
    }
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # Load from vocab.json/merges.txt only, then also emit the equivalent tokenizer.json
    # (the `tokenizers`-crate format) next to them.
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    tok.backend_tokenizer.save(str(tok_dir / "tokenizer.json"))
    return vocab, merges, tok


# --------------------------------------------------------------------------------------
# Model configs
# --------------------------------------------------------------------------------------


def unet_kwargs(ch: tuple[int, int], **over) -> dict:
    kw = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=HIDDEN,
        attention_head_dim=2,  # NB: diffusers uses this as the number of *heads* (see WEIGHTS.md)
        norm_num_groups=8,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )
    kw.update(over)
    return kw


def vae_kwargs(ch: tuple[int, int]) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=ch,
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    )


def clip_config(vocab: dict[str, int]) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=HIDDEN,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )


SCHED_COMMON = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def ddim(pred: str) -> DDIMScheduler:
    # SD 1.x / 2.x hub configs: clip_sample False, set_alpha_to_one False, steps_offset 1, "leading".
    return DDIMScheduler(
        **SCHED_COMMON,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=pred,
        timestep_spacing="leading",
    )


def euler(pred: str) -> EulerDiscreteScheduler:
    # SDXL-style Euler config: "leading" spacing + steps_offset 1 (init_noise_sigma = sqrt(smax^2+1)).
    return EulerDiscreteScheduler(
        **SCHED_COMMON,
        prediction_type=pred,
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Overwrite *every* parameter with seeded random values so that each one matters
    (default inits leave norms at 1/0 and some biases at 0, which hides swapped tensors).
    Matrices/kernels: N(0, 1/fan_in); norm weights: 1 + 0.1 N; biases/other 1-D: 0.1 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def f32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()
    return t.contiguous().clone()


class RefWriter:
    """Collects reference tensors into one safetensors file per group + a global index."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.index: dict = OrderedDict()

    def save(self, name: str, tensors: dict, meta: dict, notes: dict | None = None) -> None:
        tensors = OrderedDict((k, f32(v)) for k, v in tensors.items())
        # One metadata key holding sorted JSON: safetensors serializes the metadata map from a
        # Rust HashMap, so several keys would come out in a random order (non-reproducible bytes).
        meta_s = {"meta": json.dumps(meta, sort_keys=True, default=str)}
        save_file(tensors, str(self.root / f"{name}.safetensors"), metadata=meta_s)
        self.index[name] = {
            "file": f"{name}.safetensors",
            "meta": meta,
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), **({"note": notes[k]} if notes and k in notes else {})}
                for k, v in tensors.items()
            },
        }


def public_config(cfg) -> dict:
    """Config dict without private keys (`_name_or_path` is path dependent, `_use_default_values`
    has set order); `_class_name` is kept."""
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_") or k == "_class_name"}


def add_prefix_to_safetensors(path: Path, prefix: str) -> None:
    sd = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file({prefix + k if not k.startswith(prefix) else k: v for k, v in sd.items()}, str(path), metadata=meta)


def capture(module: torch.nn.Module, names: list[str], store: dict, prefix: str = "", keep: int | None = None):
    """Forward hooks recording the (first) output of submodules, keyed by module path.
    ``keep``: store only the first ``keep`` batch items (keeps the fixture small)."""
    handles = []
    for n in names:
        sub = module.get_submodule(n)

        def hook(_m, _inp, out, n=n):
            o = out[0] if isinstance(out, (tuple, list)) else out
            if hasattr(o, "sample"):
                o = o.sample
            store[prefix + n] = f32(o[:keep] if keep else o)

        handles.append(sub.register_forward_hook(hook))
    return handles


def capture_io(module: torch.nn.Module, name: str, store: dict, prefix: str = "", keep: int | None = None):
    """Record input hidden_states (first positional arg) and output of one submodule."""
    sub = module.get_submodule(name)

    def pre(_m, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_tensor"))
        store[prefix + name + ".in"] = f32(x[:keep] if keep else x)

    def post(_m, _inp, out):
        o = out[0] if isinstance(out, (tuple, list)) else out
        if hasattr(o, "sample"):
            o = o.sample
        store[prefix + name + ".out"] = f32(o[:keep] if keep else o)

    return [sub.register_forward_pre_hook(pre, with_kwargs=True), sub.register_forward_hook(post)]


class UNetRecorder:
    """Records every UNet call made by a pipeline (inputs and raw, un-guided outputs)."""

    def __init__(self, unet):
        self.calls: list[dict] = []
        self.h = [
            unet.register_forward_pre_hook(self.pre, with_kwargs=True),
            unet.register_forward_hook(self.post, with_kwargs=True),
        ]

    def pre(self, _m, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.calls.append(
            {
                "sample": f32(sample),
                "timestep": f32(torch.as_tensor(t, dtype=torch.float32).reshape(1)),
                "encoder_hidden_states": f32(kwargs["encoder_hidden_states"]),
            }
        )

    def post(self, _m, _args, _kwargs, out):
        o = out[0] if isinstance(out, (tuple, list)) else out.sample
        self.calls[-1]["out"] = f32(o)

    def remove(self):
        for h in self.h:
            h.remove()


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    ap.add_argument("--small", action="store_true", help="block_out_channels (16, 32) instead of (32, 64)")
    ap.add_argument("--update-weights-md", default=None, help="rewrite the generated section of this WEIGHTS.md")
    args = ap.parse_args()

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ch = (16, 32) if args.small else (32, 64)
    sd_dir, sd2_dir, ip2p_dir, refs_dir = out / "tiny-sd", out / "tiny-sd2", out / "tiny-ip2p", out / "refs"
    refs = RefWriter(refs_dir)
    versions = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "preset": "small" if args.small else "default",
    }

    # ---------------- build + randomize + save -------------------------------------------
    print("building models ...", flush=True)
    tmp_tok = out / "_tok"
    vocab, merges, tok_from_vocab_merges = write_tokenizer(tmp_tok)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_tok))  # now also has tokenizer.json

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_config(vocab)).eval()
    randomize_(text_encoder, 1)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_kwargs(ch)).eval()
    randomize_(unet, 2)
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_kwargs(ch)).eval()
    randomize_(vae, 3)
    torch.manual_seed(0)
    unet_sd2 = UNet2DConditionModel(
        **unet_kwargs(ch, use_linear_projection=True, attention_head_dim=[2, 4], upcast_attention=True)
    ).eval()
    randomize_(unet_sd2, 4)
    torch.manual_seed(0)
    unet_ip2p = UNet2DConditionModel(**unet_kwargs(ch, in_channels=8)).eval()
    randomize_(unet_ip2p, 5)

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddim("epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(sd_dir), safe_serialization=True)
    # Replace whatever the tokenizer save produced with the hand-written classic layout.
    shutil.rmtree(sd_dir / "tokenizer")
    shutil.copytree(tmp_tok, sd_dir / "tokenizer")
    shutil.rmtree(tmp_tok)
    # transformers>=5 saves CLIPTextModel keys without the `text_model.` prefix; real SD
    # checkpoints (and transformers 4.x) have it. Write the classic names (v5 loads both).
    add_prefix_to_safetensors(sd_dir / "text_encoder" / "model.safetensors", "text_model.")
    euler("epsilon").save_pretrained(str(sd_dir / "scheduler_euler"))
    # fp16 variant of the UNet weights (diffusers variant naming).
    unet_fp16 = UNet2DConditionModel(**unet_kwargs(ch))
    unet_fp16.load_state_dict(unet.state_dict())
    unet_fp16.to(torch.float16).save_pretrained(str(sd_dir / "unet"), safe_serialization=True, variant="fp16")
    del unet_fp16

    unet_sd2.save_pretrained(str(sd2_dir / "unet"), safe_serialization=True)
    ddim("v_prediction").save_pretrained(str(sd2_dir / "scheduler"))
    euler("v_prediction").save_pretrained(str(sd2_dir / "scheduler_euler"))
    unet_ip2p.save_pretrained(str(ip2p_dir / "unet"), safe_serialization=True)
    euler("epsilon").save_pretrained(str(ip2p_dir / "scheduler"))
    del pipe, unet, vae, text_encoder, unet_sd2, unet_ip2p, tokenizer

    # ---------------- reload from disk (all references use the on-disk weights) -----------
    print("reloading from disk ...", flush=True)
    pipe = StableDiffusionPipeline.from_pretrained(str(sd_dir), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    unet_sd2 = UNet2DConditionModel.from_pretrained(str(sd2_dir / "unet")).eval()
    unet_ip2p = UNet2DConditionModel.from_pretrained(str(ip2p_dir / "unet")).eval()
    unet16 = UNet2DConditionModel.from_pretrained(str(sd_dir / "unet"), variant="fp16", torch_dtype=torch.float16)
    for (k, a), (k2, b) in zip(unet.state_dict().items(), unet16.state_dict().items()):
        assert k == k2 and torch.equal(a.half(), b), k
    del unet16
    # sanity: the prefixed text-encoder file loads to the same weights
    te_sd = load_file(str(sd_dir / "text_encoder" / "model.safetensors"))
    assert all(k.startswith("text_model.") for k in te_sd)
    for k, v in text_encoder.state_dict().items():
        assert torch.equal(te_sd["text_model." + k], v), k

    # ---------------- tokenizer ----------------------------------------------------------
    print("tokenizer / clip ...", flush=True)
    cases = []
    for text in TOKENIZER_CASES:
        enc = tokenizer(text, padding="max_length", max_length=MAX_LEN, truncation=True)
        raw = tokenizer(text).input_ids
        ref = reference_bpe_encode(text, vocab, merges)
        assert raw == ref, (text, raw, ref)
        assert tok_from_vocab_merges(text).input_ids == raw, text
        cases.append(
            {
                "text": text,
                "tokens": tokenizer.convert_ids_to_tokens(raw),
                "ids_unpadded": raw,
                "input_ids": enc.input_ids,
                "attention_mask": enc.attention_mask,
            }
        )
    tok_doc = {
        "max_length": MAX_LEN,
        "padding": "max_length",
        "truncation": True,
        "bos_id": vocab[BOS],
        "eos_id": vocab[EOS],
        "pad_id": tokenizer.pad_token_id,
        "vocab_size": len(vocab),
        "num_merges": len(merges),
        "bpe_corpus": CORPUS.strip().split("\n"),
        "cases": cases,
    }
    (refs_dir / "tokenizer_cases.json").write_text(json.dumps(tok_doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    # ---------------- CLIP text encoder --------------------------------------------------
    ids = torch.tensor([c["input_ids"] for c in cases], dtype=torch.int64)
    with torch.no_grad():
        o = text_encoder(ids, output_hidden_states=True)
    t = {"input_ids": ids, "last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}
    for i, h in enumerate(o.hidden_states):
        t[f"hidden_states.{i}"] = h
    refs.save(
        "clip",
        t,
        {"texts": TOKENIZER_CASES, "num_hidden_states": len(o.hidden_states)},
        {
            "hidden_states.0": "embeddings output (token + position)",
            f"hidden_states.{len(o.hidden_states) - 1}": "last encoder layer output BEFORE final_layer_norm",
            "pooler_output": "last_hidden_state at first EOS position",
        },
    )

    # ---------------- UNets --------------------------------------------------------------
    print("unets ...", flush=True)
    B, L = 2, MAX_LEN
    timesteps = torch.tensor([999.0, 250.0])
    ehs = randn((B, L, HIDDEN), 101)
    inner = [
        "time_proj",
        "time_embedding",
        "conv_in",
        "down_blocks.0",
        "down_blocks.1",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
    ]
    for name, model, in_ch, seed in (("unet_sd", unet, 4, 100), ("unet_sd2", unet_sd2, 4, 100), ("unet_ip2p", unet_ip2p, 8, 102)):
        x = randn((B, in_ch, 16, 16), seed)
        st: dict = OrderedDict(sample=x, timestep=timesteps, encoder_hidden_states=ehs)
        hs = []
        if name != "unet_ip2p":  # intermediates (batch item 0 only); IP2P differs only in conv_in
            hs += capture(model, inner, st, "inter.", keep=1)
            hs += capture_io(model, "down_blocks.0.resnets.0", st, "inter.", keep=1)
            hs += capture_io(model, "down_blocks.0.attentions.0", st, "inter.", keep=1)
            hs += capture_io(model, "down_blocks.0.attentions.0.transformer_blocks.0", st, "inter.", keep=1)
        with torch.no_grad():
            y = model(x, timesteps, encoder_hidden_states=ehs).sample
            for h in hs:  # intermediates belong to the per-item-timestep call above
                h.remove()
            # also a scalar int timestep (what pipelines pass; broadcast over the batch)
            y_scalar = model(x, torch.tensor(500), encoder_hidden_states=ehs).sample
        st["out"] = y
        st["out_t500"] = y_scalar
        refs.save(
            name,
            st,
            {"config": public_config(model.config), "timestep_for_out_t500": 500},
            {
                "inter.conv_in": "inter.* tensors: batch item 0 only",
                "inter.down_blocks.0": "hidden state returned by the block (after downsampler)",
                "inter.up_blocks.1": "last up block output (before conv_norm_out)",
                "inter.time_proj": "sinusoidal embedding (flip_sin_to_cos=True, freq_shift=0)",
                "inter.time_embedding": "emb fed to every resnet (before the resnets' SiLU)",
                "out_t500": "same inputs with scalar timestep 500 for both batch items",
            },
        )

    # ---------------- VAE ----------------------------------------------------------------
    print("vae ...", flush=True)
    img = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(200)) * 2 - 1
    z = randn((1, 4, 16, 16), 201)
    st = OrderedDict(image=img)
    hs = capture(vae, ["encoder.down_blocks.0", "encoder.down_blocks.1", "encoder.mid_block", "encoder", "quant_conv"], st, "enc.")
    with torch.no_grad():
        post = vae.encode(img).latent_dist
    for h in hs:
        h.remove()
    st.update(latent_mean=post.mean, latent_std=post.std, latent_logvar=post.logvar)
    st["latent"] = z
    hs = capture(vae, ["post_quant_conv", "decoder.conv_in", "decoder.mid_block"], st, "dec.")
    with torch.no_grad():
        dec = vae.decode(z).sample
        dec_mean = vae.decode(post.mean).sample
    for h in hs:
        h.remove()
    st["decoded"] = dec
    st["decoded_from_mean"] = dec_mean
    refs.save(
        "vae",
        st,
        {"config": public_config(vae.config)},
        {
            "enc.quant_conv": "moments = cat(mean, logvar) before clamp",
            "enc.encoder": "encoder output (conv_out, 2*latent_channels) before quant_conv",
            "latent_std": "exp(0.5 * clamp(logvar, -30, 20))",
            "decoded": "vae.decode(latent) (no scaling_factor applied; raw [-1,1]-ish image)",
            "decoded_from_mean": "vae.decode(latent_mean)",
        },
    )

    # ---------------- schedulers ---------------------------------------------------------
    print("schedulers ...", flush=True)
    st = OrderedDict()
    sample = randn((1, 4, 8, 8), 300)
    outs = [randn((1, 4, 8, 8), 301 + i) for i in range(2)]
    st["step_input.sample"] = sample
    st["step_input.model_output.0"] = outs[0]
    st["step_input.model_output.1"] = outs[1]
    sched_meta = {}
    for sname, sch in (
        ("ddim_eps", ddim("epsilon")),
        ("ddim_v", ddim("v_prediction")),
        ("euler_eps", euler("epsilon")),
        ("euler_v", euler("v_prediction")),
    ):
        if sname == "ddim_eps":
            st["alphas_cumprod"] = sch.alphas_cumprod
        sched_meta[sname] = {"_class_name": type(sch).__name__, **public_config(sch.config)}
        for n in (2, 10, 50):
            sch.set_timesteps(n)
            st[f"{sname}.n{n}.timesteps"] = sch.timesteps.to(torch.float32)
            if hasattr(sch, "sigmas") and sname.startswith("euler"):
                st[f"{sname}.n{n}.sigmas"] = sch.sigmas
        sch.set_timesteps(2)
        st[f"{sname}.init_noise_sigma"] = torch.tensor([float(sch.init_noise_sigma)])
        x = sample.clone()
        for i, t in enumerate(sch.timesteps):
            xin = sch.scale_model_input(x, t)
            st[f"{sname}.step{i}.scaled_input"] = xin
            r = sch.step(outs[i], t, x)
            st[f"{sname}.step{i}.prev_sample"] = r.prev_sample
            st[f"{sname}.step{i}.pred_original_sample"] = r.pred_original_sample
            x = r.prev_sample
    refs.save(
        "schedulers",
        st,
        {"configs": sched_meta, "num_inference_steps_for_steps": 2},
        {
            "alphas_cumprod": "scaled_linear betas, beta_start 0.00085, beta_end 0.012, 1000 steps (float32 cumprod)",
            "ddim_eps.step0.prev_sample": "step(model_output.0, timesteps[0], step_input.sample); step1 continues from it with model_output.1",
        },
    )

    # ---------------- pipelines ----------------------------------------------------------
    print("pipelines ...", flush=True)
    prompt = "a photo of an astronaut riding a horse on mars"
    lat0 = randn((1, 4, 16, 16), 400)

    def run_pipe(p, name: str, meta: dict, prompt: str = prompt, **kw):
        st = OrderedDict()
        cond = p.tokenizer(prompt, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt")
        unc = p.tokenizer("", padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt")
        st["cond_input_ids"] = cond.input_ids
        st["uncond_input_ids"] = unc.input_ids
        st["latents_in"] = lat0
        rec = UNetRecorder(p.unet)
        steps = []

        def cb(_p, i, t, kws):
            steps.append((f32(torch.as_tensor(t, dtype=torch.float32).reshape(1)), f32(kws["latents"])))
            return {}

        with torch.no_grad():
            lat = p(prompt, latents=lat0.clone(), output_type="latent", callback_on_step_end=cb, **kw).images
            img = p(prompt, latents=lat0.clone(), output_type="pt", **kw).images
            raw = p.vae.decode(lat / p.vae.config.scaling_factor).sample
        rec.remove()
        ncalls = len(steps)
        for i, c in enumerate(rec.calls[:ncalls]):
            st[f"step{i}.timestep"] = c["timestep"]
            st[f"step{i}.unet_sample"] = c["sample"]
            st[f"step{i}.unet_out"] = c["out"]
            st[f"step{i}.latents_after"] = steps[i][1]
            if i == 0:
                st["encoder_hidden_states"] = c["encoder_hidden_states"]
        # second run must reproduce the first exactly
        for i, c in enumerate(rec.calls[ncalls:]):
            assert torch.equal(c["out"], st[f"step{i}.unet_out"])
        st["latents_out"] = lat
        st["vae_decoded_raw"] = raw
        st["image_out"] = img
        refs.save(
            name,
            st,
            {"prompt": prompt, "num_inference_steps": kw["num_inference_steps"], **meta},
            {
                "latents_in": "passed as latents=; the pipeline multiplies it by scheduler.init_noise_sigma",
                "encoder_hidden_states": "UNet context: batch order [uncond, cond] (IP2P: [cond, uncond, uncond])",
                "step0.unet_sample": "UNet input after CFG batch duplication + scale_model_input (+ image latents concat for IP2P)",
                "step0.unet_out": "raw UNet output, before guidance",
                "step0.latents_after": "scheduler.step output",
                "vae_decoded_raw": "vae.decode(latents_out / scaling_factor) in ~[-1,1]",
                "image_out": "output_type='pt': (vae_decoded_raw / 2 + 0.5).clamp(0, 1)",
            },
        )

    pipe.scheduler = ddim("epsilon")
    run_pipe(pipe, "pipeline_sd_ddim", {"scheduler": "DDIM eps", "guidance_scale": 7.5, "negative_prompt": ""},
             num_inference_steps=2, guidance_scale=7.5)
    pipe.scheduler = euler("epsilon")
    run_pipe(pipe, "pipeline_sd_euler", {"scheduler": "EulerDiscrete eps", "guidance_scale": 7.5, "negative_prompt": ""},
             num_inference_steps=2, guidance_scale=7.5)
    pipe2 = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_sd2, scheduler=ddim("v_prediction"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe2.set_progress_bar_config(disable=True)
    run_pipe(pipe2, "pipeline_sd2_vpred", {"scheduler": "DDIM v_prediction", "guidance_scale": 7.5, "negative_prompt": "",
                                            "unet": "tiny-sd2/unet", "other_components": "tiny-sd"},
             num_inference_steps=2, guidance_scale=7.5)

    ip = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_ip2p, scheduler=euler("epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ip.set_progress_bar_config(disable=True)
    ip_img = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(500))  # in [0, 1]
    with torch.no_grad():
        ip_img_latents = vae.encode(ip_img * 2 - 1).latent_dist.mode()
    run_pipe(ip, "pipeline_ip2p", {"scheduler": "EulerDiscrete eps", "guidance_scale": 7.5, "image_guidance_scale": 1.5,
                                   "negative_prompt": "", "unet": "tiny-ip2p/unet", "other_components": "tiny-sd"},
             prompt="make it snow", image=ip_img, num_inference_steps=2, guidance_scale=7.5, image_guidance_scale=1.5)
    # add the IP2P image inputs to that file
    p = refs_dir / "pipeline_ip2p.safetensors"
    t = load_file(str(p))
    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    t["image_in_01"] = ip_img.contiguous()
    t["image_latents"] = f32(ip_img_latents)
    save_file(t, str(p), metadata=meta)
    refs.index["pipeline_ip2p"]["tensors"]["image_in_01"] = {"shape": list(ip_img.shape), "dtype": "float32",
                                                              "note": "input image in [0,1]; pipeline maps to 2x-1"}
    refs.index["pipeline_ip2p"]["tensors"]["image_latents"] = {
        "shape": list(ip_img_latents.shape), "dtype": "float32",
        "note": "vae.encode(2x-1).latent_dist.mode() == mean, NOT multiplied by scaling_factor"}

    # ---------------- index, inventory, checksums ----------------------------------------
    (refs_dir / "index.json").write_text(json.dumps({"versions": versions, "files": refs.index}, indent=1, default=str) + "\n")
    inventory = build_inventory(out)
    (out / "tensor_inventory.md").write_text(inventory)
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    for f in out.rglob("*"):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    sums = []
    total = 0
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.name != "SHA256SUMS":
            total += f.stat().st_size
            sums.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(out)}")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    if args.update_weights_md:
        update_weights_md(Path(args.update_weights_md), out)
    print(f"versions: {versions}")
    print_sizes(out)
    print(f"TOTAL: {total} bytes ({total / 2**20:.2f} MiB) in {len(sums)} files under {out}")


# --------------------------------------------------------------------------------------
# Inventory / WEIGHTS.md generation
# --------------------------------------------------------------------------------------


def st_listing(path: Path) -> list[tuple[str, str, list[int]]]:
    rows = []
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            rows.append((k, sl.get_dtype(), list(sl.get_shape())))
    return rows


def build_inventory(out: Path) -> str:
    lines = ["# Tensor inventory (generated by make_sd_fixtures.py)\n"]
    for f in sorted(out.rglob("*.safetensors")):
        rows = st_listing(f)
        lines.append(f"\n## {f.relative_to(out)} ({len(rows)} tensors, {f.stat().st_size} bytes)\n\n```")
        lines += [f"{k}  {dt}  {shape}" for k, dt, shape in rows]
        lines.append("```")
    return "\n".join(lines) + "\n"


def update_weights_md(md: Path, out: Path) -> None:
    begin, end = "<!-- BEGIN GENERATED TENSOR LISTS -->", "<!-- END GENERATED TENSOR LISTS -->"
    parts = [begin, ""]
    full = [
        ("UNet (SD 1.x style)", out / "tiny-sd/unet/diffusion_pytorch_model.safetensors"),
        ("VAE (AutoencoderKL)", out / "tiny-sd/vae/diffusion_pytorch_model.safetensors"),
        ("CLIP text encoder", out / "tiny-sd/text_encoder/model.safetensors"),
    ]
    base = {k: (dt, s) for k, dt, s in st_listing(full[0][1])}
    for title, path in full:
        rows = st_listing(path)
        parts.append(f"### {title}: `{path.relative_to(out)}` ({len(rows)} tensors)\n\n```")
        parts += [f"{k}  {dt}  {s}" for k, dt, s in rows]
        parts.append("```\n")
    for title, path in (
        ("UNet SD 2.x variant", out / "tiny-sd2/unet/diffusion_pytorch_model.safetensors"),
        ("UNet InstructPix2Pix variant", out / "tiny-ip2p/unet/diffusion_pytorch_model.safetensors"),
        ("UNet fp16 variant", out / "tiny-sd/unet/diffusion_pytorch_model.fp16.safetensors"),
    ):
        rows = st_listing(path)
        diff = [(k, dt, s) for k, dt, s in rows if base.get(k, (None, None))[1] != s]
        names_same = sorted(k for k, _, _ in rows) == sorted(base)
        dts = sorted({dt for _, dt, _ in rows})
        parts.append(
            f"### {title}: `{path.relative_to(out)}` ({len(rows)} tensors, dtypes {dts}; "
            f"names {'identical to' if names_same else 'DIFFER from'} the SD 1.x UNet). Tensors whose shape differs:\n\n```"
        )
        parts += [f"{k}  {dt}  {s}" for k, dt, s in diff] or ["(none)"]
        parts.append("```\n")
    parts.append(end)
    text = md.read_text() if md.exists() else ""
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + "\n".join(parts) + post
    else:
        text = text + "\n" + "\n".join(parts) + "\n"
    md.write_text(text)


def print_sizes(out: Path) -> None:
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        print(f"  {d.name:12s} {size:9d} bytes ({size / 2**20:.2f} MiB)")
        for sub in sorted(p for p in d.iterdir()):
            s = sum(f.stat().st_size for f in ([sub] if sub.is_file() else sub.rglob("*")) if f.is_file())
            print(f"      {sub.name:28s} {s:9d}")


if __name__ == "__main__":
    main()
