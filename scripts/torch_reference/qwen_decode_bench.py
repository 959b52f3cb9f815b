"""PyTorch reference of the Qwen2.5-VL decoding benchmark (actors/qwen/benches/decode.rs):
transformers' Qwen2_5_VLForConditionalGeneration on two random-weight models,

* `tiny`: the parity fixture actors/qwen/tests/fixtures/qwen2_5_vl/tiny, prompting with
  image_b.png (112x84 after resize, 12 image tokens);
* `mid`: a mid-size Qwen2.5-VL-shaped model written by `--make DIR` to DIR/mid (text 512 wide,
  8 layers, 8 heads / 2 kv heads, vocab 32000; vision 256 wide, depth 8), prompting with
  image_c.png (196x140 under the default pixel budget, 35 image tokens),

with the prompt `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text":
"Where is the red circle relative to the blue square?"}]}]`, `add_generation_prompt=True`.
What is timed, float32, eager attention, torch.no_grad, torch.set_num_threads(--threads):

* `prefill`: one full forward of the prompt (vision tower included) returning the logits of
  every position, no KV cache kept (as rlrig's `Net::logits` without a cache);
* `step`: one KV-cached decoding step, one new token (the prefill's argmax) fed after the
  prompt's cache (deep-copied before the timer starts), its 3-D rotary position given
  explicitly; checked to give the last logits of a full forward over prompt + token first;
* `generate16`: greedy `model.generate` of exactly 16 new tokens (eos disabled), plus one
  full forward (vision tower included) over the prompt and the first 15 generated tokens with
  the log-softmax of the 16 scored positions (the language head on those alone): rlrig's `Net::generate` re-scores the tokens it
  generated in one extra pass (`Net::token_logprobs`), so the reference does that work too.

Median (`v[len / 2]` of the sorted times, as the burn side) of --runs after --warmup, in ms.
Timing only: random weights. The image processor is `Qwen2VLImageProcessorPil` and the prompt
is built by hand (chat template, then the image placeholder expanded to one token per merged
patch), because transformers' `Qwen2_5_VLProcessor` needs torchvision for its video processor;
the tiny prompt's ids and pixels are asserted equal to the parity fixture's references.

    python qwen_decode_bench.py --make target/qwen-bench     # writes target/qwen-bench/mid
    python qwen_decode_bench.py --dir target/qwen-bench --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "actors" / "qwen" / "tests" / "fixtures" / "qwen2_5_vl"
TINY = FIXTURES / "tiny"
TEXT = "Where is the red circle relative to the blue square?"
NEW_TOKENS = 16
SEED = 20250

# Files of the tiny fixture the mid model shares (same tokenizer and chat template).
SHARED_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
# Qwen2.5-VL's default pixel budget (transformers' Qwen2VLImageProcessor defaults).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


# --------------------------------------------------------------------------------------
# --make: the mid-size model
# --------------------------------------------------------------------------------------


def mid_config() -> Qwen2_5_VLConfig:
    tiny = json.loads((TINY / "config.json").read_text())
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    special = {k: tiny[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    vision = dict(
        depth=8,
        hidden_size=256,
        num_heads=4,
        intermediate_size=512,
        in_channels=3,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=112,
        fullatt_block_indexes=[3, 7],
        out_hidden_size=512,
        tokens_per_second=2,
        hidden_act="silu",
        initializer_range=0.02,
    )
    text = dict(
        vocab_size=32000,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1536,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        # head_dim 64: the three sections must cover its 32 rotary frequencies (the hub's
        # [16, 24, 24] is for head_dim 128), so the hub's proportions halved.
        rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1000000.0},
        use_sliding_window=False,
        tie_word_embeddings=False,
        **special,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids, **special)


def init_weights(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Every parameter from a seeded N(0, std²), every RMSNorm weight 1 + 0.1·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    norms = set()
    for mname, mod in model.named_modules():
        if type(mod).__name__.endswith("RMSNorm"):
            norms.update(f"{mname}.{p}" for p, _ in mod.named_parameters(recurse=False))
    assert norms, "no RMSNorm found"
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.copy_(1.0 + 0.1 * noise if name in norms else std * noise)


def make(out: Path) -> None:
    """Writes the mid model's transformers directory to out/mid (deterministic)."""
    dest = out / "mid"
    tmp = out / "mid.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(SEED)
    cfg = mid_config()
    cfg._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    init_weights(model, SEED)
    model.save_pretrained(str(tmp))
    for f in SHARED_FILES:
        shutil.copyfile(TINY / f, tmp / f)
    pp = json.loads((TINY / "preprocessor_config.json").read_text())
    pp.update(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
    (tmp / "preprocessor_config.json").write_text(json.dumps(pp, indent=2, sort_keys=True) + "\n")
    # a key the loader did not find would be silently re-initialised: compare with what was made
    saved = model.state_dict()
    back = load_model(tmp).state_dict()
    assert sorted(back) == sorted(saved), set(back) ^ set(saved)
    for k, v in saved.items():
        assert torch.equal(back[k], v), k
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {dest} ({params} parameters)")


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------


def load_model(d: Path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32).eval()


def prompt_inputs(d: Path, image: Path, image_token_id: int) -> dict:
    """input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw of the prompt."""
    ip = AutoImageProcessor.from_pretrained(str(d), backend="pil")
    assert type(ip).__name__ == "Qwen2VLImageProcessorPil", type(ip).__name__
    tok = AutoTokenizer.from_pretrained(str(d))
    template = (d / "chat_template.jinja").read_text()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXT}]}]
    text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    pix = ip(images=[Image.open(image).convert("RGB")], return_tensors="pt")
    n = int(pix["image_grid_thw"].prod()) // ip.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n, 1)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert int((ids == image_token_id).sum()) == n
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == image_token_id).to(torch.int32),
        "pixel_values": pix["pixel_values"],
        "image_grid_thw": pix["image_grid_thw"],
    }


