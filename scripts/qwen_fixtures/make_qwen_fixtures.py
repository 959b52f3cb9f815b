#!/usr/bin/env python3
"""Build tiny random-weight Qwen2.5-VL fixtures for the Rust port (`actors/qwen`).

Everything is built from configs with fixed seeds (no model hub). Output layout
(default ``actors/qwen/tests/fixtures/qwen2_5_vl/`` relative to the repo root)::

    image_a.png image_b.png image_c.png   deterministic test images (RGB)
    tiny/          Qwen2_5_VLForConditionalGeneration (untied lm_head, fullatt blocks [1, 3])
                   + processor files (tokenizer.json, tokenizer_config.json, chat_template.jinja,
                   preprocessor_config.json)
    tiny_tied/     same shapes, tie_word_embeddings=True, fullatt blocks [0], other weights
    lora/          PEFT LoRA adapter on tiny (all linear q/k/v/o/gate/up/down, decoder AND vision MLP)
    lora_text/     PEFT LoRA adapter on tiny, regex-targeted to decoder q_proj / v_proj only
    references.json          ints / strings / shapes
    references.safetensors   float32 reference tensors
    SHA256SUMS               sha256 of every other file, sorted by path

All references are computed from the models, processors and adapters *re-loaded
from the written directories*. CPU, float32, one thread, eager attention,
``torch.use_deterministic_algorithms(True)``.

The torchvision-backed ("fast") image processor needs torchvision; torch 2.15
has no matching torchvision wheel on PyPI yet; 0.29.2 works for the resize path and is installed
next to the venv without touching it::

    pip install --no-deps --target DIR torchvision==0.29.2
    PYTHONPATH=DIR python scripts/qwen_fixtures/make_qwen_fixtures.py

Without torchvision the script stops (the fixture contents must not depend on
what happens to be installed).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

try:
    import torchvision  # noqa: E402,F401
except ImportError:  # pragma: no cover
    sys.exit(
        "torchvision is required for the fast image processor reference; see the module docstring "
        "(pip install --no-deps --target DIR torchvision==0.29.2; PYTHONPATH=DIR ...)"
    )

import peft  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers.models import BPE  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoProcessor,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.vision_utils import get_vision_window_index  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "actors" / "qwen" / "tests" / "fixtures" / "qwen2_5_vl"

# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------

# Qwen2 pre-tokenizer split regex (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX)
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB_SIZE = 400  # 256 byte symbols + 137 merges + 7 special tokens

# Qwen2.5-VL-*-Instruct chat template, verbatim (no trailing newline).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
RELATIONS = ["to the left of", "to the right of", "above", "below", "on top of", "next to"]
SIZES = ["small", "large", "big", "tiny"]
EXTRA_RELATIONS = [
    "between", "under", "over", "near", "far from", "inside", "outside", "in front of", "behind", "beside",
]


def corpus() -> list[str]:
    lines = []
    items = list(itertools.product(COLOURS, SHAPES))
    for (c1, s1), rel, (c2, s2) in itertools.product(items, RELATIONS, items):
        if (c1, s1) == (c2, s2):
            continue
        lines.append(f"move the {c1} {s1} {rel} the {c2} {s2}")
        lines.append(f"a {c1} {s1} {rel} a {c2} {s2}")
    for c, s, sz, r in itertools.product(COLOURS, SHAPES, SIZES, EXTRA_RELATIONS):
        lines.append(f"Is the {sz} {c} {s} {r} the box?")
        lines.append(f"The {sz} {c} {s} is {r} the other shapes.")
        lines.append(f"Where is the {c} {s} relative to the {sz} one? It is {r} it.")
    # chat-template words, frequent enough to become whole tokens
    lines += ["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 300
    lines += [
        "Picture 1: Video 2:",
        "Yes, it is.",
        "No, it is not.",
        "There are 3 shapes and 12 colours in 2024.",
        "Count: 0 1 2 3 4 5 6 7 8 9",
    ] * 5
    return lines


def build_raw_tokenizer() -> Tokenizer:
    tok = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = corpus()
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    assert tok.get_vocab_size() == VOCAB_SIZE - len(SPECIAL_TOKENS), tok.get_vocab_size()
    # Like Qwen: special tokens come after the BPE vocabulary, in Qwen's relative order.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok


def build_hf_tokenizer(tmp: Path) -> Qwen2Tokenizer:
    raw = build_raw_tokenizer()
    d = tmp / "raw_tokenizer"
    d.mkdir(parents=True)
    raw.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "errors": "replace",
                "model_max_length": 512,
                "clean_up_tokenization_spaces": False,
                "split_special_tokens": False,
                "add_prefix_space": False,
            }
        )
    )
    tok = Qwen2Tokenizer.from_pretrained(str(d))
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(VOCAB_SIZE - len(SPECIAL_TOKENS), VOCAB_SIZE)), ids
    assert len(tok) == VOCAB_SIZE, len(tok)
    return tok


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------

IMAGES = {"a": (56, 56), "b": (120, 90), "c": (200, 150)}  # (width, height)


def make_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (235, 230, 220))
    draw = ImageDraw.Draw(img)
    u = min(width, height)
    # red circle left, blue square right, green triangle top, yellow star bottom
    r = u // 6
    cx, cy = width // 4, height // 2
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 30, 30))
    sx, sy = 3 * width // 4, height // 2
    draw.rectangle([sx - r, sy - r, sx + r, sy + r], fill=(30, 60, 220))
    tx, ty = width // 2, height // 5
    draw.polygon([(tx, ty - r), (tx - r, ty + r), (tx + r, ty + r)], fill=(30, 180, 60))
    px, py = width // 2, 4 * height // 5
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r // 2
        ang = np.pi / 2 + k * np.pi / 5
        pts.append((px + rad * np.cos(ang), py - rad * np.sin(ang)))
    pts = [(round(float(x), 3), round(float(y), 3)) for x, y in pts]
    draw.polygon(pts, fill=(240, 200, 20))
    arr = np.asarray(img).astype(np.int16)
    noise = rng.integers(-12, 13, size=arr.shape, dtype=np.int16)
    arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


def model_config(tok, tie: bool, fullatt: list[int]) -> Qwen2_5_VLConfig:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vision = dict(
        depth=4,
        hidden_size=32,
        num_heads=2,
        intermediate_size=48,
        in_channels=3,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=56,
        fullatt_block_indexes=fullatt,
        out_hidden_size=64,
        tokens_per_second=2,
        hidden_act="silu",
        initializer_range=0.02,
    )
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=tie,
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    return cfg


def init_weights(model: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    """Every parameter from a seeded N(0, std); every RMSNorm weight 1 + 0.1 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    norm_params = set()
    for mname, mod in model.named_modules():
        if type(mod).__name__.endswith("RMSNorm"):
            for pname, _ in mod.named_parameters(recurse=False):
                norm_params.add(f"{mname}.{pname}")
    assert norm_params, "no RMSNorm found"
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):  # tied params appear once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name in norm_params:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(std * noise)


