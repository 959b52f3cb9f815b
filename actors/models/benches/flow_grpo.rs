//! Phase 2's costs on the flex CPU backend, shaped like `flows/train-editor.toml`: the shipped
//! Editor sampling GROUPS × 8 edits with the 10-step SDE sampler (`rectified_flow::sample_sde_chains`),
//! and one Flow-GRPO learner step (`FlowLearner::step`: the chains' per-step log-probs with
//! autodiff, the frozen reference's step means for the KL, backward, clipped AdamW) on them.
//! Median of RUNS after one warm-up. The PyTorch reference of the same work is
//! `scripts/torch_reference/flow_grpo_bench.py`; `scripts/bench_flow_grpo.sh` runs both.
//!
//! `cargo bench -p rlrig-models --bench flow_grpo`; `RLRIG_BENCH_RUNS`, `RLRIG_BENCH_GROUPS`.

use std::time::Instant;

use burn::tensor::Device;
use rlrig_contract::{CheckReport, DenoisingChain, EditProposal, GroupSample, GrpoGroup};
use rlrig_models::flow_grpo::{FlowLearner, FlowLearnerConfig};
use rlrig_models::grpo::GrpoConfig;
use rlrig_models::image::images_to_tensor;
use rlrig_models::rectified_flow::{self, SamplerConfig};
use rlrig_models::text::Tokenizer;
use rlrig_world::{Canvas, sample};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const PROMPT: &str = "move the red circle to the left of the blue square";

fn main() {
    let tuned = rlrig_models::device::keep_freed_memory();
    println!("malloc: {}", rlrig_models::device::malloc_settings(tuned));
    let runs = env("RLRIG_BENCH_RUNS", 5);
    let n_groups = env("RLRIG_BENCH_GROUPS", 6);
    let g = 8;
    let weights = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../weights/editor.safetensors"
    );
    let device = Device::flex();
    let model = rlrig_models::weights::load(weights, &device).expect("weights");
    let sampler = SamplerConfig {
        steps: 10,
        guidance: 1.0,
        noise_scale: 0.7,
    };
    let canvas = Canvas::new(32).expect("canvas");
    let scenes: Vec<_> = (0..n_groups as u64)
        .map(|i| sample(&canvas, 4, i))
        .collect();
    let b = n_groups * g;
    let sources: Vec<_> = scenes
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.image.clone(), g))
        .collect();
    let text = Tokenizer::new(model.config().text_len)
        .batch(&vec![PROMPT; b], &device)
        .expect("prompt");
    let cond = images_to_tensor(&sources, &device).expect("images");
    let seeds: Vec<u64> = (0..b as u64).collect();
    let sample_once =
        || rectified_flow::sample_sde_chains(&model, &text, Some(&cond), &sampler, &seeds);
    let mut out = sample_once();
    let mut sampling = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        out = sample_once();
        sampling.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let groups: Vec<GrpoGroup> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| GrpoGroup {
            trajectory: i as u64,
            round: 1,
            prompt: s.graph.clone(),
            image: Some(s.image.clone()),
            report: Some(CheckReport {
                items: vec![],
                relations: vec![],
                score: 0.0,
                reflection: String::new(),
                graph: None,
                estimates: None,
            }),
            samples: (0..g)
                .map(|k| {
                    let row = i * g + k;
                    GroupSample {
                        proposal: Some(EditProposal {
                            edit_prompt: PROMPT.into(),
                            token_ids: vec![],
                            logprobs: vec![],
                            policy_version: 0,
                        }),
                        chain: Some(
                            DenoisingChain::new(
                                0,
                                0.7,
                                1.0,
                                [3, 32, 32],
                                &out.states[row],
                                out.log_probs[row].clone(),
                            )
                            .expect("chain"),
                        ),
                        reward: ((row * 7919) % 11) as f64 / 10.0,
                    }
                })
                .collect(),
        })
        .collect();
    let trained =
        rlrig_models::weights::load(weights, &device.clone().autodiff()).expect("weights");
    let mut learner = FlowLearner::new(
        trained,
        FlowLearnerConfig {
            grpo: GrpoConfig {
                beta: 0.04,
                epsilon: 1e-3,
                epsilon_high: 1e-3,
                ..GrpoConfig::default()
            },
            lr: 1e-4,
            ..FlowLearnerConfig::default()
        },
    );
    learner.step(&groups).expect("warm-up step");
    let mut steps = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        learner.step(&groups).expect("step");
        steps.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "flow-grpo {b} chains x {} steps: sampling {:.1} ms, learner step {:.1} ms (medians of {runs})",
        sampler.steps,
        median(sampling),
        median(steps)
    );
}
