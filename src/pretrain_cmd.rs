//! `rlrig run` for pre-training flows (a `[pretrain]` table): train a built-in model on
//! data the world generates, with checkpoints, sample grids and `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rlrig_flow::{Loaded, PretrainFlow};
use rlrig_models::jobs::{Job, can_resume};

/// Runs a pre-training flow into `<run_dir>/<name>/`.
pub fn run(flow: &Path, sets: &[String], resume: bool, overwrite: bool) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(flow).with_context(|| format!("reading {}", flow.display()))?;
    run_str(flow, &text, sets, resume, overwrite)
}

/// [`run`] on the flow file's text, already read; `flow` names it.
pub fn run_str(
    flow: &Path,
    text: &str,
    sets: &[String],
    resume: bool,
    overwrite: bool,
) -> Result<PathBuf> {
    let loaded: Loaded<PretrainFlow> = rlrig_flow::load_as(flow, text, sets)?;
    let job = Job::from_flow(&loaded)?;
    job.check_device().map_err(|e| {
        anyhow::anyhow!("{}: {e}", loaded.problem_at("pretrain.device", "").location)
    })?;
    let dir = loaded.flow.run_dir.join(&loaded.flow.name);
    if !resume {
        if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
            if !overwrite {
                bail!(
                    "run directory {} already exists; continue it with --resume, pick another name (--set name=...) or pass --overwrite",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        loaded.write_copy(&dir.join("flow.toml"))?;
    } else if !can_resume(&dir) {
        bail!("--resume: {} has no checkpoint to continue", dir.display());
    }
    let log = |line: &str| eprintln!("{line}");
    let outcome = job.run(&dir, resume, log)?;
    println!(
        "{}: step {}/{}{}; recent loss {:.4}",
        dir.display(),
        outcome.step,
        job.train().steps,
        if outcome.finished {
            " (done)"
        } else {
            " (stopped: time budget; --resume continues)"
        },
        outcome.recent_loss
    );
    Ok(dir)
}
