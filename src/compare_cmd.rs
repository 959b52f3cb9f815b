//! `rlrig compare RUN_A RUN_B`: two runs over the same prompts, compared prompt by prompt on
//! their oracle scores (`scores.jsonl`), with paired bootstrap confidence intervals of the
//! difference (B − A) of each metric's mean over the final answers (or over one round's
//! images, `--round K`; round 0 is the Diffuser alone), and each run's own interval.
//!
//! Trajectories are paired by id, and a pair must hold the same prompt (its scene graph's items
//! and relations): runs over different prompts are refused unless `--pair-by-id` says to pair
//! them anyway. Failed, unscored and missing prompts are reported per run, not dropped silently.
//! `--round` past the last round of either run is refused. The bootstrap's seed is fixed and
//! shared by A, B and B − A, so the same inputs give the same output, and `compare A A` gives
//! A and B the same interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

use crate::outcome::refused;
use crate::scores::{Judgement, LineOutcome, METRICS, ScoreLine, Scores};

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
    /// Print JSON only on stdout (notes go to stderr) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compare the images after round K (0: the Diffuser's) instead of the final answers. A
    /// trajectory that stopped earlier counts with its last image.
    #[arg(long)]
    pub round: Option<usize>,
    /// Pair trajectories by id even where the two runs' prompts differ (by default such runs
    /// are refused).
    #[arg(long)]
    pub pair_by_id: bool,
}

/// The bootstrap's seed: fixed, and the same for A, B and B − A.
const SEED: u64 = 0;

/// One line of a run's `scores.jsonl`.
struct Line {
    /// What identifies the prompt: its scene graph's items and relations (or its text, or
    /// nothing in files written before prompts were recorded).
    key: Option<String>,
    /// The prompt as text, for messages.
    prompt: Option<String>,
    /// Whether the trajectory failed.
    failed: bool,
    /// The oracle scores of the final answer, when judged.
    final_: Option<Scores>,
    /// The oracle scores after each round.
    rounds: Vec<Option<Scores>>,
}

impl Line {
    /// The scores compared: the final answer's, or round `k`'s (the last image for a
    /// trajectory that stopped earlier).
    fn scores(&self, round: Option<usize>) -> Option<&Scores> {
        match round {
            None => self.final_.as_ref(),
            Some(k) => self.rounds.get(k).or(self.rounds.last())?.as_ref(),
        }
    }
}

/// A run's `scores.jsonl`, by trajectory id.
struct RunScores {
    dir: PathBuf,
    lines: BTreeMap<u64, Line>,
}

impl RunScores {
    fn read(dir: &Path) -> Result<RunScores> {
        let path = dir.join("scores.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            refused(anyhow::anyhow!(
                "{}: {e} (runs whose prompts the oracle judges write it)",
                path.display()
            ))
        })?;
        let mut lines = BTreeMap::new();
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let l: ScoreLine = serde_json::from_str(l).with_context(at).map_err(refused)?;
            // A prompt is its scene graph's items and relations (or its text, in files that
            // do not record the graph).
            let key = match &l.scene_graph {
                Some(sg) => Some(serde_json::to_string(&(&sg.items, &sg.relations))?),
                None => l.prompt.clone(),
            };
            let scores = |j: &Judgement| j.scores().copied();
            let (id, line) = (
                l.id,
                Line {
                    key,
                    prompt: l.prompt,
                    failed: l.outcome == LineOutcome::Failed,
                    final_: l.final_.as_ref().and_then(scores),
                    rounds: l.rounds.iter().map(scores).collect(),
                },
            );
            lines.insert(id, line);
        }
        Ok(RunScores {
            dir: dir.to_path_buf(),
            lines,
        })
    }

    /// The last round any trajectory of the run reached, as recorded.
    fn last_round(&self) -> Option<usize> {
        self.lines
            .values()
            .map(|l| l.rounds.len())
            .max()
            .filter(|&n| n > 0)
            .map(|n| n - 1)
    }
}

