//! Parity with diffusers / transformers for the Stable Diffusion 3 family on tiny random-weight
//! models: the fixtures in `tests/fixtures/sd3/` were written by
//! `scripts/sd_fixtures/make_sd3_fixtures.py` (torch is not needed here). Module outputs must be
//! within 1e-4 relative error (‖out − ref‖ / ‖ref‖) of the reference.

use std::path::{Path, PathBuf};

use rlrig_sd::burn::tensor::{Device, Tensor, TensorData};
use rlrig_sd::flow_match::FlowMatchScheduler;
use rlrig_sd::mmdit::Mmdit;
use rlrig_sd::sd3::{Sd3Pipeline, T5};
use rlrig_sd::vae::Vae;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd3")
}

mod common;
use common::rel_err;

/// A reference file of `tests/fixtures/sd3/refs/`.
struct Refs;

impl Refs {
    fn open(name: &str) -> common::Refs {
        common::Refs::open(&fixtures().join("refs").join(name))
    }
}

fn close<const D: usize>(name: &str, out: Tensor<D>, refs: &common::Refs, key: &str, tol: f64) {
    let (reference, shape) = refs.f32(key);
    assert_eq!(out.dims().to_vec(), shape, "{name}: shape");
    let e = rel_err(&out.into_data().try_to_vec::<f32>().unwrap(), &reference);
    assert!(e <= tol, "{name}: relative error {e:e}");
}

/// The transformer on the reference inputs `x{set}`, `t{set}`, `context{set}`, `pooled{set}`.
fn on_inputs(model: &Mmdit, refs: &common::Refs, set: &str) -> Tensor<4> {
    let device = Device::flex();
    model.forward(
        refs.tensor(&format!("x{set}"), &device),
        &refs.values(&format!("t{set}")),
        refs.tensor(&format!("context{set}"), &device),
        refs.tensor(&format!("pooled{set}"), &device),
    )
}

#[test]
fn the_mmdit_matches_diffusers_for_sd3_and_sd35_square_and_not() {
    let device = Device::flex();
    let refs = Refs::open("transformer.safetensors");
    for (name, dir) in [("sd3", "tiny-sd3"), ("sd35", "tiny-sd35")] {
        let model = Mmdit::from_dir(fixtures().join(dir).join("transformer"), &device).unwrap();
        let out = on_inputs(&model, &refs, "");
        close(name, out, &refs, &format!("{name}.out"), 1e-4);
        // 6×8 latents: a non-square crop of the position grid, one timestep for the batch.
        let out = on_inputs(&model, &refs, "2");
        close(name, out, &refs, &format!("{name}.out2"), 1e-4);
    }
}

#[test]
fn the_sd3_vae_encodes_and_decodes_as_diffusers() {
    let device = Device::flex();
    let vae = Vae::from_dir(fixtures().join("tiny-sd3/vae"), &device).unwrap();
    assert_eq!((vae.scaling_factor(), vae.shift_factor()), (1.5305, 0.0609));
    let refs = Refs::open("vae.safetensors");
    let posterior = vae.encode(refs.tensor("image", &device));
    close("encode: mean", posterior.mean, &refs, "mean", 1e-4);
    close("encode: std", posterior.std, &refs, "std", 1e-4);
    close(
        "decode",
        vae.decode(refs.tensor("z", &device)),
        &refs,
        "decoded",
        1e-4,
    );
}

#[test]
fn the_flow_match_schedule_and_step_match_diffusers() {
    let device = Device::flex();
    let scheduler =
        FlowMatchScheduler::from_file(fixtures().join("tiny-sd3/scheduler/scheduler_config.json"))
            .unwrap();
    assert_eq!(scheduler.shift, 3.0);
    let refs = Refs::open("scheduler.safetensors");
    for n in [1, 2, 4, 28] {
        let s = scheduler.schedule(n);
        let sigmas = refs.f32(&format!("sigmas.{n}")).0;
        let timesteps = refs.f32(&format!("timesteps.{n}")).0;
        assert_eq!(s.sigmas, sigmas, "σ of {n} steps");
        assert_eq!(s.timesteps, timesteps, "timesteps of {n} steps");
    }
    let s = scheduler.schedule(4);
    let out = s.step(
        refs.tensor("velocity", &device),
        1,
        refs.tensor("sample", &device),
    );
    close("step", out, &refs, "stepped", 1e-6);
}

