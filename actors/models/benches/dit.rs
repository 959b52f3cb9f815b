//! The DiT benchmark of docs/models.md on the flex CPU backend: one train step (forward +
//! backward + AdamW, batch 16) and one sampling batch (16 images × 20 Euler steps with
//! classifier-free guidance), for patch 4 (the benchmark configuration), patch 8, and patch 8
//! with a 2-layer text encoder (`text_layers: 2`, the shipped Diffuser's; the line
//! `patch 8+text2`). Median of 20 runs after 3 warm-ups, in milliseconds. Last, the time to
//! draw one 512-example training batch from the world on one thread (the host's share of a
//! pre-training step on a GPU).
//!
//! `cargo bench -p rlrig-models --bench dit`; `RLRIG_BENCH_RUNS=5` shortens it.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_models::rectified_flow::{self, SamplerConfig};
use rlrig_models::text::{PAD, PROMPT_VOCAB_SIZE, TextBatch};
use rlrig_models::{Dit, DitConfig};

const BATCH: usize = 16;
const WARMUP: usize = 3;

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Random prompts: 4–30 random real tokens, then padding.
fn random_text(config: &DitConfig, rng: &mut ChaCha8Rng, device: &Device) -> TextBatch {
    let rows: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| {
            let n = rng.random_range(4..=30);
            (0..config.text_len)
                .map(|i| {
                    if i < n {
                        rng.random_range(1..PROMPT_VOCAB_SIZE as u32)
                    } else {
                        PAD
                    }
                })
                .collect()
        })
        .collect();
    TextBatch::from_ids(&rows, device).expect("valid ids")
}

fn bench(patch: usize, text_layers: usize, runs: usize) {
    let config = DitConfig {
        patch,
        text_layers,
        ..DitConfig::diffuser()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);

    let train_device = Device::flex().autodiff();
    train_device.seed(0);
    let mut model = Some(Dit::new(&config, &train_device).expect("valid config"));
    let mut optim = rectified_flow::adamw().init();
    let x0 =
        rectified_flow::normal_tensor([BATCH, 3, 32, 32], &mut rng, &train_device).clamp(-1.0, 1.0);
    let text = random_text(&config, &mut rng, &train_device);
    let train = median_ms(runs, || {
        let current = model.take().expect("the model is put back after each step");
        let loss = rectified_flow::training_loss(&current, x0.clone(), None, &text, &mut rng);
        let grads = GradientsParams::from_grads(loss.backward(), &current);
        model = Some(optim.step(rectified_flow::LEARNING_RATE, current, grads));
        // Reading the loss waits for the step on a lazy backend.
        let _ = loss.into_data();
    });

    let device = Device::flex();
    let model = model.expect("trained model").valid();
    let text = text.to_device(&device);
    let sampler = SamplerConfig {
        steps: 20,
        guidance: 4.0,
        ..SamplerConfig::default()
    };
    let mut seed = 0;
    let sample = median_ms(runs, || {
        seed += 1;
        let x: Tensor<4> = rectified_flow::sample_ode(&model, &text, None, &sampler, seed);
        let _ = x.into_data();
    });
    let label = if text_layers > 0 {
        format!("{patch}+text{text_layers}")
    } else {
        patch.to_string()
    };
    println!(
        "patch {label} ({} params): train step {train:.1} ms, sampling batch {sample:.1} ms \
         (batch {BATCH}, 20 Euler steps, CFG)",
        model.num_params()
    );
}

fn main() {
    let tuned = rlrig_models::device::keep_freed_memory();
    println!("malloc: {}", rlrig_models::device::malloc_settings(tuned));
    let runs = std::env::var("RLRIG_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "rlrig-models DiT benchmark, flex backend, {} threads, median of {runs} after {WARMUP} warm-ups",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (patch, text_layers) in [(4, 0), (8, 0), (8, 2)] {
        bench(patch, text_layers, runs);
    }
    draw(runs);
}

/// Drawing one training batch of 512 examples on one thread, as a pre-training step does before
/// its tensors exist: the host's share of a step that is not the network's.
fn draw(runs: usize) {
    use rlrig_models::pretrain::edit_example;
    use rlrig_world::{Canvas, sample};
    const N: u64 = 512;
    let canvas = Canvas::new(32).expect("a 32-pixel canvas");
    let diffuser = median_ms(runs, || {
        let v: Vec<_> = (0..N).map(|i| sample(&canvas, 1, i)).collect();
        std::hint::black_box(v);
    });
    let editor = median_ms(runs, || {
        let v: Vec<_> = (0..N).map(|i| edit_example(&canvas, 1, i)).collect();
        std::hint::black_box(v);
    });
    println!("draw 512 examples on one thread: Diffuser {diffuser:.1} ms, Editor {editor:.1} ms");
}
