//! Parity of rlrig's Qwen2.5-VL with transformers 5.24 on the tiny random-weight fixtures of
//! `scripts/qwen_fixtures/make_qwen_fixtures.py` (tests/fixtures/qwen2_5_vl): the image
//! processor, the chat template and tokenizer, the 3-D positions, the vision tower, the
//! decoder's states and logits, greedy decoding with its log-probs, and PEFT adapters.
//! Relative errors are ‖out − ref‖ / ‖ref‖; torch is not needed to run them.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rlrig_contract::Image;
use rlrig_hf::lora;
use rlrig_qwen::burn;
use rlrig_qwen::model::{QwenVl, Sampling, positions};
use rlrig_qwen::preprocess::preprocess;
use rlrig_qwen::vision::VisionLayout;
use safetensors::SafeTensors;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl")
}

struct Refs {
    bytes: Vec<u8>,
    json: Value,
}

impl Refs {
    fn open() -> Refs {
        let r = root();
        Refs {
            bytes: std::fs::read(r.join("references.safetensors")).unwrap(),
            json: serde_json::from_str(
                &std::fs::read_to_string(r.join("references.json")).unwrap(),
            )
            .unwrap(),
        }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor {name}"));
        t.data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// An integer list or nested lists, flattened.
    fn ints(&self, key: &str) -> Vec<i64> {
        fn walk(v: &Value, out: &mut Vec<i64>) {
            match v {
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                Value::Number(n) => out.push(n.as_i64().unwrap()),
                other => panic!("{other} is not an integer"),
            }
        }
        let mut out = Vec::new();
        walk(
            self.json.get(key).unwrap_or_else(|| panic!("no {key}")),
            &mut out,
        );
        out
    }
}

fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let diff: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn image(name: &str) -> Image {
    Image::from_png(&std::fs::read(root().join(format!("image_{name}.png"))).unwrap()).unwrap()
}

fn load(name: &str) -> QwenVl {
    QwenVl::from_dir(&root().join(name), &Device::default()).unwrap()
}

const TEXT: &str = "Where is the red circle relative to the blue square?";

#[test]
fn the_image_processor_gives_transformers_pixels_and_grid() {
    let refs = Refs::open();
    let model = load("tiny");
    for x in ["a", "b", "c"] {
        let p = preprocess(&model.processor.image, &image(x)).unwrap();
        let grid: Vec<i64> = p.grid.iter().map(|&g| g as i64).collect();
        assert_eq!(grid, refs.ints(&format!("grid.{x}")), "image {x}");
        let hw = refs.ints(&format!("resized_hw.{x}"));
        assert_eq!((p.resized.0 as i64, p.resized.1 as i64), (hw[0], hw[1]));
        let e = rel_err(&p.values, &refs.f32(&format!("pixel.{x}")));
        assert!(e <= 1e-6, "pixels of image {x}: {e}");
    }
}

#[test]
fn chat_template_tokenizer_and_positions_match() {
    let refs = Refs::open();
    let model = load("tiny");
    assert_eq!(
        model.processor.chat.render(true, TEXT).unwrap(),
        refs.json["chat_text"].as_str().unwrap()
    );
    for t in refs.json["text_ids"].as_array().unwrap() {
        let ids: Vec<i64> = model
            .processor
            .chat
            .encode(t["text"].as_str().unwrap())
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let want: Vec<i64> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, want);
    }
    let first: Vec<u32> = refs.json["text_ids"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        model.processor.chat.decode(&first).unwrap(),
        refs.json["decoded"].as_str().unwrap()
    );
    for x in ["a", "b"] {
        let prompt = model.prompt(Some(&image(x)), TEXT).unwrap();
        let ids: Vec<i64> = prompt.ids.iter().map(|&i| i64::from(i)).collect();
        assert_eq!(ids, refs.ints(&format!("input_ids.{x}")), "image {x}");
        let p = positions(
            &model.config,
            &prompt.ids,
            prompt.image.as_ref().map(|p| p.grid),
        )
        .unwrap();
        let flat: Vec<i64> = p.concat();
        assert_eq!(
            flat,
            refs.ints(&format!("tiny.position_ids.{x}")),
            "image {x}"
        );
    }
    let prompt = model.prompt(None, "move the red circle left").unwrap();
    let ids: Vec<i64> = prompt.ids.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(ids, refs.ints("tiny.text_only.input_ids"));
    let flat = positions(&model.config, &prompt.ids, None)
        .unwrap()
        .concat();
    assert_eq!(flat, refs.ints("tiny.text_only.position_ids"));
}

