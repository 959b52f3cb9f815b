//! Flow-GRPO on the tiny SD3 fixture through LoRA: the sampler's stored log-probabilities are
//! what the learner recomputes, a step changes the adapters and nothing else, and a learner
//! restored from a checkpoint takes exactly the step the original takes.

use std::path::{Path, PathBuf};

use rlrig_contract::{GroupSample, GrpoGroup, SampledImage, SceneGraph};
use rlrig_models::flow_grpo::FlowLearnerConfig;
use rlrig_models::grpo::GrpoConfig;
use rlrig_sd::burn::tensor::{Device, Tensor};
use rlrig_sd::kinds::Sd3Settings;
use rlrig_sd::sd3::{Sd3Pipeline, T5};
use rlrig_sd::sd3_grpo::{ExploreConfig, Sd3FlowLearner, explore};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd3")
}

fn settings() -> Sd3Settings {
    serde_json::from_value(serde_json::json!({
        "path": "tiny-sd3",
        "steps": 3,
        "guidance": 4.5,
        "max_sequence_length": 8,
        "size": 24,
        "sde_window": 2,
        "lora_rank": 4,
        "lora_alpha": 8.0
    }))
    .unwrap()
}

fn learner() -> Sd3FlowLearner {
    let config = FlowLearnerConfig {
        grpo: GrpoConfig {
            beta: 0.01,
            epsilon: 0.2,
            epsilon_high: 0.2,
            ..GrpoConfig::default()
        },
        lr: 1e-2,
        ..FlowLearnerConfig::default()
    };
    settings()
        .learner(&fixtures(), &Device::flex().autodiff(), config)
        .unwrap()
}

fn prompt(label: &str) -> SceneGraph {
    serde_json::from_value(serde_json::json!({
        "items": [
            {"item_id": 0, "label": label, "attributes": ["red"]},
            {"item_id": 1, "label": "circle", "attributes": ["blue"]}
        ],
        "relations": [{"item1": 0, "relation": "left of", "item2": 1}]
    }))
    .unwrap()
}

/// Four exploring samples of `label`'s prompt from the actor-side pipeline (no adapters: a
/// fresh adapter's term is zero).
fn group(label: &str, seed: u64) -> (String, Vec<SampledImage>) {
    let device = Device::flex();
    let p = Sd3Pipeline::from_dir(fixtures().join("tiny-sd3"), T5::Auto, &device).unwrap();
    let text = prompt(label).prompt();
    let config = ExploreConfig {
        steps: 3,
        sde_window: 2,
        noise_scale: 0.7,
        guidance: 4.5,
        max_sequence_length: 8,
    };
    let prompts = vec![text.as_str(); 4];
    let seeds: Vec<u64> = (0..4).map(|i| seed + i).collect();
    let out = explore(
        &p,
        &prompts,
        &["", "", "", ""],
        &seeds,
        12,
        &config,
        0,
        &device,
    )
    .unwrap();
    (text, out)
}

fn grpo_group(label: &str, samples: &[SampledImage], rewards: [f64; 4]) -> GrpoGroup {
    GrpoGroup {
        trajectory: 0,
        round: 0,
        prompt: prompt(label),
        image: None,
        report: None,
        samples: samples
            .iter()
            .zip(rewards)
            .map(|(s, reward)| GroupSample {
                proposal: None,
                chain: Some(s.chain.clone()),
                reward,
            })
            .collect(),
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn stored_log_probs_are_recomputed_and_a_step_changes_only_the_adapters() {
    let (text, samples) = group("square", 7);
    assert!(
        samples
            .iter()
            .all(|s| s.chain.steps() == 2 && s.chain.schedule_steps() == 3)
    );
    assert_eq!(
        (samples[0].image.width(), samples[0].image.height()),
        (24, 24)
    );
    let mut l = learner();
    let chains: Vec<_> = samples.iter().map(|s| &s.chain).collect();
    let scored = l.score(&[text.as_str(); 4], &chains).unwrap();
    for (s, got) in samples.iter().zip(&scored) {
        for (a, b) in s.chain.log_probs.iter().zip(got) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "stored {a}, recomputed {b}"
            );
        }
    }

    // The transformer's output with and without adapters, on fixed inputs.
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::ones([1, 4, 12, 12], &device) * 0.3;
    let ctx = Tensor::<3>::ones([1, 24, 48], &device) * 0.1;
    let pooled = Tensor::<2>::ones([1, 32], &device) * 0.2;
    let out = |l: &Sd3FlowLearner, lora: bool| {
        values(
            l.transformer()
                .forward_with(x.clone(), &[500.0], ctx.clone(), pooled.clone(), lora),
        )
    };
    let (base0, adapted0) = (out(&l, false), out(&l, true));
    assert_eq!(base0, adapted0, "a fresh adapter changes nothing");
    let before = l.adapters().unwrap();

    let stats = l
        .step(&[grpo_group("square", &samples, [1.0, 0.0, 0.5, 0.2])])
        .unwrap();
    assert!(stats.loss.is_finite() && stats.sequences == 4, "{stats:?}");
    assert_eq!(l.adapters().unwrap().len(), before.len());
    assert_ne!(l.adapters().unwrap(), before, "the adapters moved");
    assert_eq!(out(&l, false), base0, "the base weights are frozen");
    assert_ne!(out(&l, true), base0, "the adapted model moved");
}

#[test]
fn a_restored_learner_takes_exactly_the_original_step() {
    let (_, first) = group("square", 11);
    let (_, second) = group("triangle", 21);
    let g1 = grpo_group("square", &first, [0.0, 1.0, 0.3, 0.9]);
    let g2 = grpo_group("triangle", &second, [0.4, 0.1, 1.0, 0.0]);
    let tmp = tempfile::tempdir().unwrap();
    let mut a = learner();
    a.step(std::slice::from_ref(&g1)).unwrap();
    rlrig_contract::GrpoLearner::save(&a, tmp.path()).unwrap();
    assert!(tmp.path().join("adapter/adapter_config.json").is_file());
    a.step(std::slice::from_ref(&g2)).unwrap();

    let mut b = learner();
    rlrig_contract::GrpoLearner::restore(&mut b, tmp.path()).unwrap();
    assert_eq!(rlrig_contract::GrpoLearner::version(&b), 1);
    b.step(std::slice::from_ref(&g2)).unwrap();
    assert_eq!(a.adapters().unwrap(), b.adapters().unwrap());
}