EXPECTED_STATE: dict[str, dict[str, torch.Tensor]] = {}


def load_model(path: Path) -> Qwen2_5_VLForConditionalGeneration:
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path), attn_implementation="eager", dtype=torch.float32
    )
    m.eval()
    # a key the loader did not find would be silently re-initialised: compare with what was saved
    expected = EXPECTED_STATE[path.name]
    got = m.state_dict()
    assert sorted(got) == sorted(expected), set(got) ^ set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    return m


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors_inventory(path: Path) -> list[tuple[str, list[int], str]]:
    out = []
    with safe_open(str(path), framework="pt") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            out.append((k, list(t.shape), str(t.dtype).replace("torch.", "")))
    return out


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


def window_index_of(model, grid_thw: torch.Tensor):
    vc = model.config.vision_config
    return get_vision_window_index(
        grid_thw, spatial_merge_size=vc.spatial_merge_size, window_size=vc.window_size, patch_size=vc.patch_size
    )


def vision_refs(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
    """Merged vision output (LLM order) and last-block hidden states in the processor's patch order."""
    visual = model.model.visual
    captured = {}

    def hook(_mod, _inp, out):
        captured["last_block"] = out[0] if isinstance(out, tuple) else out

    h = visual.blocks[-1].register_forward_hook(hook)
    with torch.no_grad():
        out = visual(pixel_values, grid_thw=grid_thw)
    h.remove()
    merged = out.pooler_output
    last_window_order = captured["last_block"]
    assert torch.equal(last_window_order, out.last_hidden_state)
    window_index, cu_window_seqlens = window_index_of(model, grid_thw)
    unit = visual.spatial_merge_unit
    seq = last_window_order.shape[0]
    # forward did: x.reshape(seq/unit, unit, -1)[window_index].reshape(seq, -1); undo it
    inv = torch.argsort(window_index)
    last_patch_order = last_window_order.reshape(seq // unit, unit, -1)[inv].reshape(seq, -1)
    # self-check: merging in patch order gives the same merged output
    with torch.no_grad():
        merged_check = visual.merger(last_patch_order)
    assert torch.allclose(merged_check, merged, atol=1e-5), (merged_check - merged).abs().max()
    return merged, last_patch_order, window_index, cu_window_seqlens


def greedy(model, inputs, n: int, pad_id: int):
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=n,
        min_new_tokens=0,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=pad_id,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
    )
    with torch.no_grad():
        out = model.generate(
            **inputs,
            generation_config=gen_cfg,
            return_dict_in_generate=True,
            output_logits=True,
        )
    L = inputs["input_ids"].shape[1]
    new = out.sequences[0, L:]
    assert new.shape[0] == n, new.shape
    logits = torch.stack([lg[0] for lg in out.logits])  # [n, vocab], raw (unprocessed) logits
    assert torch.equal(logits.argmax(-1), new), (logits.argmax(-1), new)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, new[:, None])[:, 0]
    top2 = logits.topk(2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    return new, logprobs, out.sequences, margin


def greedy_check_no_cache(model, inputs, sequences: torch.Tensor, n: int):
    """Recompute every step by a full forward (no KV cache); the argmax must agree with generate()."""
    L = inputs["input_ids"].shape[1]
    for step in range(n):
        ids = sequences[:, : L + step]
        mm = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros(1, step, dtype=inputs["mm_token_type_ids"].dtype)], dim=1
        )
        kw = dict(inputs)
        kw.update(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm)
        model.model.rope_deltas = None
        with torch.no_grad():
            lg = model(**kw).logits[0, -1]
        assert int(lg.argmax()) == int(sequences[0, L + step]), step
    model.model.rope_deltas = None


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