/// Writes `dir/config.json` as `edit` makes it from the tiny SD3 transformer's, with its weights.
fn transformer_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let src = fixtures().join("tiny-sd3/transformer");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let weights = "diffusion_pytorch_model.safetensors";
    if !dir.join(weights).exists() {
        std::fs::copy(src.join(weights), dir.join(weights)).unwrap();
    }
}

#[test]
fn bad_sd3_configs_and_weights_are_errors_naming_the_key_or_tensor() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = |dir: &Path| Mmdit::from_dir(dir, &device).unwrap_err().to_string();

    // A missing weights file.
    std::fs::copy(
        fixtures().join("tiny-sd3/transformer/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let e = err(dir);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors: missing"),
        "{e}"
    );
    // A key of a feature this port does not have.
    transformer_with(dir, |c| c["use_pooled_projection"] = true.into());
    let e = err(dir);
    assert!(e.contains("`use_pooled_projection`"), "{e}");
    // Another QK norm.
    transformer_with(dir, |c| c["qk_norm"] = "layer_norm".into());
    let e = err(dir);
    assert!(e.contains("`qk_norm`") && e.contains("layer_norm"), "{e}");
    // Weights of another shape: a wider text projection than the file's.
    transformer_with(dir, |c| c["joint_attention_dim"] = 64.into());
    let e = err(dir);
    assert!(e.contains("context_embedder"), "{e}");
    // One layer more than the weights: the file's last block (text stream not updated) does
    // not fit the config's middle block.
    transformer_with(dir, |c| c["num_layers"] = 3.into());
    let e = err(dir);
    assert!(
        e.contains("transformer_blocks.1.norm1_context.linear.weight"),
        "{e}"
    );
    // SD3.5's QK norms asked for on SD3.0 weights.
    transformer_with(dir, |c| c["qk_norm"] = "rms_norm".into());
    let e = err(dir);
    assert!(e.contains("norm_q"), "{e}");

    // Schedulers: another class, a feature turned on, an unknown key.
    let path = dir.join("scheduler_config.json");
    for (json, needle) in [
        (
            r#"{"_class_name": "EulerDiscreteScheduler"}"#,
            "EulerDiscreteScheduler",
        ),
        (
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true}"#,
            "`use_dynamic_shifting`",
        ),
        (
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1}"#,
            "`shift_terminal`",
        ),
        (
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "sigma_schedule": "x"}"#,
            "`sigma_schedule`",
        ),
    ] {
        std::fs::write(&path, json).unwrap();
        let e = FlowMatchScheduler::from_file(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{json}: {e}");
    }
}

fn pipeline(t5: T5, device: &Device) -> Sd3Pipeline {
    Sd3Pipeline::from_dir(fixtures().join("tiny-sd3"), t5, device).unwrap()
}

const PROMPTS: [&str; 2] = [
    "a photo of a cat and a dog",
    "turn the sky into a starry night",
];

#[test]
fn the_prompt_conditioning_matches_diffusers_without_t5() {
    let device = Device::flex();
    let p = pipeline(T5::Zeros, &device);
    let refs = Refs::open("text.safetensors");
    let cond = p.encode(&PROMPTS, 8, &device).unwrap();
    close("prompt_embeds", cond.states, &refs, "prompt_embeds", 1e-4);
    close("pooled", cond.pooled, &refs, "pooled", 1e-4);
    let uncond = p.encode(&["", ""], 8, &device).unwrap();
    close(
        "negative",
        uncond.states,
        &refs,
        "negative_prompt_embeds",
        1e-4,
    );
    close(
        "negative pooled",
        uncond.pooled,
        &refs,
        "negative_pooled",
        1e-4,
    );
}

/// The reference run: both prompts, negative `""`, the reference's starting latents, 2 steps,
/// guidance 4.5, 8 T5 tokens.
fn two_steps(p: &Sd3Pipeline, refs: &common::Refs) -> rlrig_sd::sd3::Sd3Generated {
    let latents = refs.tensor("latents", &Device::flex());
    p.generate(&PROMPTS, &["", ""], latents, 2, 4.5, 8).unwrap()
}

#[test]
fn a_two_step_guided_sd3_pipeline_matches_diffusers_end_to_end() {
    let device = Device::flex();
    let p = pipeline(T5::Zeros, &device);
    assert_eq!(p.default_size(), 16);
    let refs = Refs::open("pipeline.safetensors");
    let out = two_steps(&p, &refs);
    close("final latents", out.latents, &refs, "final", 1e-3);
    let (image, shape) = refs.f32("image");
    let expected: Vec<f32> = image
        .iter()
        .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect();
    assert_eq!(out.images.dims().to_vec(), shape);
    let e = rel_err(
        &out.images.into_data().try_to_vec::<f32>().unwrap(),
        &expected,
    );
    assert!(e <= 1e-3, "image: relative error {e:e}");
    // With T5.
    let p = pipeline(T5::Auto, &device);
    let out = two_steps(&p, &refs);
    close(
        "final latents with T5",
        out.latents,
        &refs,
        "t5.final",
        1e-3,
    );
}

