//! `rlrig replay RUN --flow FLOW`: GRPO from stored trajectories only.
//!
//! Every GRPO group of RUN's store (in commit order) is a training example; the learner is built
//! from the flow's Policy weights with the flow's `[train]` settings and takes `train.steps`
//! steps of `groups_per_step` groups, drawn epoch by epoch in an order shuffled by
//! `engine.seed`. Replay is off-policy by construction: the importance ratios use the
//! log-probs stored with each sample (`max_staleness` does not apply). Nothing is rolled out,
//! so settings can be tuned without running the cycle again. Same store, flow and seed → the
//! same sequence of batches and, up to the floating-point summation order of burn's
//! multi-threaded CPU kernels, the same weights.
//!
//! Output, in the flow's run directory: `metrics.jsonl` (one line per step), `metrics.svg`,
//! `policy.safetensors` (or `editor.safetensors` in phase 2), `replay.json`, `report.html`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rlrig_contract::{GrpoGroup, Reward};
use rlrig_engine::Registry;
use rlrig_store::TrajectoryStore;
use serde::Serialize;

/// What a replay did.
#[derive(Clone, Debug, Serialize)]
pub struct ReplaySummary {
    /// The source run.
    pub source: PathBuf,
    /// Trajectories read.
    pub trajectories: usize,
    /// Groups available.
    pub groups: usize,
    /// Steps taken.
    pub steps: u64,
    /// Epochs begun over the groups.
    pub epochs: u64,
    /// The weights version reached.
    pub version: u64,
}

/// Reads every GRPO group of a run's store, in commit order, each sample rewarded by `reward`.
pub fn stored_groups(run: &Path, reward: &Reward) -> Result<(usize, Vec<GrpoGroup>)> {
    let path = run.join("store");
    if !path.is_dir() {
        bail!(
            "{}: no trajectory store (expected {})",
            run.display(),
            path.display()
        );
    }
    let store = TrajectoryStore::open(&path)?;
    let mut cursor = None;
    let (mut n, mut groups) = (0, Vec::new());
    loop {
        let batch = store.committed_after(cursor, 256)?;
        if batch.is_empty() {
            break;
        }
        for (seq, t) in batch {
            cursor = Some(seq);
            n += 1;
            groups.extend(
                t.grpo_groups(reward)
                    .with_context(|| format!("trajectory {} of {}", t.id, run.display()))?,
            );
        }
    }
    Ok((n, groups))
}

/// Runs a replay; returns its summary and the output directory.
pub fn run(
    registry: &Registry,
    source: &Path,
    flow: &Path,
    sets: &[String],
    overwrite: bool,
) -> Result<(ReplaySummary, PathBuf)> {
    let loaded = rlrig_flow::load(flow, sets)?;
    registry.check_flow(&loaded)?;
    let t = loaded
        .flow
        .train
        .clone()
        .context("replay needs a flow with a [train] table (its GRPO settings)")?;
    let dir = loaded.flow.run_dir.join(&loaded.flow.name);
    if dir.canonicalize().ok() == source.canonicalize().ok() && dir.exists() {
        bail!(
            "the replay would write into its source run {}: pick another name (--set name=...)",
            source.display()
        );
    }
    let (trajectories, groups) = stored_groups(source, &loaded.flow.cycle.reward())?;
    if groups.is_empty() {
        bail!(
            "{}: no GRPO groups stored (was it a training run, with num_generations ≥ 2?)",
            source.display()
        );
    }
    crate::run::prepare_run_dir(&dir, overwrite)?;
    loaded.write_copy(&dir.join("flow.toml"))?;
    let mut learner = crate::train_cmd::learner_for(registry, &loaded)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(loaded.flow.engine.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut epochs = 0;
    let mut lines = String::new();
    for step in 1..=t.steps {
        let mut batch = Vec::with_capacity(t.groups_per_step);
        while batch.len() < t.groups_per_step {
            if order.is_empty() {
                order = (0..groups.len()).collect();
                order.shuffle(&mut rng);
                order.reverse();
                epochs += 1;
            }
            batch.push(groups[order.pop().expect("refilled")].clone());
        }
        let stats = learner
            .step(&batch)
            .map_err(|e| anyhow::anyhow!("step {step}: {e}"))?;
        let line = rlrig_train::StepMetrics {
            step,
            seconds: 0.0,
            first_seq: 0,
            last_seq: 0,
            trajectories: 0,
            stale_groups: 0,
            staleness: 0.0,
            trajectories_per_s: 0.0,
            reward_mean_all: stats.reward_mean,
            reward_std_all: stats.reward_std,
            learn: stats,
        };
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
        if step % 10 == 0 || step == t.steps {
            eprintln!(
                "replay step {step}/{}: reward {:.3}, KL {:.5}, clipped {:.3}",
                t.steps, line.learn.reward_mean, line.learn.kl, line.learn.clip_fraction
            );
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), &lines)?;
    if let Ok(m) = rlrig_train::read_metrics(&dir.join("metrics.jsonl"))
        && let Err(e) = crate::plot::training_curves(&m, &dir.join("metrics.svg"))
    {
        eprintln!("warning: metrics.svg: {e}");
    }
    let update = learner.update().map_err(|e| anyhow::anyhow!("{e}"))?;
    let weights_file = crate::train_cmd::weights_file(&loaded, &t);
    crate::train_cmd::write_weights(&dir.join(weights_file), &update.weights)?;
    let summary = ReplaySummary {
        source: source.to_path_buf(),
        trajectories,
        groups: groups.len(),
        steps: t.steps,
        epochs,
        version: learner.version(),
    };
    std::fs::write(
        dir.join("replay.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    if let Err(e) = crate::report::write(&dir) {
        eprintln!("warning: report.html: {e:#}");
    }
    println!(
        "replay {} → {}: {} steps over {} groups from {} trajectories ({} epochs), weights version {}",
        source.display(),
        dir.display(),
        summary.steps,
        summary.groups,
        summary.trajectories,
        summary.epochs,
        summary.version
    );
    Ok((summary, dir))
}
