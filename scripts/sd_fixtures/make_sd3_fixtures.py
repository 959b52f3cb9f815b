#!/usr/bin/env python3
"""Build tiny random-weight Stable Diffusion 3 fixtures for rlrig-sd's MMDiT parity tests.

Everything is built from configs with fixed seeds (no model hub). Output layout (default
``out-sd3/``; the tests read ``actors/sd/tests/fixtures/sd3/``)::

    tiny-sd3/            StableDiffusion3Pipeline directory
      model_index.json
      transformer/       SD3Transformer2DModel, SD3.0 style (no QK norm, no dual attention)
      vae/               AutoencoderKL, 4 latent channels, no quant convs, scaling + shift
      text_encoder/      CLIPTextModelWithProjection (quick_gelu, hidden 16)
      text_encoder_2/    CLIPTextModelWithProjection (gelu, hidden 24)
      tokenizer/ tokenizer_2/  the tiny CLIP BPE of make_sd_fixtures.py
      text_encoder_3/    T5EncoderModel (T5 v1.1 style: gated GELU, relative position buckets)
      tokenizer_3/       a tiny T5 Unigram tokenizer (tokenizer.json), trained on a few sentences
      scheduler/         FlowMatchEulerDiscreteScheduler, shift 3.0
    tiny-sd35/transformer/  SD3.5-medium style: QK RMSNorm, dual attention in layers 0 and 1
    lora-sd35/           a PEFT LoRA adapter (rank 3, α 6, random A and B) on tiny-sd35's
                         to_q, to_k, to_v, to_out.0, add_q_proj and to_add_out
    refs/                inputs and reference outputs (safetensors, float32)
      transformer.safetensors  both transformers, two calls each (square and non-square),
                               and tiny-sd35 with the PEFT adapter (``sd35_lora.out``)
      vae.safetensors          encode (posterior mean, std) and decode
      scheduler.safetensors    sigmas and timesteps for several step counts, one Euler step,
                               Flow-GRPO SDE steps (mean, log-prob) in float64
      text.safetensors         prompt_embeds and pooled_prompt_embeds, prompt and "", without T5
                               (text_encoder_3=None) and with it (``t5.*``), T5 ids and states
      pipeline.safetensors     a 2-step guided pipeline: initial and final latents, image, without
                               T5 and with it (``t5.*``)
    versions.json SHA256SUMS

Usage::

    python make_sd3_fixtures.py [--out out-sd3]

References are computed from the models re-loaded from the written directories. CPU, float32,
one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sd_fixtures as sd  # noqa: E402  (sets the offline environment, one thread)

import torch  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
import peft  # noqa: E402

LATENT = 4
JOINT = 48
MAX_SEQ = 8  # max_sequence_length: the zero "T5" tokens without a T5 encoder
PROMPTS = ["a photo of a cat and a dog", "turn the sky into a starry night"]
# T5 tokenizes these too: "zebra" is not in its vocabulary (letters and <unk> for 'z').


def transformer_kwargs(**over) -> dict:
    kw = dict(
        sample_size=8,
        patch_size=2,
        in_channels=LATENT,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=JOINT,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=LATENT,
        pos_embed_max_size=6,
    )
    kw.update(over)
    return kw


def clip(vocab: dict, hidden: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden + 5,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=sd.MAX_LEN,
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=16,
        bos_token_id=vocab[sd.BOS],
        eos_token_id=vocab[sd.EOS],
        pad_token_id=vocab[sd.EOS],
    )


T5_CORPUS = [
    "a photo of a cat and a dog",
    "turn the sky into a starry night",
    "a red square left of a blue circle",
    "make it look like a painting",
    "a green triangle above a yellow square",
]


def t5_tokenizer() -> T5TokenizerFast:
    """A tiny SentencePiece-style Unigram tokenizer with T5's special tokens and post-processor:
    every corpus word a piece, single letters as the fall-back (a fixed vocabulary, so the file
    is the same on every run)."""
    words = sorted({w for line in T5_CORPUS for w in line.split()})
    letters = sorted({c for w in words for c in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0 - 0.1 * len(w)) for w in words] + [(c, -5.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" +", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=MAX_SEQ)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out-sd3"))
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    pipe_dir, sd35_dir = out / "tiny-sd3", out / "tiny-sd35"
    refs = sd.RefWriter(out / "refs")

    vocab, _merges, tokenizer = sd.write_tokenizer(out / "tokenizer-src")

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**transformer_kwargs())
    sd.randomize_(transformer, 1)
    t35 = SD3Transformer2DModel(**transformer_kwargs(num_layers=3, qk_norm="rms_norm", dual_attention_layers=(0, 1)))
    sd.randomize_(t35, 2)
    t35.save_pretrained(sd35_dir / "transformer", safe_serialization=True)

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=LATENT,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    sd.randomize_(vae, 3)
    encoders = []
    for hidden, act, seed in [(16, "quick_gelu", 4), (24, "gelu", 5)]:
        m = CLIPTextModelWithProjection(clip(vocab, hidden, act))
        sd.randomize_(m, seed)
        encoders.append(m)
    tokenizer_3 = t5_tokenizer()
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=JOINT, d_kv=12, d_ff=53, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
        tie_word_embeddings=False,
    ))
    sd.randomize_(t5, 6)
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tokenizer,
        text_encoder_2=encoders[1],
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=tokenizer_3,
    ).save_pretrained(pipe_dir, safe_serialization=True)
    shutil.rmtree(out / "tokenizer-src")

    # Everything below from what was written.
    pipe = StableDiffusion3Pipeline.from_pretrained(pipe_dir, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    pipe_t5 = StableDiffusion3Pipeline.from_pretrained(pipe_dir)
    pipe_t5.set_progress_bar_config(disable=True)
    index = json.loads((pipe_dir / "model_index.json").read_text())
    index.pop("_diffusers_version", None)
    (pipe_dir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    t35 = SD3Transformer2DModel.from_pretrained(sd35_dir / "transformer")

    # Transformers: a square batch of two with one timestep each, and a non-square latent.
    x = sd.randn((2, LATENT, 8, 8), 10)
    ctx = sd.randn((2, 12, JOINT), 11)
    pooled = sd.randn((2, 32), 12)
    ts = torch.tensor([1000.0, 437.5])
    x2 = sd.randn((1, LATENT, 6, 8), 13)
    ctx2 = sd.randn((1, 5, JOINT), 14)
    pooled2 = sd.randn((1, 32), 15)
    ts2 = torch.tensor([3.25])
    tensors = {"x": x, "context": ctx, "pooled": pooled, "t": ts, "x2": x2, "context2": ctx2, "pooled2": pooled2, "t2": ts2}
    with torch.no_grad():
        for name, model in [("sd3", pipe.transformer), ("sd35", t35)]:
            tensors[f"{name}.out"] = model(x, ctx, pooled, ts).sample
            tensors[f"{name}.out2"] = model(x2, ctx2, pooled2, ts2).sample
    # A PEFT adapter with random A and B (a fresh one would change nothing), saved and reloaded.
    base = SD3Transformer2DModel.from_pretrained(sd35_dir / "transformer")
    torch.manual_seed(3)
    lora = peft.LoraConfig(
        r=3, lora_alpha=6, init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out"],
    )
    peft.get_peft_model(base, lora).save_pretrained(out / "lora-sd35")
    adapted = peft.PeftModel.from_pretrained(SD3Transformer2DModel.from_pretrained(sd35_dir / "transformer"), out / "lora-sd35")
    with torch.no_grad():
        tensors["sd35_lora.out"] = adapted(x, ctx, pooled, ts).sample
    cfg = json.loads((out / "lora-sd35" / "adapter_config.json").read_text())
    for k in ("base_model_name_or_path", "peft_version", "revision"):
        cfg.pop(k, None)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    (out / "lora-sd35" / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "lora-sd35" / "README.md").unlink(missing_ok=True)
    refs.save("transformer", tensors, {"timesteps": ts.tolist(), "timesteps2": ts2.tolist()})

    # VAE.
    image = sd.randn((1, 3, 16, 16), 20).clamp(-1, 1)
    z = sd.randn((1, LATENT, 8, 8), 21)
    with torch.no_grad():
        post = pipe.vae.encode(image).latent_dist
        decoded = pipe.vae.decode(z).sample
    refs.save("vae", {"image": image, "mean": post.mean, "std": post.std, "z": z, "decoded": decoded},
              {"scaling_factor": pipe.vae.config.scaling_factor, "shift_factor": pipe.vae.config.shift_factor})

    # Scheduler.
    tensors, meta = {}, {}
    for n in [1, 2, 4, 28]:
        s = FlowMatchEulerDiscreteScheduler.from_pretrained(pipe_dir / "scheduler")
        s.set_timesteps(n)
        tensors[f"sigmas.{n}"] = s.sigmas
        tensors[f"timesteps.{n}"] = s.timesteps
    s = FlowMatchEulerDiscreteScheduler.from_pretrained(pipe_dir / "scheduler")
    s.set_timesteps(4)
    sample, velocity = sd.randn((1, LATENT, 4, 4), 30), sd.randn((1, LATENT, 4, 4), 31)
    s.step(velocity, s.timesteps[0], sample)  # the first step moves the index
    tensors.update(sample=sample, velocity=velocity, stepped=s.step(velocity, s.timesteps[1], sample).prev_sample)
    # Flow-GRPO's SDE step (sd3_sde_with_logprob) in float64 on the 4-step σ, noise level 0.7:
    # std_t = a·sqrt(σ/(1 − σ)) with σ_1 in the denominator at σ = 1, the transition mean, and
    # the pixel mean of the Gaussian log-density of a given next state.
    sig = s.sigmas.double()
    for k in (0, 2):
        sigma, sigma_next, a = sig[k], sig[k + 1], 0.7
        dt = sigma_next - sigma
        std_t = torch.sqrt(sigma / (1 - (sig[1] if sigma == 1 else sigma))) * a
        x, v, x_next = (sd.randn((2, LATENT, 4, 4), 32 + 3 * k + i).double() for i in range(3))
        mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = std_t * torch.sqrt(-dt)
        logp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
        tensors.update({f"sde{k}.x": x, f"sde{k}.v": v, f"sde{k}.x_next": x_next, f"sde{k}.mean": mean,
                        f"sde{k}.log_prob": logp.mean(dim=(1, 2, 3))})
    refs.save("scheduler", tensors, {"steps": [1, 2, 4, 28], "step": "second of 4", "sde": "steps 0 and 2 of 4, a = 0.7"})

    # Text: prompt embeddings (two CLIPs, zero T5 tokens) and the negative "".
    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(
            prompt=PROMPTS, prompt_2=None, prompt_3=None, do_classifier_free_guidance=True, max_sequence_length=MAX_SEQ
        )
    text = {"prompt_embeds": pe, "negative_prompt_embeds": ne, "pooled": pp, "negative_pooled": npool}
    with torch.no_grad():
        pe, ne, pp, npool = pipe_t5.encode_prompt(
            prompt=PROMPTS, prompt_2=None, prompt_3=None, do_classifier_free_guidance=True, max_sequence_length=MAX_SEQ
        )
        ids = pipe_t5.tokenizer_3(PROMPTS + [""], padding="max_length", max_length=MAX_SEQ, truncation=True,
                                  add_special_tokens=True, return_tensors="pt").input_ids
        states = pipe_t5.text_encoder_3(ids)[0]
    text.update({"t5.prompt_embeds": pe, "t5.negative_prompt_embeds": ne, "t5.ids": ids, "t5.states": states})
    refs.save("text", text, {"prompts": PROMPTS, "max_sequence_length": MAX_SEQ})

    # The pipeline: 2 steps, guidance 4.5, given initial latents.
    latents = sd.randn((2, LATENT, 8, 8), 40)
    with torch.no_grad():
        final = pipe(
            prompt=PROMPTS, num_inference_steps=2, guidance_scale=4.5, latents=latents.clone(),
            max_sequence_length=MAX_SEQ, output_type="latent", height=16, width=16,
        ).images
        image = pipe.vae.decode(final / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
        final_t5 = pipe_t5(
            prompt=PROMPTS, num_inference_steps=2, guidance_scale=4.5, latents=latents.clone(),
            max_sequence_length=MAX_SEQ, output_type="latent", height=16, width=16,
        ).images
    refs.save("pipeline", {"latents": latents, "final": final, "image": image, "t5.final": final_t5},
              {"prompts": PROMPTS, "steps": 2, "guidance_scale": 4.5, "max_sequence_length": MAX_SEQ})

    (out / "refs" / "index.json").write_text(json.dumps(refs.index, indent=1, sort_keys=True) + "\n")
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "python": sys.version.split()[0]}
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    for f in out.rglob("*"):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    sums = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(out)}"
            for f in sorted(out.rglob("*")) if f.is_file() and f.name != "SHA256SUMS"]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    print(f"versions: {versions}")


if __name__ == "__main__":
    main()