#[test]
fn t5_tokens_states_and_conditioning_match_transformers() {
    let device = Device::flex();
    let p = pipeline(T5::Auto, &device);
    let refs = Refs::open("text.safetensors");
    let (tok, enc) = p.t5.as_ref().expect("the fixture lists T5");
    let ids = tok.encode(&[PROMPTS[0], PROMPTS[1], ""], 8).unwrap();
    let flat: Vec<f32> = ids.iter().flatten().map(|&i| i as f32).collect();
    let (want, shape) = refs.f32("t5.ids");
    assert_eq!((flat, vec![3, 8]), (want, shape), "T5 token ids");
    let ids: Vec<i64> = ids.into_iter().flatten().map(i64::from).collect();
    let ids =
        Tensor::<2, rlrig_sd::burn::tensor::Int>::from_data(TensorData::new(ids, [3, 8]), &device);
    close("T5 states", enc.forward(ids), &refs, "t5.states", 1e-4);
    let cond = p.encode(&PROMPTS, 8, &device).unwrap();
    close(
        "prompt_embeds with T5",
        cond.states,
        &refs,
        "t5.prompt_embeds",
        1e-4,
    );
    let uncond = p.encode(&["", ""], 8, &device).unwrap();
    close(
        "negative with T5",
        uncond.states,
        &refs,
        "t5.negative_prompt_embeds",
        1e-4,
    );
}