fn check_model(name: &str, x: &str) {
    let refs = Refs::open();
    let model = load(name);
    let prompt = model.prompt(Some(&image(x)), TEXT).unwrap();
    let patches = prompt.image.as_ref().unwrap();
    // The vision blocks' states (before the merger), then the merged tokens.
    let layout = VisionLayout::new(&model.config.vision, &[patches.grid]);
    let pixels = Tensor::<2>::from_data(
        TensorData::new(patches.values.clone(), [patches.rows, patches.cols]),
        &Device::default(),
    );
    let full = &model.config.vision.fullatt_block_indexes;
    let blocks = values(
        model
            .net
            .vision()
            .blocks_forward(pixels, &layout, full, false),
    );
    let e = rel_err(&blocks, &refs.f32(&format!("{name}.vision_blocks.{x}")));
    assert!(e <= 1e-4, "{name} vision blocks of image {x}: {e}");
    let tokens = values(model.net.image_tokens(&model.config, patches, false));
    let e = rel_err(&tokens, &refs.f32(&format!("{name}.vision.{x}")));
    assert!(e <= 1e-4, "{name} vision tokens of image {x}: {e}");
    let hidden = values(
        model
            .net
            .hidden_states(&model.config, &prompt, &[], None, false)
            .unwrap(),
    );
    let e = rel_err(&hidden, &refs.f32(&format!("{name}.hidden.{x}")));
    assert!(e <= 1e-4, "{name} decoder states of image {x}: {e}");
    let logits = values(
        model
            .net
            .logits(&model.config, &prompt, &[], None, false)
            .unwrap(),
    );
    let e = rel_err(&logits, &refs.f32(&format!("{name}.logits.{x}")));
    assert!(e <= 1e-4, "{name} logits of image {x}: {e}");
    // Greedy decoding: the same six tokens, log-probs from the cache and from re-scoring.
    let sampling = Sampling {
        temperature: 0.0,
        max_new_tokens: 6,
    };
    let mut rng = rand::rng();
    let g = model
        .net
        .generate(&model.config, &prompt, sampling, &[], &mut rng, false)
        .unwrap();
    let want: Vec<i64> = refs.ints(&format!("{name}.greedy.{x}"));
    assert_eq!(
        g.tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
        want
    );
    let reference = refs.f32(&format!("{name}.greedy_logprobs.{x}"));
    for got in [&g.logprobs, &g.cached_logprobs] {
        let worst = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4,
            "{name} greedy log-probs of image {x}: {got:?} vs {reference:?}"
        );
    }
}

#[test]
fn vision_tower_decoder_and_greedy_decoding_match_on_two_images() {
    check_model("tiny", "a");
    check_model("tiny", "b");
}

#[test]
fn tied_embeddings_and_another_window_layout_match() {
    check_model("tiny_tied", "b");
}

#[test]
fn a_text_only_prompt_matches() {
    let refs = Refs::open();
    let model = load("tiny");
    let prompt = model.prompt(None, "move the red circle left").unwrap();
    let logits = values(
        model
            .net
            .logits(&model.config, &prompt, &[], None, false)
            .unwrap(),
    );
    let e = rel_err(&logits, &refs.f32("tiny.text_only.logits"));
    assert!(e <= 1e-4, "text-only logits: {e}");
}

#[test]
fn peft_adapters_give_peft_logits_and_round_trip() {
    let refs = Refs::open();
    for (dir, key) in [
        ("lora", "tiny.lora_logits.b"),
        ("lora_text", "tiny.lora_text_logits.b"),
    ] {
        let mut model = load("tiny");
        let config = lora::load_dir(&mut model.net, &root().join(dir)).unwrap();
        let prompt = model.prompt(Some(&image("b")), TEXT).unwrap();
        let logits = values(
            model
                .net
                .logits(&model.config, &prompt, &[], None, true)
                .unwrap(),
        );
        let e = rel_err(&logits, &refs.f32(key));
        assert!(e <= 1e-4, "{dir}: {e}");
        // Switched off, the adapters leave the base model's logits.
        let base = values(
            model
                .net
                .logits(&model.config, &prompt, &[], None, false)
                .unwrap(),
        );
        assert!(rel_err(&base, &refs.f32("tiny.logits.b")) <= 1e-4);
        // rlrig's PEFT directory loads back to the same adapters.
        let out = tempfile::tempdir().unwrap();
        lora::save_dir(&model.net, &config, out.path()).unwrap();
        let mut again = load("tiny");
        lora::load_dir(&mut again.net, out.path()).unwrap();
        let round = values(
            again
                .net
                .logits(&again.config, &prompt, &[], None, true)
                .unwrap(),
        );
        assert_eq!(round, logits, "{dir}: round trip");
    }
}

#[test]
fn missing_files_misshapen_tensors_and_unsupported_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(root().join("tiny")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let device = Device::default();
    let err = |text: &str| {
        std::fs::write(&config_path, text).unwrap();
        match QwenVl::from_dir(dir.path(), &device) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(&original.replace("\"intermediate_size\": 48", "\"intermediate_size\": 50"));
    assert!(e.contains("visual.blocks.0.mlp.gate_proj"), "{e}");
    let e = err(&original.replace(
        "\"use_sliding_window\": false",
        "\"use_sliding_window\": true",
    ));
    assert!(e.contains("use_sliding_window"), "{e}");
    let e = err(&original.replace(
        "\"tokens_per_second\": 2",
        "\"tokens_per_second\": 2, \"deepstack\": 1",
    ));
    assert!(e.contains("vision_config.deepstack"), "{e}");
    std::fs::write(&config_path, &original).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = QwenVl::from_dir(dir.path(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("missing"),
        "{e}"
    );
}
