//! `rlrig run` for pre-training flows (a `[pretrain]` table): train a built-in model on
//! data the world generates, with checkpoints, sample grids and `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rlrig_flow::{Loaded, PretrainFlow, PretrainModel};
use rlrig_models::DitConfig;
use rlrig_models::pretrain::{self, ModelKind, PretrainJob};

/// The job a pre-training flow describes: the model's default architecture with the flow's
/// `architecture` settings over it.
pub fn job_of(loaded: &Loaded<PretrainFlow>) -> Result<PretrainJob, rlrig_flow::FlowError> {
    let p = &loaded.flow.pretrain;
    let (model, base) = match p.model {
        PretrainModel::Diffuser => (ModelKind::Diffuser, DitConfig::diffuser()),
        PretrainModel::Editor => (ModelKind::Editor, DitConfig::editor()),
    };
    let mut value = serde_json::to_value(&base).expect("a config serialises");
    if let serde_json::Value::Object(map) = &mut value {
        for (k, v) in &p.architecture {
            map.insert(k.clone(), v.clone());
        }
    }
    let config: DitConfig = rlrig_flow::settings_into(value.as_object().expect("an object"))
        .map_err(|(k, m)| loaded.error_at(&format!("pretrain.architecture.{k}"), m))?;
    config
        .validate()
        .map_err(|e| loaded.error_at("pretrain.architecture", e.to_string()))?;
    Ok(PretrainJob {
        model,
        config,
        steps: p.steps,
        batch: p.batch,
        lr: p.lr,
        warmup: p.warmup,
        seed: p.seed,
        checkpoint_every: p.checkpoint_every,
        sample_every: p.sample_every,
        max_minutes: p.max_minutes,
        export: p.export.clone(),
        init: p.init.clone(),
    })
}

/// Runs a pre-training flow into `<run_dir>/<name>/`.
pub fn run(flow: &Path, sets: &[String], resume: bool, overwrite: bool) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(flow).with_context(|| format!("reading {}", flow.display()))?;
    let loaded: Loaded<PretrainFlow> = rlrig_flow::load_as(flow, &text, sets)?;
    let job = job_of(&loaded)?;
    if loaded.flow.pretrain.device != "cpu" {
        bail!(
            "{}: this build trains on `cpu` only (the GPU backends are behind features)",
            loaded.problem_at("pretrain.device", "").location
        );
    }
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
        std::fs::write(dir.join("flow.toml"), &loaded.text)?;
    } else if !dir.join("checkpoint").exists() {
        bail!("--resume: {} has no checkpoint to continue", dir.display());
    }
    let outcome = pretrain::run(&job, &dir, resume, |line| eprintln!("{line}"))?;
    println!(
        "{}: step {}/{}{}; recent loss {:.4}",
        dir.display(),
        outcome.step,
        job.steps,
        if outcome.finished {
            " (done)"
        } else {
            " (stopped: time budget; --resume continues)"
        },
        outcome.recent_loss
    );
    Ok(dir)
}