#[test]
fn another_third_encoder_is_refused_and_a_directory_without_t5_runs_on_zeros() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd3");
    copy_dir(&fixtures().join("tiny-sd3"), &dir);
    let index = dir.join("model_index.json");
    let original = std::fs::read_to_string(&index).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["text_encoder_3"] = serde_json::json!(["transformers", "UMT5EncoderModel"]);
    std::fs::write(&index, cfg.to_string()).unwrap();
    let e = Sd3Pipeline::from_dir(&dir, T5::Auto, &device)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("`text_encoder_3`") && e.contains("UMT5EncoderModel"),
        "{e}"
    );
    assert!(
        Sd3Pipeline::from_dir(&dir, T5::Zeros, &device)
            .unwrap()
            .t5
            .is_none()
    );
    // No T5 listed: zero states, as diffusers with text_encoder_3=None.
    cfg["text_encoder_3"] = serde_json::json!([null, null]);
    std::fs::write(&index, cfg.to_string()).unwrap();
    let p = Sd3Pipeline::from_dir(&dir, T5::Auto, &device).unwrap();
    assert!(p.t5.is_none());
    let refs = Refs::open("text.safetensors");
    close(
        "zero T5",
        p.encode(&PROMPTS, 8, &device).unwrap().states,
        &refs,
        "prompt_embeds",
        1e-4,
    );
    // A T5 of another width than the transformer's text width.
    std::fs::write(&index, &original).unwrap();
    let t5 = dir.join("text_encoder_3/config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&t5).unwrap()).unwrap();
    c["feed_forward_proj"] = "gated-silu".into();
    std::fs::write(&t5, c.to_string()).unwrap();
    let e = Sd3Pipeline::from_dir(&dir, T5::Auto, &device)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("`feed_forward_proj`") && e.contains("gated-silu"),
        "{e}"
    );
    // A CLIP without projection cannot pool.
    let te = dir.join("text_encoder_2/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&te).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["CLIPTextModel"]);
    std::fs::write(&te, cfg.to_string()).unwrap();
    let e = Sd3Pipeline::from_dir(&dir, T5::Zeros, &device)
        .err()
        .expect("refused")
        .to_string();
    // The weights hold a projection the config does not have: named.
    assert!(e.contains("text_projection"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_peft_lora_adapter_gives_peft_s_output_and_unsupported_peft_features_are_named() {
    let device = Device::flex();
    let refs = Refs::open("transformer.safetensors");
    let mut model = Mmdit::from_dir(fixtures().join("tiny-sd35/transformer"), &device).unwrap();
    let config = rlrig_hf::lora::load_dir(&mut model, &fixtures().join("lora-sd35")).unwrap();
    assert_eq!((config.r, config.lora_alpha), (3, 6.0));
    let out = on_inputs(&model, &refs, "");
    close("sd35 + LoRA", out, &refs, "sd35_lora.out", 1e-4);
    // Saved by rlrig and loaded again: the same adapters.
    let tmp = tempfile::tempdir().unwrap();
    rlrig_hf::lora::save_dir(&model, &config, tmp.path()).unwrap();
    let mut again = Mmdit::from_dir(fixtures().join("tiny-sd35/transformer"), &device).unwrap();
    rlrig_hf::lora::load_dir(&mut again, tmp.path()).unwrap();
    assert_eq!(
        rlrig_hf::lora::to_bytes(&again, &config).unwrap(),
        rlrig_hf::lora::to_bytes(&model, &config).unwrap()
    );
    // PEFT settings that change the adapter's meaning are refused by name.
    let src = fixtures().join("lora-sd35");
    for (key, value) in [
        ("use_rslora", serde_json::json!(true)),
        ("rank_pattern", serde_json::json!({"to_q": 8})),
        ("layers_to_transform", serde_json::json!([0])),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        cfg[key] = value;
        std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut m = Mmdit::from_dir(fixtures().join("tiny-sd35/transformer"), &device).unwrap();
        let e = rlrig_hf::lora::load_dir(&mut m, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{key}`")), "{e}");
    }
    // An adapter for another model (tiny-sd3 has no attn2 and 2 blocks): tensors named.
    let mut other = Mmdit::from_dir(fixtures().join("tiny-sd3/transformer"), &device).unwrap();
    let e = rlrig_hf::lora::load_dir(&mut other, &src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("transformer_blocks.2") || e.contains("attn2"),
        "{e}"
    );
}

#[test]
fn the_sde_step_and_its_log_prob_match_flow_grpo_in_f64() {
    use rlrig_models::rectified_flow::{SdeStep, gaussian_log_prob};
    let device = Device::flex();
    let refs = Refs::open("scheduler.safetensors");
    let scheduler =
        FlowMatchScheduler::from_file(fixtures().join("tiny-sd3/scheduler/scheduler_config.json"))
            .unwrap();
    let levels: Vec<f64> = scheduler
        .schedule(4)
        .sigmas
        .iter()
        .map(|&s| f64::from(s))
        .collect();
    // Step 0 starts at σ = 1, where the guard puts σ_1 in the denominator.
    for k in [0, 2] {
        let coef = SdeStep::on(&levels, k, 0.7);
        let mean = coef.mean(
            refs.tensor(&format!("sde{k}.x"), &device),
            refs.tensor(&format!("sde{k}.v"), &device),
        );
        close(
            "SDE mean",
            mean.clone(),
            &refs,
            &format!("sde{k}.mean"),
            1e-6,
        );
        let logp = gaussian_log_prob(
            refs.tensor(&format!("sde{k}.x_next"), &device),
            mean,
            coef.std,
        );
        close(
            "SDE log-prob",
            logp,
            &refs,
            &format!("sde{k}.log_prob"),
            1e-5,
        );
    }
}

/// Splits `dir/diffusion_pytorch_model.safetensors` into two shards with diffusers' index, into
/// `to`, dropping the tensors named in `drop`.
fn shard(dir: &Path, to: &Path, drop: &[&str]) {
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names.retain(|n| !drop.contains(&n.as_str()));
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        std::fs::write(to.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part {
            map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        to.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::copy(dir.join("config.json"), to.join("config.json")).unwrap();
}

#[test]
fn sharded_weights_load_as_one_file_and_a_missing_shard_or_tensor_is_named() {
    let device = Device::flex();
    let refs = Refs::open("transformer.safetensors");
    let src = fixtures().join("tiny-sd35/transformer");
    let tmp = tempfile::tempdir().unwrap();
    shard(&src, tmp.path(), &[]);
    let model = Mmdit::from_dir(tmp.path(), &device).unwrap();
    let out = on_inputs(&model, &refs, "");
    close("sharded sd35", out, &refs, "sd35.out", 1e-4);
    // A shard the index names is not there.
    std::fs::remove_file(
        tmp.path()
            .join("diffusion_pytorch_model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let e = Mmdit::from_dir(tmp.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("00002-of-00002.safetensors: missing"), "{e}");
    // A tensor in no shard.
    let tmp = tempfile::tempdir().unwrap();
    shard(&src, tmp.path(), &["proj_out.weight"]);
    let e = Mmdit::from_dir(tmp.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing tensors: proj_out"), "{e}");
}