/// One run's trajectories that took no part in the comparison, and why.
#[derive(serde::Serialize)]
struct SideReport {
    run: PathBuf,
    /// Trajectories in its `scores.jsonl`.
    trajectories: usize,
    /// Those with scores for what is compared.
    scored: usize,
    /// Ids of its failed trajectories.
    failed: Vec<u64>,
    /// Ids of done trajectories without the oracle's scores for what is compared.
    unscored: Vec<u64>,
    /// Ids the other run has and this one lacks.
    missing: Vec<u64>,
}

impl SideReport {
    fn new(me: &RunScores, other: &RunScores, round: Option<usize>) -> SideReport {
        let failed: Vec<u64> = ids(me, |l| l.failed);
        SideReport {
            run: me.dir.clone(),
            trajectories: me.lines.len(),
            scored: ids(me, |l| l.scores(round).is_some()).len(),
            failed,
            unscored: ids(me, |l| !l.failed && l.scores(round).is_none()),
            missing: other
                .lines
                .keys()
                .filter(|id| !me.lines.contains_key(id))
                .copied()
                .collect(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!(
            "{} trajectories, {} scored",
            self.trajectories, self.scored
        )];
        for (what, v) in [
            ("failed", &self.failed),
            ("done but unscored", &self.unscored),
            ("missing (in the other run only)", &self.missing),
        ] {
            if !v.is_empty() {
                parts.push(format!("{} {what}: {}", v.len(), list_ids(v)));
            }
        }
        parts.join("; ")
    }
}

fn ids(s: &RunScores, pick: impl Fn(&Line) -> bool) -> Vec<u64> {
    s.lines
        .iter()
        .filter(|(_, l)| pick(l))
        .map(|(id, _)| *id)
        .collect()
}

/// Ids as `ids 1, 4, 7` (the first ten, then how many more).
fn list_ids(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(u64::to_string).collect();
    let more = ids.len().saturating_sub(10);
    let plural = if ids.len() == 1 { "id" } else { "ids" };
    if more > 0 {
        format!("{plural} {} and {more} more", shown.join(", "))
    } else {
        format!("{plural} {}", shown.join(", "))
    }
}

/// Refuses pairs of trajectories with different prompts, and runs that do not record their
/// prompts, unless `pair_by_id`; returns the number of shared ids whose prompts differ.
fn check_prompts(a: &RunScores, b: &RunScores, pair_by_id: bool) -> Result<usize> {
    let mut differ = Vec::new();
    let mut unknown = Vec::new();
    for (id, la) in &a.lines {
        let Some(lb) = b.lines.get(id) else { continue };
        match (&la.key, &lb.key) {
            (Some(x), Some(y)) if x != y => differ.push(*id),
            (Some(_), Some(_)) => {}
            _ => unknown.push(*id),
        }
    }
    if pair_by_id {
        return Ok(differ.len());
    }
    if let Some(id) = differ.first() {
        let text = |s: &RunScores| {
            s.lines[id]
                .prompt
                .clone()
                .unwrap_or_else(|| "(no prompt recorded)".into())
        };
        return Err(refused(anyhow::anyhow!(
            "the runs are over different prompts: {} of the {} ids in both differ, e.g. id {id} is \"{}\" in A ({}) and \"{}\" in B ({}); compare runs over the same prompts, or pass --pair-by-id to pair them by id anyway",
            differ.len(),
            a.lines.keys().filter(|i| b.lines.contains_key(i)).count(),
            text(a),
            a.dir.display(),
            text(b),
            b.dir.display()
        )));
    }
    if !unknown.is_empty() {
        let which = if a.lines.values().any(|l| l.key.is_none()) {
            &a.dir
        } else {
            &b.dir
        };
        return Err(refused(anyhow::anyhow!(
            "{}/scores.jsonl does not record its prompts (an older rlrig wrote it), so the runs cannot be checked to share them; rerun it, or pass --pair-by-id to pair by id anyway",
            which.display()
        )));
    }
    Ok(0)
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
    let (a, b) = (RunScores::read(&args.a)?, RunScores::read(&args.b)?);
    if let Some(k) = args.round {
        check_round(&a, &b, k)?;
    }
    let differing = check_prompts(&a, &b, args.pair_by_id)?;
    if differing > 0 {
        eprintln!("warning: paired by id (--pair-by-id): the prompts of {differing} pairs differ");
    }
    let sides = (
        SideReport::new(&a, &b, args.round),
        SideReport::new(&b, &a, args.round),
    );
    let ids: Vec<u64> = a
        .lines
        .iter()
        .filter(|(id, l)| {
            l.scores(args.round).is_some()
                && b.lines
                    .get(id)
                    .is_some_and(|m| m.scores(args.round).is_some())
        })
        .map(|(id, _)| *id)
        .collect();
    if ids.len() < 2 {
        return Err(refused(anyhow::anyhow!(
            "the runs share {} scored prompts; a comparison needs two at least\n  A: {}\n  B: {}",
            ids.len(),
            sides.0.describe(),
            sides.1.describe()
        )));
    }
    let resamples = args.resamples.max(100);
    let rows = metric_rows(&a, &b, &ids, args.round, resamples);
    let what = match args.round {
        None => "final".to_string(),
        Some(k) => format!("round {k}"),
    };
    if args.json {
        let doc = serde_json::json!({
            "a": sides.0, "b": sides.1,
            "compared": what, "round": args.round,
            "pairing": if args.pair_by_id { "id" } else { "prompt" },
            "paired": ids.len(), "resamples": resamples, "seed": SEED,
            "metrics": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        for (name, side) in [("A", &sides.0), ("B", &sides.1)] {
            if !(side.failed.is_empty() && side.unscored.is_empty() && side.missing.is_empty()) {
                eprintln!("note: {name} = {}: {}", side.run.display(), side.describe());
            }
        }
        return Ok(crate::outcome::exit::OK);
    }
    println!(
        "A = {}: {}\nB = {}: {}\n{} prompts scored in both{}; paired bootstrap, {resamples} resamples",
        args.a.display(),
        sides.0.describe(),
        args.b.display(),
        sides.1.describe(),
        ids.len(),
        if args.pair_by_id {
            " (paired by id)"
        } else {
            " (the same prompt in both)"
        },
    );
    print_table(&rows, &what);
    Ok(crate::outcome::exit::OK)
}

/// Refuses `--round k` when a run has no scores for round k.
fn check_round(a: &RunScores, b: &RunScores, k: usize) -> Result<()> {
    for (name, s) in [("A", &a), ("B", &b)] {
        match s.last_round() {
            Some(last) if k <= last => {}
            Some(last) => {
                return Err(refused(anyhow::anyhow!(
                    "--round {k}: run {name} ({}) has rounds 0 to {last} only",
                    s.dir.display()
                )));
            }
            None => {
                return Err(refused(anyhow::anyhow!(
                    "--round {k}: run {name} ({}) records no per-round scores",
                    s.dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// Per metric: both runs' means and the paired difference, each with its bootstrap interval.
fn metric_rows(
    a: &RunScores,
    b: &RunScores,
    ids: &[u64],
    round: Option<usize>,
    resamples: usize,
) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for m in METRICS {
        let pairs: Vec<(f64, f64)> = ids
            .iter()
            .filter_map(|id| {
                let x = a.lines[id].scores(round)?.metric(m)?;
                let y = b.lines[id].scores(round)?.metric(m)?;
                Some((x, y))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let d: Vec<f64> = pairs.iter().map(|(x, y)| y - x).collect();
        let (diff, lo, hi) = bootstrap_ci(&d, resamples, SEED);
        let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        let ((ma, la, ha), (mb, lb, hb)) = (
            bootstrap_ci(&xs, resamples, SEED),
            bootstrap_ci(&ys, resamples, SEED),
        );
        rows.push(serde_json::json!({
            "metric": m, "n": pairs.len(),
            "a": ma, "a_ci95": [la, ha],
            "b": mb, "b_ci95": [lb, hb],
            "diff": diff, "ci95": [lo, hi],
        }));
    }
    rows
}

/// The human-readable table of [`metric_rows`].
fn print_table(rows: &[serde_json::Value], what: &str) {
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
    for r in rows {
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
