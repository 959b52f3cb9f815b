//! The Stable Diffusion UNet's forward pass on the flex CPU backend, for two configurations:
//! the tiny test fixture (`tests/fixtures/tiny-sd/unet`, latents [2, 4, 16, 16], context
//! [2, 16, 32]) and a mid-size SD-shaped one (channels 64/128/256, latents [2, 4, 32, 32],
//! context [2, 16, 256]). Freshly initialised weights (timing only). Median of RUNS forwards
//! after WARMUP, in milliseconds. The PyTorch reference of the same work is
//! `scripts/torch_reference/sd_unet_bench.py`; `scripts/bench_sd.sh` runs both.
//!
//! `cargo bench -p rlrig-sd --bench unet`; `RLRIG_BENCH_RUNS` (default 10),
//! `RLRIG_BENCH_WARMUP` (default 2).

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{env, lcg, median_ms, rayon_threads};
use rlrig_sd::unet::{UNet, UNetConfig};

const TINY: &str = include_str!("../tests/fixtures/tiny-sd/unet/config.json");

const MID: &str = r#"{
  "in_channels": 4,
  "out_channels": 4,
  "block_out_channels": [64, 128, 256],
  "layers_per_block": 1,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "cross_attention_dim": 256,
  "attention_head_dim": 8,
  "norm_num_groups": 32
}"#;

/// One timestep per batch item, the same in the PyTorch reference.
const TIMESTEPS: [f64; 2] = [999.0, 500.0];

fn bench(
    name: &str,
    json: &str,
    latents: [usize; 4],
    context: [usize; 3],
    runs: usize,
    warmup: usize,
) {
    let device = Device::flex();
    let config: UNetConfig = serde_json::from_str(json).expect("config");
    let unet = UNet::new(&config, &device).expect("unet");
    let sample = Tensor::<4>::from_data(
        TensorData::new(lcg(1, latents.iter().product()), latents),
        &device,
    );
    let ctx = Tensor::<3>::from_data(
        TensorData::new(lcg(2, context.iter().product()), context),
        &device,
    );
    let forward = || {
        let out = unet.forward(sample.clone(), &TIMESTEPS, &ctx);
        let _ = out.into_data();
    };
    let ms = median_ms(forward, runs, warmup);
    println!(
        "unet {name:<5} {:>12} {:>14} {:>10} {:>10.1} {:>5}",
        format!("{latents:?}").replace(' ', ""),
        format!("{context:?}").replace(' ', ""),
        unet.num_params(),
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
        "unet {:<5} {:>12} {:>14} {:>10} {:>10} {:>5}",
        "cfg", "latents", "context", "params", "ms", "runs"
    );
    bench("tiny", TINY, [2, 4, 16, 16], [2, 16, 32], runs, warmup);
    bench("mid", MID, [2, 4, 32, 32], [2, 16, 256], runs, warmup);
}
