//! Qwen2.5-VL decoding on the flex CPU backend, for two random-weight models: the parity
//! fixture `tests/fixtures/qwen2_5_vl/tiny` prompting with `image_b.png` (12 image tokens), and
//! a mid-size one (text 512 wide, 8 layers, 8 heads / 2 kv heads, vocab 32000; vision 256 wide,
//! depth 8) from `$RLRIG_QWEN_BENCH_DIR/mid` prompting with `image_c.png` (35 image tokens),
//! skipped when that directory is absent (`scripts/torch_reference/qwen_decode_bench.py --make
//! DIR` writes it; `scripts/bench_qwen.sh` does both). The prompt is one user turn of the image
//! and "Where is the red circle relative to the blue square?", the assistant's turn opened.
//!
//! * `prefill`: `Net::logits` of the prompt without a cache (vision tower included), every
//!   position's logits read back;
//! * `step`: one `Net::logits` call feeding one token (the prefill's argmax) after a clone of
//!   the prompt's KV cache, the clone made before the timer starts;
//! * `generate16`: `Net::generate`, greedy, 16 new tokens, no stop tokens (the language head on
//!   each step's last position); it includes the re-scoring pass over the prompt and the
//!   tokens that gives the log-probs (the head on the scored positions alone).
//!
//! Median of RUNS after WARMUP, in milliseconds. The PyTorch reference of the same work is
//! `scripts/torch_reference/qwen_decode_bench.py`.
//!
//! `cargo bench -p rlrig-qwen --bench decode`; `RLRIG_BENCH_RUNS` (default 10),
//! `RLRIG_BENCH_WARMUP` (default 2), `RLRIG_QWEN_BENCH_DIR`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::Image;
use rlrig_qwen::burn;
use rlrig_qwen::model::{QwenVl, Sampling};
use rlrig_qwen::text::KvCache;

const TEXT: &str = "Where is the red circle relative to the blue square?";
const NEW_TOKENS: usize = 16;

/// `name`'s value, else `default`.
fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f(setup())` `warmup` times, then `runs` times with only `f` timed: `v[len / 2]` of the
/// sorted times, in ms.
fn median_ms<S>(
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(S),
    runs: usize,
    warmup: usize,
) -> f64 {
    for _ in 0..warmup {
        f(setup());
    }
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let s = setup();
            let t0 = std::time::Instant::now();
            f(s);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The global rayon pool's size flex runs on (RAYON_NUM_THREADS, else the logical CPUs).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl")
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("logits")
}

/// The first index of the largest value (as torch's argmax).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

fn bench(name: &str, dir: &Path, image: &str, runs: usize, warmup: usize) {
    let device = Device::flex();
    let model = QwenVl::from_dir(dir, &device).expect("model");
    let (net, config) = (&model.net, &model.config);
    let params = net.num_params();
    let png = std::fs::read(fixtures().join(image)).expect("image");
    let image = Image::from_png(&png).expect("png");
    let prompt = model.prompt(Some(&image), TEXT).expect("prompt");
    let len = prompt.ids.len();
    let row = |what: &str, ms: f64| {
        println!("qwen {name:<5} {what:<10} {len:>6} {params:>10} {ms:>10.2} {runs:>5}");
    };

    let prefill = || {
        values(
            net.logits(config, &prompt, &[], None, false)
                .expect("prefill"),
        )
    };
    let logits = prefill();
    let vocab = logits.len() / len;
    let token = argmax(&logits[(len - 1) * vocab..]);
    let ms_prefill = median_ms(|| (), |()| drop(prefill()), runs, warmup);

    let mut cache = KvCache::default();
    net.logits(config, &prompt, &[], Some(&mut cache), false)
        .expect("prompt cache")
        .into_data();
    let ms_step = median_ms(
        || cache.clone(),
        |mut c| {
            let out = net
                .logits(config, &prompt, &[token], Some(&mut c), false)
                .expect("step");
            let _ = out.into_data();
        },
        runs,
        warmup,
    );

    let sampling = Sampling {
        temperature: 0.0,
        max_new_tokens: NEW_TOKENS,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut tokens = Vec::new();
    let ms_gen = median_ms(
        || (),
        |()| {
            let g = net
                .generate(config, &prompt, sampling, &[], &mut rng, false)
                .expect("generate");
            assert_eq!(g.tokens.len(), NEW_TOKENS);
            tokens = g.tokens;
        },
        runs,
        warmup,
    );
    println!("# qwen {name}: prompt {len} tokens, step token {token}, generate16 {tokens:?}");
    row("prefill", ms_prefill);
    row("step", ms_step);
    row("generate16", ms_gen);
}

fn main() {
    let runs = env("RLRIG_BENCH_RUNS", 10).max(1);
    let warmup = env("RLRIG_BENCH_WARMUP", 2);
    println!("burn flex, {} rayon threads; median ms", rayon_threads());
    println!(
        "qwen {:<5} {:<10} {:>6} {:>10} {:>10} {:>5}",
        "cfg", "what", "prompt", "params", "ms", "runs"
    );
    bench(
        "tiny",
        &fixtures().join("tiny"),
        "image_b.png",
        runs,
        warmup,
    );
    match std::env::var_os("RLRIG_QWEN_BENCH_DIR").map(|d| PathBuf::from(d).join("mid")) {
        Some(mid) if mid.join("config.json").is_file() => {
            bench("mid", &mid, "image_c.png", runs, warmup)
        }
        mid => println!(
            "# qwen mid: skipped, no {} (make it with scripts/torch_reference/qwen_decode_bench.py --make DIR)",
            mid.map_or("$RLRIG_QWEN_BENCH_DIR/mid".into(), |m| m
                .display()
                .to_string())
        ),
    }
}
