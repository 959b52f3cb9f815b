//! Parity with diffusers / transformers on tiny random-weight models: the fixtures in
//! `tests/fixtures/` were written by `scripts/sd_fixtures/make_sd_fixtures.py --small`
//! (torch is not needed here). Every module output must be within 1e-4 relative error
//! (‖out − ref‖ / ‖ref‖) of the reference.

use std::path::{Path, PathBuf};

use rlrig_sd::burn::tensor::{Device, Int, Tensor, TensorData};
use rlrig_sd::clip::ClipTextModel;
use rlrig_sd::pipeline::Pipeline;
use rlrig_sd::scheduler::Scheduler;
use rlrig_sd::tokenizer::ClipTokenizer;
use rlrig_sd::unet::UNet;
use rlrig_sd::vae::Vae;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

mod common;
use common::{rel_err, values};

/// A reference file of `tests/fixtures/refs/`.
struct Refs;

impl Refs {
    fn open(name: &str) -> common::Refs {
        common::Refs::open(&fixtures().join("refs").join(name))
    }
}

#[test]
fn the_tokenizer_matches_clip_from_tokenizer_json_and_from_vocab_and_merges() {
    let dir = fixtures().join("tiny-sd/tokenizer");
    // What SD 1.x checkpoints ship: vocab.json and merges.txt without tokenizer.json.
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("refs/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    for tok in [
        ClipTokenizer::from_dir(&dir).unwrap(),
        ClipTokenizer::from_dir(tmp).unwrap(),
    ] {
        assert_eq!(tok.max_len(), 16);
        for case in cases["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        }
    }
}

#[test]
fn the_clip_text_encoder_matches_transformers() {
    let device = Device::flex();
    let model = ClipTextModel::from_dir(fixtures().join("tiny-sd/text_encoder"), &device).unwrap();
    let refs = Refs::open("clip.safetensors");
    let (ids, shape) = refs.f32("input_ids");
    let ids: Vec<i64> = ids.into_iter().map(|x| x as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let (states, last) = model.forward_all(ids);
    for (i, s) in states.into_iter().enumerate() {
        let e = rel_err(&values(s), &refs.f32(&format!("hidden_states.{i}")).0);
        assert!(e <= 1e-4, "hidden_states.{i}: relative error {e:e}");
    }
    let e = rel_err(&values(last), &refs.f32("last_hidden_state").0);
    assert!(e <= 1e-4, "last_hidden_state: relative error {e:e}");
}

#[test]
fn ddim_and_euler_match_diffusers_for_epsilon_and_v_prediction() {
    let device = Device::flex();
    let refs = Refs::open("schedulers.safetensors");
    let meta = refs.meta();
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    for name in ["ddim_eps", "ddim_v", "euler_eps", "euler_v"] {
        let cfg = tmp.join(format!("{name}.json"));
        std::fs::write(&cfg, meta["configs"][name].to_string()).unwrap();
        let scheduler = Scheduler::from_file(&cfg).unwrap();
        if name == "ddim_eps" {
            let ac: Vec<f32> = scheduler.alphas_cumprod.iter().map(|&a| a as f32).collect();
            let e = rel_err(&ac, &refs.f32("alphas_cumprod").0);
            assert!(e <= 1e-5, "alphas_cumprod: {e:e}");
        }
        for n in [2, 10, 50] {
            let s = scheduler.schedule(n);
            let ts: Vec<f32> = s.timesteps.iter().map(|&t| t as f32).collect();
            assert_eq!(
                ts,
                refs.f32(&format!("{name}.n{n}.timesteps")).0,
                "{name} n={n}"
            );
            if name.starts_with("euler") {
                let sig: Vec<f32> = s.sigmas.iter().map(|&t| t as f32).collect();
                let e = rel_err(&sig, &refs.f32(&format!("{name}.n{n}.sigmas")).0);
                assert!(e <= 1e-5, "{name} n={n} sigmas: {e:e}");
            }
        }
        let s = scheduler.schedule(2);
        let init = refs.f32(&format!("{name}.init_noise_sigma")).0[0] as f64;
        assert!((s.init_noise_sigma() - init).abs() <= 1e-5 * init, "{name}");
        let mut x = refs.tensor::<4>("step_input.sample", &device);
        for i in 0..2 {
            let scaled = s.scale_model_input(x.clone(), i);
            let out = refs.tensor::<4>(&format!("step_input.model_output.{i}"), &device);
            let step = s.step(out, i, x);
            for (what, t) in [
                ("scaled_input", scaled),
                ("pred_original_sample", step.pred_original_sample),
                ("prev_sample", step.prev_sample.clone()),
            ] {
                let e = rel_err(&values(t), &refs.f32(&format!("{name}.step{i}.{what}")).0);
                assert!(e <= 1e-4, "{name} step {i} {what}: relative error {e:e}");
            }
            x = step.prev_sample;
        }
    }
}

#[test]
fn bad_weights_and_configs_are_clear_errors() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let dir = fixtures().join("tiny-sd/text_encoder");
    // A missing weights file.
    std::fs::copy(dir.join("config.json"), tmp.join("config.json")).unwrap();
    let e = ClipTextModel::from_dir(tmp, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors: missing"), "{e}");
    // Weights of another architecture: one layer more in the config.
    std::fs::copy(dir.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let e = ClipTextModel::from_dir(tmp, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensors") && e.contains("layers.2."),
        "{e}"
    );
    // A wider model than the weights.
    cfg["num_hidden_layers"] = 2.into();
    cfg["intermediate_size"] = 40.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let e = ClipTextModel::from_dir(tmp, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc1"), "{e}");
    // An unsupported activation names the key.
    cfg["intermediate_size"] = 37.into();
    cfg["hidden_act"] = "relu".into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let e = ClipTextModel::from_dir(tmp, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`hidden_act`"), "{e}");
    // A malformed config names the key.
    cfg["hidden_act"] = "gelu".into();
    cfg["num_attention_heads"] = "four".into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let e = ClipTextModel::from_dir(tmp, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_attention_heads"), "{e}");
    // An unsupported scheduler.
    std::fs::write(
        tmp.join("s.json"),
        r#"{"_class_name": "PNDMScheduler", "num_train_timesteps": 1000}"#,
    )
    .unwrap();
    let e = Scheduler::from_file(tmp.join("s.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`_class_name`") && e.contains("PNDMScheduler"),
        "{e}"
    );
}

fn close(name: &str, out: Tensor<4>, refs: &common::Refs, key: &str) {
    let e = rel_err(&values(out), &refs.f32(key).0);
    assert!(e <= 1e-4, "{name}: relative error {e:e}");
}

#[test]
fn the_vae_encodes_and_decodes_as_diffusers() {
    let device = Device::flex();
    let vae = Vae::from_dir(fixtures().join("tiny-sd/vae"), &device).unwrap();
    assert_eq!(vae.scaling_factor(), 0.18215);
    let refs = Refs::open("vae.safetensors");
    let posterior = vae.encode(refs.tensor::<4>("image", &device));
    close("encode: mean", posterior.mean, &refs, "latent_mean");
    close("encode: std", posterior.std, &refs, "latent_std");
    close(
        "decode",
        vae.decode(refs.tensor::<4>("latent", &device)),
        &refs,
        "decoded",
    );
    close(
        "decode the mean",
        vae.decode(refs.tensor::<4>("latent_mean", &device)),
        &refs,
        "decoded_from_mean",
    );
}

fn unet_matches(dir: &str, variant: Option<&str>, refs_file: &str, tol: f64) {
    let device = Device::flex();
    let unet = UNet::from_dir(fixtures().join(dir), variant, &device).unwrap();
    let refs = Refs::open(refs_file);
    let (ctx, s) = refs.f32("encoder_hidden_states");
    let ctx = Tensor::<3>::from_data(TensorData::new(ctx, [s[0], s[1], s[2]]), &device);
    let ts: Vec<f64> = refs.f32("timestep").0.iter().map(|&t| t as f64).collect();
    let sample = refs.tensor::<4>("sample", &device);
    let out = unet.forward(sample.clone(), &ts, &ctx);
    let e = rel_err(&values(out), &refs.f32("out").0);
    assert!(e <= tol, "{dir} {variant:?}: out: relative error {e:e}");
    let out = unet.forward(sample, &[500.0], &ctx);
    let e = rel_err(&values(out), &refs.f32("out_t500").0);
    assert!(
        e <= tol,
        "{dir} {variant:?}: out at t = 500: relative error {e:e}"
    );
}

#[test]
fn the_sd1_unet_matches_diffusers() {
    unet_matches("tiny-sd/unet", None, "unet_sd.safetensors", 1e-4);
}

#[test]
fn the_sd2_unet_matches_diffusers() {
    unet_matches("tiny-sd2/unet", None, "unet_sd2.safetensors", 1e-4);
}

#[test]
fn the_instruct_pix2pix_unet_matches_diffusers() {
    unet_matches("tiny-ip2p/unet", None, "unet_ip2p.safetensors", 1e-4);
}

#[test]
fn fp16_unet_weights_load_and_stay_close() {
    // fp16 weights against the fp32 model's reference: only the weights' rounding differs.
    unet_matches("tiny-sd/unet", Some("fp16"), "unet_sd.safetensors", 3e-3);
}

/// The tiny SD pipeline with the UNet and scheduler of another fixture directory.
fn pipeline(unet: &str, scheduler: &str, device: &Device) -> Pipeline {
    let sd = fixtures().join("tiny-sd");
    Pipeline {
        tokenizer: ClipTokenizer::from_dir(sd.join("tokenizer")).unwrap(),
        text_encoder: ClipTextModel::from_dir(sd.join("text_encoder"), device).unwrap(),
        unet: UNet::from_dir(fixtures().join(unet), None, device).unwrap(),
        vae: Vae::from_dir(sd.join("vae"), device).unwrap(),
        scheduler: Scheduler::from_file(fixtures().join(scheduler).join("scheduler_config.json"))
            .unwrap(),
    }
}

fn pipeline_matches(p: &Pipeline, refs_file: &str, edit: bool) {
    let device = Device::flex();
    let refs = Refs::open(refs_file);
    let meta = refs.meta();
    let prompt = meta["prompt"].as_str().unwrap();
    let g = meta["guidance_scale"].as_f64().unwrap();
    let steps = meta["num_inference_steps"].as_u64().unwrap() as usize;
    let latents = refs.tensor::<4>("latents_in", &device);
    let out = if edit {
        let ig = meta["image_guidance_scale"].as_f64().unwrap();
        let image = refs.tensor::<4>("image_in_01", &device);
        p.edit(&[prompt], image, latents, steps, g, ig).unwrap()
    } else {
        p.generate(&[prompt], &[""], latents, steps, g).unwrap()
    };
    for (what, t, key) in [
        ("latents", out.latents, "latents_out"),
        ("images", out.images, "image_out"),
    ] {
        let e = rel_err(&values(t), &refs.f32(key).0);
        assert!(e <= 1e-3, "{refs_file}: {what}: relative error {e:e}");
    }
}

#[test]
fn two_step_pipelines_match_diffusers_end_to_end() {
    let device = Device::flex();
    let sd = Pipeline::from_dir(fixtures().join("tiny-sd"), &device).unwrap();
    pipeline_matches(&sd, "pipeline_sd_ddim.safetensors", false);
    let euler = pipeline("tiny-sd/unet", "tiny-sd/scheduler_euler", &device);
    pipeline_matches(&euler, "pipeline_sd_euler.safetensors", false);
    let sd2 = pipeline("tiny-sd2/unet", "tiny-sd2/scheduler", &device);
    pipeline_matches(&sd2, "pipeline_sd2_vpred.safetensors", false);
    let ip2p = pipeline("tiny-ip2p/unet", "tiny-ip2p/scheduler", &device);
    pipeline_matches(&ip2p, "pipeline_ip2p.safetensors", true);
}

/// diffusers computes its schedules in float32: agreement to 1e-4 relative (timesteps exactly,
/// numpy's round-half-to-even included).
#[test]
fn every_timestep_spacing_matches_diffusers_including_sd_turbo_trailing() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("refs/spacings.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let cfg = tmp.path().join(format!("{i}.json"));
        std::fs::write(&cfg, case["config"].to_string()).unwrap();
        let s = Scheduler::from_file(&cfg).unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let what = format!(
            "{} {} n={n}",
            case["config"]["_class_name"], case["config"]["timestep_spacing"]
        );
        let sched = s.schedule(n);
        let want: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(sched.timesteps.len(), want.len(), "{what}");
        for (a, b) in sched.timesteps.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-3,
                "{what}: timesteps {:?} vs {want:?}",
                sched.timesteps
            );
        }
        if let Some(sig) = case.get("sigmas") {
            let want: Vec<f64> = serde_json::from_value(sig.clone()).unwrap();
            for (a, b) in sched.sigmas.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                    "{what}: sigmas {:?} vs {want:?}",
                    sched.sigmas
                );
            }
        }
        let init = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (sched.init_noise_sigma() - init).abs() <= 1e-4 * init,
            "{what}: init σ {} vs {init}",
            sched.init_noise_sigma()
        );
    }
}

#[test]
fn each_kind_refuses_the_other_kinds_unet() {
    use rlrig_sd::kinds::{Ip2pEditor, SdDiffuser, SdSettings};
    let device = Device::flex();
    let settings = |unet: &str| SdSettings {
        path: fixtures().join("tiny-sd"),
        unet: Some(fixtures().join(unet)),
        scheduler: None,
        variant: None,
        steps: 2,
        guidance: 7.5,
        image_guidance: 1.5,
        negative_prompt: String::new(),
    };
    let base = Path::new("/");
    let e = SdDiffuser::new(&settings("tiny-ip2p/unet"), base, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("takes 8 channels, not 4"), "{e}");
    let e = Ip2pEditor::new(&settings("tiny-sd/unet"), base, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("takes 4 channels, not 8"), "{e}");
    assert!(SdDiffuser::new(&settings("tiny-sd/unet"), base, &device).is_ok());
}