USER_TEXT = "Where is the red circle relative to the blue square?"
TEXT_CASES = ["move the red circle to the left of the blue square", "a purple hexagon zigzag"]
TEXT_ONLY_MESSAGES = [{"role": "user", "content": "move the red circle left"}]
N_GREEDY = 6
KEEP_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
}


def chat_messages():
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": USER_TEXT}]}]


def save_model_dir(out: Path, name: str, tok, tie: bool, fullatt: list[int], seed: int) -> dict:
    d = out / name
    torch.manual_seed(seed)
    cfg = model_config(tok, tie=tie, fullatt=fullatt)
    cfg._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    init_weights(model, seed)
    if tie:
        assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    model.eval()
    model.save_pretrained(str(d))

    image_processor = Qwen2VLImageProcessor(
        min_pixels=3136,
        max_pixels=12544,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=3136,
        max_pixels=12544,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(d))
    # transformers 5.24 writes one unified processor_config.json (image + video processor settings).
    # Hub Qwen2.5-VL checkpoints instead ship a standalone preprocessor_config.json; write that layout
    # (what the Rust loader must read) and drop the unified file. AutoProcessor loads both layouts.
    (d / "processor_config.json").unlink()
    image_processor.save_pretrained(str(d))
    # Hub files carry min_pixels / max_pixels at top level; transformers 5 writes
    # size={shortest_edge, longest_edge}. Keep both (they agree).
    pp = d / "preprocessor_config.json"
    pcfg = json.loads(pp.read_text())
    pcfg["min_pixels"] = 3136
    pcfg["max_pixels"] = 12544
    pp.write_text(json.dumps(pcfg, indent=2, sort_keys=True) + "\n")

    # loading artefacts of the temporary tokenizer directory, not tokenizer settings
    tc = d / "tokenizer_config.json"
    tcfg = json.loads(tc.read_text())
    for k in ("is_local", "local_files_only", "name_or_path"):
        tcfg.pop(k, None)
    tc.write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")

    for f in sorted(d.iterdir()):
        if f.name not in KEEP_FILES:
            print(f"  dropping {name}/{f.name}")
            f.unlink() if f.is_file() else shutil.rmtree(f)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out.resolve()

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    js: dict = {}
    ts: dict[str, torch.Tensor] = {}

    # ---- images ---------------------------------------------------------------------
    for i, (x, (w, h)) in enumerate(IMAGES.items()):
        make_image(w, h, seed=100 + i).save(out / f"image_{x}.png", format="PNG", optimize=False)
    images = {}
    for x in IMAGES:
        with Image.open(out / f"image_{x}.png") as im:
            im.load()
            images[x] = im.convert("RGB")
        assert images[x].size == IMAGES[x]

    # ---- tokenizer + model dirs -------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_hf_tokenizer(Path(tmp))
        written = {
            "tiny": save_model_dir(out, "tiny", tok, tie=False, fullatt=[1, 3], seed=11),
            "tiny_tied": save_model_dir(out, "tiny_tied", tok, tie=True, fullatt=[0], seed=10),
        }
    del tok
    EXPECTED_STATE.update(written)

    for f in ["tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja"]:
        if (out / "tiny" / f).exists():
            assert sha256(out / "tiny" / f) == sha256(out / "tiny_tied" / f), f

    # ---- reload processors ----------------------------------------------------------------
    proc_default = AutoProcessor.from_pretrained(str(out / "tiny"))
    # `backend=` on AutoProcessor would also apply to the video processor (torchvision only), so the
    # two image-processor backends are loaded with AutoImageProcessor and swapped in.
    def with_image_processor(backend: str):
        ip = AutoImageProcessor.from_pretrained(str(out / "tiny"), backend=backend)
        return Qwen2_5_VLProcessor(
            image_processor=ip,
            tokenizer=proc_default.tokenizer,
            video_processor=proc_default.video_processor,
            chat_template=proc_default.chat_template,
        )

    proc_pil = with_image_processor("pil")
    proc_fast = with_image_processor("torchvision")
    for p in (proc_default, proc_pil, proc_fast):
        assert dict(p.image_processor.size) == {"shortest_edge": 3136, "longest_edge": 12544}, p.image_processor.size
        assert p.chat_template == CHAT_TEMPLATE
    tok = proc_pil.tokenizer
    default_cls = type(proc_default.image_processor).__name__
    print("AutoProcessor default image processor:", default_cls)
    print("pil image processor:", type(proc_pil.image_processor).__name__)
    print("fast image processor:", type(proc_fast.image_processor).__name__)
    print("tokenizer class:", type(tok).__name__)
    raw_tok = Tokenizer.from_file(str(out / "tiny" / "tokenizer.json"))

    special = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    js["vocab_size"] = len(tok)
    js["special_tokens"] = special
    js["eos_token"] = tok.eos_token
    js["eos_token_id"] = tok.eos_token_id
    js["pad_token"] = tok.pad_token
    js["pad_token_id"] = tok.pad_token_id
    js["image_processor_default_class"] = default_cls
    js["image_processor_pil_class"] = type(proc_pil.image_processor).__name__
    js["image_processor_fast_class"] = type(proc_fast.image_processor).__name__
    js["chat_template_file"] = sorted(p.name for p in (out / "tiny").glob("chat_template*"))

    text_ids = []
    for s in TEXT_CASES:
        ids = tok(s)["input_ids"]
        assert ids == raw_tok.encode(s).ids, (s, ids)
        text_ids.append({"text": s, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids)})
    js["text_ids"] = text_ids
    js["decoded"] = tok.decode(text_ids[0]["ids"])
    assert js["decoded"] == TEXT_CASES[0], js["decoded"]

    chat_text = proc_pil.apply_chat_template(chat_messages(), tokenize=False, add_generation_prompt=True)
    js["chat_text"] = chat_text
    js["chat_text_ids"] = tok(chat_text)["input_ids"]  # before image-pad expansion
    assert js["chat_text_ids"] == raw_tok.encode(chat_text).ids

    inputs = {}
    for x in IMAGES:
        ip = proc_pil(text=[chat_text], images=[images[x]], return_tensors="pt")
        fp = proc_fast(text=[chat_text], images=[images[x]], return_tensors="pt")
        assert torch.equal(ip["input_ids"], fp["input_ids"])
        assert torch.equal(ip["image_grid_thw"], fp["image_grid_thw"])
        diff = (ip["pixel_values"] - fp["pixel_values"]).abs().max().item()
        print(f"image {x}: grid {ip['image_grid_thw'].tolist()} pixel PIL-vs-fast max|diff| = {diff:.6g}")
        js[f"pixel_max_abs_diff_pil_vs_fast.{x}"] = float(f"{diff:.6g}")
        # one uint8 level after normalisation is 1/255/std (0.0142..0.0150): count elements beyond 1e-3
        js[f"pixel_num_diff_gt_1e-3_pil_vs_fast.{x}"] = int(
            ((ip["pixel_values"] - fp["pixel_values"]).abs() > 1e-3).sum()
        )
        ts[f"pixel.{x}"] = f32(ip["pixel_values"])
        ts[f"pixel_fast.{x}"] = f32(fp["pixel_values"])
        grid = ip["image_grid_thw"]
        js[f"grid.{x}"] = grid.tolist()
        js[f"resized_hw.{x}"] = [int(grid[0, 1]) * 14, int(grid[0, 2]) * 14]
        js[f"original_wh.{x}"] = list(IMAGES[x])
        js[f"input_ids.{x}"] = ip["input_ids"][0].tolist()
        js[f"mm_token_type_ids.{x}"] = ip["mm_token_type_ids"][0].tolist()
        n_pad = int((ip["input_ids"] == special["<|image_pad|>"]).sum())
        assert n_pad == int(grid.prod()) // 4
        inputs[x] = ip

    text_only_chat = proc_pil.apply_chat_template(TEXT_ONLY_MESSAGES, tokenize=False, add_generation_prompt=True)
    text_only = proc_pil(text=[text_only_chat], return_tensors="pt")
    js["tiny.text_only.chat_text"] = text_only_chat
    js["tiny.text_only.input_ids"] = text_only["input_ids"][0].tolist()
    assert js["tiny.text_only.input_ids"] == raw_tok.encode(text_only_chat).ids

    # ---- model references -------------------------------------------------------------
    def model_refs(prefix: str, model, xs: list[str]) -> None:
        for x in xs:
            inp = inputs[x]
            pos, deltas = model.model.get_rope_index(
                inp["input_ids"],
                mm_token_type_ids=inp["mm_token_type_ids"],
                image_grid_thw=inp["image_grid_thw"],
                attention_mask=inp["attention_mask"],
            )
            js[f"{prefix}.position_ids.{x}"] = pos.tolist()
            js[f"{prefix}.rope_deltas.{x}"] = deltas.tolist()

            merged, blocks, widx, cuw = vision_refs(model, inp["pixel_values"], inp["image_grid_thw"])
            ts[f"{prefix}.vision.{x}"] = f32(merged)
            ts[f"{prefix}.vision_blocks.{x}"] = f32(blocks)
            js[f"{prefix}.window_index.{x}"] = widx.tolist()
            js[f"{prefix}.cu_window_seqlens.{x}"] = cuw.tolist()

            # full forward; capture the image embeds the model actually scattered + final hidden
            captured = {}

            def hook(_m, _a, kw, o):
                captured["inputs_embeds"] = kw["inputs_embeds"]
                captured["position_ids"] = kw["position_ids"]

            h = model.model.language_model.register_forward_hook(hook, with_kwargs=True)
            model.model.rope_deltas = None
            with torch.no_grad():
                base = model.model(**inp)
                lm = model(**inp)
            h.remove()
            model.model.rope_deltas = None
            hidden = base.last_hidden_state
            logits = lm.logits
            assert torch.allclose(model.lm_head(hidden), logits, atol=1e-5)
            assert torch.equal(captured["position_ids"], pos)
            img_mask = inp["input_ids"][0] == special["<|image_pad|>"]
            assert torch.allclose(captured["inputs_embeds"][0, img_mask], merged, atol=1e-6)
            ts[f"{prefix}.hidden.{x}"] = f32(hidden)
            ts[f"{prefix}.logits.{x}"] = f32(logits)

            new, logprobs, seqs, margin = greedy(model, inp, N_GREEDY, special["<|endoftext|>"])
            # the seeds were picked so that greedy decoding is not a single repeated token and
            # every step's top-1 logit leads the runner-up clearly
            assert margin > 0.01, margin
            js[f"{prefix}.greedy_min_logit_margin.{x}"] = round(margin, 4)
            greedy_check_no_cache(model, inp, seqs, N_GREEDY)
            js[f"{prefix}.greedy.{x}"] = new.tolist()
            ts[f"{prefix}.greedy_logprobs.{x}"] = f32(logprobs)
            print(f"{prefix} image {x}: L={inp['input_ids'].shape[1]} greedy={new.tolist()}")

    tiny = load_model(out / "tiny")
    model_refs("tiny", tiny, ["a", "b"])

    # text-only
    L = text_only["input_ids"].shape[1]
    captured = {}

    def hook_pos(_m, _a, kw, o):
        captured["position_ids"] = kw["position_ids"]

    h = tiny.model.language_model.register_forward_hook(hook_pos, with_kwargs=True)
    tiny.model.rope_deltas = None
    with torch.no_grad():
        lo = tiny(**text_only).logits
    h.remove()
    tiny.model.rope_deltas = None
    pos_text = torch.arange(L).view(1, 1, L).expand(3, 1, L)
    assert captured["position_ids"] is None or torch.equal(captured["position_ids"], pos_text)
    pos_rope, _ = tiny.model.get_rope_index(
        text_only["input_ids"], mm_token_type_ids=text_only["mm_token_type_ids"]
    )
    assert torch.equal(pos_rope, pos_text)
    js["tiny.text_only.position_ids"] = pos_text.tolist()
    ts["tiny.text_only.logits"] = f32(lo)

    tied = load_model(out / "tiny_tied")
    assert tied.lm_head.weight.data_ptr() == tied.model.language_model.embed_tokens.weight.data_ptr()
    model_refs("tiny_tied", tied, ["b"])
    del tied

    # ---- LoRA adapters ------------------------------------------------------------------
    ADAPTER_LOGITS: dict[str, torch.Tensor] = {}
    ADAPTER_STATE: dict[str, dict[str, torch.Tensor]] = {}

    def make_adapter(name: str, target_modules, seed: int) -> list[str]:
        base = load_model(out / "tiny")
        cfg = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=target_modules,
            lora_dropout=0.0,
            bias="none",
            init_lora_weights=False,
        )
        pm = get_peft_model(base, cfg)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in sorted(pm.named_parameters()):
                if "lora_" in pname:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        wrapped = sorted(n for n, m in pm.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
        pm.save_pretrained(str(out / name))
        # deterministic, path-free adapter_config.json: PEFT writes target_modules from a set
        # (order depends on PYTHONHASHSEED) and the absolute base-model path
        ac = out / name / "adapter_config.json"
        acfg = json.loads(ac.read_text())
        if isinstance(acfg["target_modules"], list):
            acfg["target_modules"] = sorted(acfg["target_modules"])
        acfg["base_model_name_or_path"] = "../tiny"
        ac.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
        pm.eval()
        pm.base_model.model.model.rope_deltas = None
        with torch.no_grad():
            ADAPTER_LOGITS[name] = pm(**inputs["b"]).logits
        ADAPTER_STATE[name] = {k: v.detach().clone() for k, v in pm.named_parameters() if "lora_" in k}
        return wrapped

    def adapter_logits(name: str) -> torch.Tensor:
        base = load_model(out / "tiny")
        pm = PeftModel.from_pretrained(base, str(out / name))
        pm.eval()
        got = {k: v for k, v in pm.named_parameters() if "lora_" in k}
        assert sorted(got) == sorted(ADAPTER_STATE[name])
        for k, v in ADAPTER_STATE[name].items():
            assert torch.equal(got[k], v), k
        pm.base_model.model.model.rope_deltas = None
        with torch.no_grad():
            lg = pm(**inputs["b"]).logits
        return lg

    wrapped_all = make_adapter(
        "lora", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], seed=4242
    )
    wrapped_text = make_adapter("lora_text", r".*language_model.*\.(q_proj|v_proj)", seed=4343)
    assert all(".language_model." in n for n in wrapped_text), wrapped_text
    assert any(".visual." in n for n in wrapped_all)
    js["lora.wrapped_modules"] = wrapped_all
    js["lora_text.wrapped_modules"] = wrapped_text
    lora_logits = adapter_logits("lora")
    lora_text_logits = adapter_logits("lora_text")
    assert torch.equal(lora_logits, ADAPTER_LOGITS["lora"])
    assert torch.equal(lora_text_logits, ADAPTER_LOGITS["lora_text"])
    base_logits = ts["tiny.logits.b"]
    print("lora max|logit change| =", (lora_logits - base_logits).abs().max().item())
    print("lora_text max|logit change| =", (lora_text_logits - base_logits).abs().max().item())
    assert (lora_logits - base_logits).abs().max() > 1e-2
    assert (lora_text_logits - base_logits).abs().max() > 1e-2
    ts["tiny.lora_logits.b"] = f32(lora_logits)
    ts["tiny.lora_text_logits.b"] = f32(lora_text_logits)
    for name in ["lora", "lora_text"]:
        for f in sorted((out / name).iterdir()):
            if f.name not in {"adapter_config.json", "adapter_model.safetensors"}:
                print(f"  dropping {name}/{f.name}")
                f.unlink() if f.is_file() else shutil.rmtree(f)
        js[f"{name}.adapter_tensors"] = {
            k: s for k, s, _ in safetensors_inventory(out / name / "adapter_model.safetensors")
        }

    # ---- write references ---------------------------------------------------------------
    for k in ts:
        assert ts[k].dtype == torch.float32
    js["tensor_shapes"] = {k: list(ts[k].shape) for k in sorted(ts)}
    js["model_tensors"] = {
        name: {k: s for k, s, _ in safetensors_inventory(out / name / "model.safetensors")}
        for name in ["tiny", "tiny_tied"]
    }
    js["meta"] = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "peft": peft.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        "note": "tensors in references.safetensors; model inputs use the PIL processor's pixel values",
    }
    save_file(dict(sorted(ts.items())), str(out / "references.safetensors"), metadata={"format": "pt"})
    (out / "references.json").write_text(json.dumps(js, indent=1, sort_keys=True, ensure_ascii=False) + "\n")

    # ---- report -----------------------------------------------------------------------
    for name in ["tiny", "tiny_tied"]:
        print(f"\n{name}/model.safetensors:")
        for k, s, dt in safetensors_inventory(out / name / "model.safetensors"):
            print(f"  {k} {s} {dt}")
    for name in ["lora", "lora_text"]:
        print(f"\n{name}/adapter_model.safetensors:")
        for k, s, dt in safetensors_inventory(out / name / "adapter_model.safetensors"):
            print(f"  {k} {s} {dt}")
    print("\nreferences.safetensors:")
    for k in sorted(ts):
        print(f"  {k} {list(ts[k].shape)}")

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256(p)}  {p.relative_to(out).as_posix()}" for p in files]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"\nwrote {len(files) + 1} files, {total} bytes into {out}")


if __name__ == "__main__":
    main()