def extended(inputs: dict, extra: torch.Tensor) -> dict:
    """The prompt's inputs followed by the text tokens `extra` [1, n]."""
    kw = dict(inputs)
    ids = torch.cat([inputs["input_ids"], extra], dim=1)
    kw["input_ids"] = ids
    kw["attention_mask"] = torch.ones_like(ids)
    kw["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros_like(extra, dtype=inputs["mm_token_type_ids"].dtype)], dim=1
    )
    return kw


def median_ms(f, runs: int, warmup: int, setup=lambda: None) -> float:
    """`setup()` outside the timer, then `f(setup())` timed; `v[len / 2]` of the sorted times."""
    for _ in range(warmup):
        f(setup())
    times = []
    for _ in range(runs):
        s = setup()
        t0 = time.perf_counter()
        f(s)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median_high(times)


def bench(name: str, d: Path, image: Path, runs: int, warmup: int) -> None:
    model = load_model(d)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    inputs = prompt_inputs(d, image, cfg.image_token_id)
    L = inputs["input_ids"].shape[1]
    if name == "tiny":  # the prompt the parity tests check, so both sides see the same one
        refs = json.loads((FIXTURES / "references.json").read_text())
        assert inputs["input_ids"][0].tolist() == refs["input_ids.b"], "tiny prompt ids differ from the fixture"
        ref_pix = load_file(str(FIXTURES / "references.safetensors"))["pixel.b"]
        assert torch.equal(inputs["pixel_values"], ref_pix), "tiny pixels differ from the fixture"

    def row(what: str, ms: float) -> None:
        print(f"qwen {name:<5} {what:<10} {L:>6} {params:>10} {ms:>10.2f} {runs:>5}")

    with torch.no_grad():
        # prefill: one full forward of the prompt, the logits of every position, no cache kept.
        def prefill(_):
            model.model.rope_deltas = None
            return model(**inputs, use_cache=False).logits

        logits = prefill(None)
        token = int(logits[0, -1].argmax())
        ms_prefill = median_ms(prefill, runs, warmup)

        # step: the prompt's cache, then one token. Its 3-D rotary position is given: a generated
        # token is text, at max(prompt positions) + 1 on all three axes (what generate derives
        # from the rope_deltas it keeps on the model).
        model.model.rope_deltas = None
        out = model(**inputs, use_cache=True)
        cache = out.cache
        pos, _ = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        next_pos = torch.full((3, 1, 1), int(pos.max()) + 1, dtype=torch.long)
        new = torch.tensor([[token]])

        def step(c):
            return model(input_ids=new, position_ids=next_pos, cache=c, use_cache=True).logits

        # check: the cached step's logits are a full forward's last logits (prompt + token)
        cached = step(copy.deepcopy(cache))[0, -1]
        model.model.rope_deltas = None
        full = model(**extended(inputs, new), use_cache=False).logits[0, -1]
        diff = float((cached - full).abs().max())
        scale = float(full.abs().max())
        if not diff <= 1e-5 * max(1.0, scale):
            sys.exit(f"qwen {name}: cached step logits differ from a full forward's by {diff:.3g} (max |logit| {scale:.3g})")
        print(f"# qwen {name}: cached step check passed, max |diff| {diff:.2e} (max |logit| {scale:.2f})")
        ms_step = median_ms(step, runs, warmup, setup=lambda: copy.deepcopy(cache))

        # generate16: greedy, exactly 16 new tokens (no eos), then the re-scoring pass rlrig's
        # generate makes: one full forward over the prompt and tokens[..15], log-softmax of the
        # 16 positions that score the generated tokens.
        gen_cfg = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            bos_token_id=None,
            pad_token_id=cfg.text_config.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=None,
        )
        tokens = []

        def generate16(_):
            model.model.rope_deltas = None
            seq = model.generate(**inputs, generation_config=gen_cfg)
            gen = seq[:, L:]
            assert gen.shape[1] == NEW_TOKENS, gen.shape
            model.model.rope_deltas = None
            # The language head on the 16 scoring positions only, as rlrig's re-scoring.
            lg = model(
                **extended(inputs, gen[:, :-1]), use_cache=False, logits_to_keep=NEW_TOKENS
            ).logits[0]
            logp = torch.log_softmax(lg, dim=-1).gather(-1, gen[0, :, None])[:, 0]
            tokens[:] = gen[0].tolist()
            return logp

        ms_gen = median_ms(generate16, runs, warmup)
        print(f"# qwen {name}: prompt {L} tokens, step token {token}, generate16 {tokens}")
    row("prefill", ms_prefill)
    row("step", ms_step)
    row("generate16", ms_gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make", type=Path, metavar="DIR", help="write the mid model to DIR/mid and exit")
    ap.add_argument("--dir", type=Path, default=os.environ.get("RLRIG_QWEN_BENCH_DIR"), help="where mid/ is")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RLRIG_BENCH_RUNS", 10)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("RLRIG_BENCH_WARMUP", 2)))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.make is not None:
        make(args.make)
        return
    runs = max(args.runs, 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms")
    print(f"qwen {'cfg':<5} {'what':<10} {'prompt':>6} {'params':>10} {'ms':>10} {'runs':>5}")
    bench("tiny", TINY, FIXTURES / "image_b.png", runs, args.warmup)
    mid = args.dir / "mid" if args.dir is not None else None
    if mid is None or not (mid / "config.json").is_file():
        print(f"# qwen mid: skipped, no {mid if mid else '$RLRIG_QWEN_BENCH_DIR/mid'} (make it with --make DIR)")
        return
    bench("mid", mid, FIXTURES / "image_c.png", runs, args.warmup)


if __name__ == "__main__":
    main()
