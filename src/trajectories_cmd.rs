//! `rlrig trajectories ls | show | export RUN`: what a run's sled store holds.
//!
//! Output is for people (no Rust debug text); a closed stdout (`… | head`) ends the command
//! quietly (see [`crate::cli::main`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::outcome::refused;
use rlrig_contract::{Outcome, StepOutput, Trajectory};
use rlrig_flow::StoredImages;
use rlrig_store::TrajectoryStore;

/// `rlrig trajectories` subcommands.
#[derive(clap::Subcommand)]
pub enum TrajectoriesCommand {
    /// One line per trajectory: id, outcome, rounds, score, prompt.
    Ls {
        /// The run directory (holding `store/`) or the store itself.
        run: PathBuf,
    },
    /// One trajectory step by step: images, verdicts and reflections, edit prompts with their
    /// tokens' log-probabilities.
    Show {
        /// The run directory or the store.
        run: PathBuf,
        /// The trajectory's id.
        id: u64,
    },
    /// Every trajectory as a PNG chain with `chain.json` (`OUT/<id>/`) and one JSON line per
    /// trajectory in `OUT/trajectories.jsonl`.
    Export {
        /// The run directory or the store.
        run: PathBuf,
        /// The output directory (created; refused if it exists and is not empty).
        #[arg(long)]
        out: PathBuf,
        /// Replaces the contents of a non-empty `--out`.
        #[arg(long)]
        overwrite: bool,
    },
}

fn open(run: &Path) -> Result<TrajectoryStore> {
    let store = if run.join("store").is_dir() {
        run.join("store")
    } else {
        run.to_path_buf()
    };
    if !store.is_dir() {
        return Err(refused(anyhow::anyhow!(
            "{}: no trajectory store here (expected a run directory with store/, or a store)",
            run.display()
        )));
    }
    TrajectoryStore::open(&store).with_context(|| format!("opening the store {}", store.display()))
}

fn summary(t: &Trajectory) -> (String, u32, String) {
    let rounds = t.steps.iter().map(|s| s.round).max().unwrap_or(0);
    match &t.outcome {
        Outcome::Done { score, .. } => (
            "done".into(),
            rounds,
            score.map_or("-".into(), |s| format!("{s:.3}")),
        ),
        Outcome::Failed { .. } => ("failed".into(), rounds, "-".into()),
    }
}

/// Runs a `trajectories` subcommand.
pub fn run(cmd: TrajectoriesCommand) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TrajectoriesCommand::Ls { run } => {
            let store = open(&run)?;
            writeln!(
                out,
                "{:>6}  {:<7} {:>6}  {:>6}  prompt",
                "id", "outcome", "rounds", "score"
            )?;
            for id in store.ids()? {
                let Some(t) = store.get(id)? else { continue };
                let (outcome, rounds, score) = summary(&t);
                writeln!(
                    out,
                    "{id:>6}  {outcome:<7} {rounds:>6}  {score:>6}  {}",
                    t.prompt.prompt()
                )?;
            }
        }
        TrajectoriesCommand::Show { run, id } => {
            let store = open(&run)?;
            let t = store
                .get(id)?
                .ok_or_else(|| refused(anyhow::anyhow!("{}: no trajectory {id}", run.display())))?;
            writeln!(out, "trajectory {id}: {}", t.prompt.prompt())?;
            writeln!(
                out,
                "seed {}, {} ms, {}",
                t.seed,
                t.elapsed_ms,
                crate::chain::outcome_text(&t)
            )?;
            for (i, s) in t.steps.iter().enumerate() {
                let what = match &s.output {
                    StepOutput::Image(img) => match &s.chain {
                        None => format!("image {}×{}", img.width(), img.height()),
                        Some(c) => format!(
                            "image {}×{} (SDE chain: {} steps, log-prob {:.3}, editor version {})",
                            img.width(),
                            img.height(),
                            c.steps(),
                            c.log_probs.iter().map(|&l| f64::from(l)).sum::<f64>(),
                            c.version
                        ),
                    },
                    StepOutput::Report(r) => format!("score {:.3}: {}", r.score, r.reflection),
                    StepOutput::Edit(e) => format!(
                        "\"{}\" ({} tokens, log-prob {:.3}, policy version {})",
                        e.edit_prompt,
                        e.token_ids.len(),
                        e.logprobs.iter().map(|&l| f64::from(l)).sum::<f64>(),
                        e.policy_version
                    ),
                };
                let branch = s.branch.map_or(String::new(), |b| {
                    format!(
                        " [branch {}{}]",
                        b.index,
                        if b.kept { ", kept" } else { "" }
                    )
                });
                writeln!(
                    out,
                    "  {i:>2} round {}{branch} {:<9} {}: {what}",
                    s.round, s.role, s.actor
                )?;
            }
        }
        TrajectoriesCommand::Export {
            run,
            out: dir,
            overwrite,
        } => {
            let store = open(&run)?;
            let occupied = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if occupied && !overwrite {
                return Err(refused(anyhow::anyhow!(
                    "{} exists and is not empty: pass --overwrite to replace it, or another --out",
                    dir.display()
                )));
            }
            if occupied {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut lines = String::new();
            let ids = store.ids()?;
            for &id in &ids {
                let Some(t) = store.get(id)? else { continue };
                let doc = crate::chain::write_chain(&dir, &t, StoredImages::All)?;
                lines.push_str(&serde_json::to_string(&doc)?);
                lines.push('\n');
            }
            let jsonl = dir.join("trajectories.jsonl");
            std::fs::write(&jsonl, lines)
                .with_context(|| format!("writing {}", jsonl.display()))?;
            writeln!(
                out,
                "exported {} trajectories to {}",
                ids.len(),
                dir.display()
            )?;
        }
    }
    Ok(0)
}
