//! What the forward benchmarks share: settings from the environment, the deterministic inputs
//! the PyTorch references draw too, the median, and the size of the rayon pool.

/// `name`'s value, else `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic inputs in [-1, 1): a 64-bit LCG (Knuth's MMIX constants), top 24 bits; the
/// PyTorch references draw the same numbers.
pub fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs `f` `warmup` times, then `runs` times timed: `v[len / 2]` of the sorted times, in ms.
pub fn median_ms(mut f: impl FnMut(), runs: usize, warmup: usize) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = std::time::Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The global rayon pool's size flex runs on (RAYON_NUM_THREADS, else the logical CPUs).
pub fn rayon_threads() -> usize {
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
