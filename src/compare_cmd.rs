//! `rlrig compare RUN_A RUN_B`: two runs over the same prompts, compared prompt by prompt on
//! their oracle scores (`scores.jsonl`), with paired bootstrap confidence intervals of the
//! difference (B − A) of each metric's mean over the final answers (or over one round's
//! images, `--round K`; round 0 is the Diffuser alone), and each run's own interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};

/// Options of `rlrig compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// The baseline run directory (holding scores.jsonl).
    pub a: PathBuf,
    /// The run compared with it.
    pub b: PathBuf,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compare the images after round K (0: the Diffuser's) instead of the final answers. A
    /// trajectory that stopped earlier counts with its last image.
    #[arg(long)]
    pub round: Option<usize>,
}

const METRICS: [&str; 4] = ["sg_iou", "entity_iou", "relation_iou", "relation_accuracy"];

fn finals(run: &Path, round: Option<usize>) -> Result<BTreeMap<u64, serde_json::Value>> {
    let path = run.join("scores.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (runs judged by the oracle write it)", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(
            |(i, l)| match serde_json::from_str::<serde_json::Value>(l) {
                Ok(v) if v["final"].is_object() => {
                    let scores = match round {
                        None => v["final"].clone(),
                        Some(k) => v["rounds"]
                            .as_array()
                            .and_then(|r| r.get(k).or(r.last()))
                            .cloned()
                            .unwrap_or(serde_json::Value::Null),
                    };
                    v["id"].as_u64().map(|id| Ok((id, scores)))
                }
                Ok(_) => None,
                Err(e) => Some(Err(anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))),
            },
        )
        .collect()
}

/// The mean of `d` and its 95 % percentile bootstrap interval, resampling its entries (the
/// prompts); for paired differences, `d` holds them.
pub fn bootstrap_ci(d: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64) as usize).min(resamples - 1)];
    (mean, at(0.025), at(0.975))
}

/// Runs the command.
pub fn run(args: CompareArgs) -> Result<i32> {
    let (a, b) = (finals(&args.a, args.round)?, finals(&args.b, args.round)?);
    let ids: Vec<u64> = a.keys().filter(|id| b.contains_key(id)).copied().collect();
    if ids.len() < 2 {
        bail!(
            "the runs share {} judged prompts; a comparison needs two at least",
            ids.len()
        );
    }
    let mut rows = Vec::new();
    for m in METRICS {
        let pairs: Vec<(f64, f64)> = ids
            .iter()
            .filter_map(|id| Some((a[id][m].as_f64()?, b[id][m].as_f64()?)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let resamples = args.resamples.max(100);
        let d: Vec<f64> = pairs.iter().map(|(x, y)| y - x).collect();
        let (diff, lo, hi) = bootstrap_ci(&d, resamples, 0);
        let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        let ((ma, la, ha), (mb, lb, hb)) = (
            bootstrap_ci(&xs, resamples, 1),
            bootstrap_ci(&ys, resamples, 2),
        );
        rows.push(serde_json::json!({
            "metric": m, "n": pairs.len(),
            "a": ma, "a_ci95": [la, ha],
            "b": mb, "b_ci95": [lb, hb],
            "diff": diff, "ci95": [lo, hi],
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "A = {}\nB = {}\n{} prompts in both; paired bootstrap, {} resamples",
        args.a.display(),
        args.b.display(),
        ids.len(),
        args.resamples
    );
    let what = match args.round {
        None => "final".to_string(),
        Some(k) => format!("round {k}"),
    };
    let ci = |v: &serde_json::Value| {
        format!(
            "[{:.4}, {:.4}]",
            v[0].as_f64().unwrap_or(0.0),
            v[1].as_f64().unwrap_or(0.0)
        )
    };
    println!(
        "{:<18} {:>8} {:>18} {:>8} {:>18} {:>9} {:>22}",
        format!("metric ({what})"),
        "A",
        "95 % CI",
        "B",
        "95 % CI",
        "B − A",
        "95 % CI of B − A"
    );
    for r in &rows {
        println!(
            "{:<18} {:>8.4} {:>18} {:>8.4} {:>18} {:>+9.4} {:>22}",
            r["metric"].as_str().unwrap_or(""),
            r["a"].as_f64().unwrap_or(0.0),
            ci(&r["a_ci95"]),
            r["b"].as_f64().unwrap_or(0.0),
            ci(&r["b_ci95"]),
            r["diff"].as_f64().unwrap_or(0.0),
            format!(
                "[{:+.4}, {:+.4}]",
                r["ci95"][0].as_f64().unwrap_or(0.0),
                r["ci95"][1].as_f64().unwrap_or(0.0)
            ),
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::bootstrap_ci;

    #[test]
    fn the_interval_covers_the_mean_and_shrinks_with_more_prompts() {
        let d: Vec<f64> = (0..200)
            .map(|i| if i % 4 == 0 { 1.0 } else { 0.0 })
            .collect();
        let (m, lo, hi) = bootstrap_ci(&d, 2000, 1);
        assert!((m - 0.25).abs() < 1e-12 && lo < m && m < hi);
        let d4: Vec<f64> = d.iter().cycle().take(800).copied().collect();
        let (_, lo4, hi4) = bootstrap_ci(&d4, 2000, 1);
        assert!(hi4 - lo4 < hi - lo);
        let zero = vec![0.5; 50];
        assert_eq!(bootstrap_ci(&zero, 500, 1), (0.5, 0.5, 0.5));
    }
}
