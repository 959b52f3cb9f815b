//! The GRPO learner's throughput on the flex CPU backend: steps per second of
//! `grpo::Learner::step` (Policy forward with autodiff, the frozen reference's forward for the
//! KL term, backward, clipped AdamW) on batches shaped like `flows/train.toml`'s: 16 groups of
//! 8 edit prompts sampled by the shipped Policy from problem scenes of the world, with random
//! rewards. Median of RUNS steps after 2 warm-ups.
//!
//! `cargo bench -p rlrig-models --bench learner`; `RLRIG_BENCH_RUNS=5` shortens it,
//! `RLRIG_BENCH_GROUPS=4` changes the batch.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_models::grpo::{Group, Learner, LearnerConfig, Sample};
use rlrig_models::vlm_data::{Pool, Repairs, problem_scene};
use rlrig_models::vlm_policy::{Decoding, PolicyNet};
use rlrig_models::vlm_train::policy_example;
use rlrig_world::Canvas;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let tuned = rlrig_models::device::keep_freed_memory();
    println!("malloc: {}", rlrig_models::device::malloc_settings(tuned));
    let runs = env("RLRIG_BENCH_RUNS", 10);
    let n_groups = env("RLRIG_BENCH_GROUPS", 16);
    let g = 8;
    let weights = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../weights/policy.safetensors"
    );
    let device = burn::tensor::Device::flex();
    let sampler: PolicyNet = rlrig_models::weights::load_model(weights, &device).expect("weights");
    let canvas = Canvas::new(Canvas::DEFAULT_SIZE).expect("canvas");
    let pool = Pool::empty();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let decoding = Decoding {
        greedy: false,
        temperature: 1.0,
        ..Decoding::default()
    };
    let groups: Vec<Group> = (0..n_groups as u64)
        .map(|i| {
            let scene = problem_scene(&canvas, 77, i, &pool, 0.0);
            let (input, _) = policy_example(&scene, Repairs::Rule, 0).expect("an example");
            let inputs = vec![input.clone(); g];
            let mut rngs: Vec<ChaCha8Rng> = (0..g as u64)
                .map(|k| ChaCha8Rng::seed_from_u64(i * 100 + k))
                .collect();
            let decoded = sampler
                .decode(&inputs, &decoding, &mut rngs)
                .expect("decodes");
            Group {
                input,
                samples: decoded
                    .into_iter()
                    .map(|d| Sample {
                        tokens: d.tokens,
                        logprobs: d.logprobs,
                        reward: rng.random_range(0.0..1.0),
                    })
                    .collect(),
            }
        })
        .collect();
    let tokens: usize = groups
        .iter()
        .flat_map(|g| &g.samples)
        .map(|s| s.tokens.len())
        .sum();
    let policy: PolicyNet =
        rlrig_models::weights::load_model(weights, &device.clone().autodiff()).expect("weights");
    let mut learner = Learner::new(policy, LearnerConfig::default());
    for _ in 0..2 {
        learner.step(&groups).expect("a step");
    }
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            learner.step(&groups).expect("a step");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    println!(
        "GRPO learner step, {n_groups} groups × {g} samples ({tokens} target tokens), flex CPU, {} threads: median {median:.0} ms = {:.2} steps/s, {:.0} sequences/s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        1e3 / median,
        (n_groups * g) as f64 * 1e3 / median
    );
}
