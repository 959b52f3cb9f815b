//! Stable Diffusion 3's MMDiT forward pass on the flex CPU backend, for two configurations: the
//! tiny test fixture (`tests/fixtures/sd3/tiny-sd3/transformer`, latents [2, 4, 8, 8], text
//! [2, 24, 48], pooled [2, 32]) and a mid-size SD3.5-shaped one (4 joint blocks of width 384,
//! 6 heads of 64, QK RMSNorm, patch 2; latents [2, 16, 32, 32] = 256 image tokens, text
//! [2, 96, 512], pooled [2, 256]). Freshly initialised weights (timing only). Median of RUNS
//! forwards after WARMUP, in milliseconds. The PyTorch reference of the same work is
//! `scripts/torch_reference/sd3_mmdit_bench.py`; `scripts/bench_sd.sh mmdit` runs both.
//!
//! `cargo bench -p rlrig-sd --bench mmdit`; `RLRIG_BENCH_RUNS` (default 10),
//! `RLRIG_BENCH_WARMUP` (default 2).

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{env, lcg, median_ms, rayon_threads};
use rlrig_sd::mmdit::{Mmdit, MmditConfig};

const TINY: &str = include_str!("../tests/fixtures/sd3/tiny-sd3/transformer/config.json");

const MID: &str = r#"{
  "sample_size": 32,
  "patch_size": 2,
  "in_channels": 16,
  "num_layers": 4,
  "attention_head_dim": 64,
  "num_attention_heads": 6,
  "joint_attention_dim": 512,
  "caption_projection_dim": 384,
  "pooled_projection_dim": 256,
  "out_channels": 16,
  "pos_embed_max_size": 32,
  "qk_norm": "rms_norm"
}"#;

/// One timestep per batch item, the same in the PyTorch reference.
const TIMESTEPS: [f64; 2] = [999.0, 500.0];

fn bench(
    name: &str,
    json: &str,
    latents: [usize; 4],
    context: [usize; 3],
    pooled: [usize; 2],
    runs: usize,
    warmup: usize,
) {
    let device = Device::flex();
    let config: MmditConfig = serde_json::from_str(json).expect("config");
    let model = Mmdit::new(&config, &device).expect("mmdit");
    let sample = Tensor::<4>::from_data(
        TensorData::new(lcg(1, latents.iter().product()), latents),
        &device,
    );
    let ctx = Tensor::<3>::from_data(
        TensorData::new(lcg(2, context.iter().product()), context),
        &device,
    );
    let pool = Tensor::<2>::from_data(
        TensorData::new(lcg(3, pooled.iter().product()), pooled),
        &device,
    );
    let forward = || {
        let out = model.forward(sample.clone(), &TIMESTEPS, ctx.clone(), pool.clone());
        let _ = out.into_data();
    };
    let ms = median_ms(forward, runs, warmup);
    println!(
        "mmdit {name:<5} {:>14} {:>12} {:>10} {:>10.1} {:>5}",
        format!("{latents:?}").replace(' ', ""),
        format!("{context:?}").replace(' ', ""),
        model.num_params(),
        ms,
        runs
    );
}

fn main() {
    let runs = env("RLRIG_BENCH_RUNS", 10).max(1);
    let warmup = env("RLRIG_BENCH_WARMUP", 2);
    println!(
        "burn flex, {} rayon threads; median ms per forward",
        rayon_threads()
    );
    println!(
        "mmdit {:<5} {:>14} {:>12} {:>10} {:>10} {:>5}",
        "cfg", "latents", "context", "params", "ms", "runs"
    );
    bench(
        "tiny",
        TINY,
        [2, 4, 8, 8],
        [2, 24, 48],
        [2, 32],
        runs,
        warmup,
    );
    bench(
        "mid",
        MID,
        [2, 16, 32, 32],
        [2, 96, 512],
        [2, 256],
        runs,
        warmup,
    );
}
