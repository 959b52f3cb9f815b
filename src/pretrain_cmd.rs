//! `rlrig run` for pre-training flows (a `[pretrain]` table): train a built-in model on
//! data the world generates, with checkpoints, sample grids and `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rlrig_flow::{Loaded, PretrainFlow, PretrainModel};
use rlrig_models::DitConfig;
use rlrig_models::pretrain::{self, ModelKind, PretrainJob};
use rlrig_models::train::TrainSettings;
use rlrig_models::vlm::VlmConfig;
use rlrig_models::vlm_train::{self, VlmData, VlmJob, VlmRole};

/// What a pre-training flow trains.
#[derive(Clone, Debug)]
pub enum Job {
    /// The Diffuser or the Editor (a DiT).
    Dit(PretrainJob),
    /// The Checker or the Policy (a VLM).
    Vlm(VlmJob),
}

impl Job {
    /// The shared settings.
    pub fn train(&self) -> &TrainSettings {
        match self {
            Job::Dit(j) => &j.train,
            Job::Vlm(j) => &j.train,
        }
    }

    /// A one-line description for `rlrig validate`.
    pub fn describe(&self) -> String {
        let t = self.train();
        let (what, patch, width, depth) = match self {
            Job::Dit(j) => (
                format!("{:?}", j.model),
                j.config.patch,
                j.config.width,
                j.config.depth,
            ),
            Job::Vlm(j) => (
                format!("{:?}", j.model),
                j.config.patch,
                j.config.width,
                j.config.depth,
            ),
        };
        format!(
            "pre-training the {what} ({} steps, batch {}, patch {patch}, width {width}, depth {depth}, on {})",
            t.steps, t.batch, t.device
        )
    }
}

/// `base` with a flow table's settings over it, read as a `T` (keys named in errors).
fn over<T: serde::Serialize + serde::de::DeserializeOwned>(
    loaded: &Loaded<PretrainFlow>,
    key: &str,
    base: &T,
    table: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, rlrig_flow::FlowError> {
    let mut value = serde_json::to_value(base).expect("settings serialise");
    if let serde_json::Value::Object(map) = &mut value {
        for (k, v) in table {
            map.insert(k.clone(), v.clone());
        }
    }
    rlrig_flow::settings_into(value.as_object().expect("an object"))
        .map_err(|(k, m)| loaded.error_at(&format!("pretrain.{key}.{k}"), m))
}

/// The job a pre-training flow describes: the model's default architecture with the flow's
/// `architecture` settings over it (and, for the VLMs, its `data` settings).
pub fn job_of(loaded: &Loaded<PretrainFlow>) -> Result<Job, rlrig_flow::FlowError> {
    let p = &loaded.flow.pretrain;
    let arch = &p.architecture;
    let train = train_settings(p);
    let dit = |model: ModelKind, base: DitConfig| -> Result<Job, rlrig_flow::FlowError> {
        let config: DitConfig = over(loaded, "architecture", &base, arch)?;
        config
            .validate()
            .map_err(|e| loaded.error_at("pretrain.architecture", e.to_string()))?;
        Ok(Job::Dit(PretrainJob {
            model,
            config,
            edit_weight: p.edit_weight.unwrap_or(0.0),
            noise_mean: p.noise_mean.unwrap_or(0.0),
            train: train.clone(),
        }))
    };
    let vlm = |model: VlmRole, base: VlmConfig| -> Result<Job, rlrig_flow::FlowError> {
        let config: VlmConfig = over(loaded, "architecture", &base, arch)?;
        config
            .validate()
            .map_err(|e| loaded.error_at("pretrain.architecture", e))?;
        let data: VlmData = over(loaded, "data", &VlmData::default(), &p.data)?;
        if !(0.0..=1.0).contains(&data.generated_fraction) {
            return Err(loaded.error_at(
                "pretrain.data.generated_fraction",
                "must be a fraction in [0, 1]",
            ));
        }
        Ok(Job::Vlm(VlmJob {
            model,
            config,
            data,
            train: train.clone(),
        }))
    };
    match p.model {
        PretrainModel::Diffuser => dit(ModelKind::Diffuser, DitConfig::diffuser()),
        PretrainModel::Editor => dit(ModelKind::Editor, DitConfig::editor()),
        PretrainModel::Checker => vlm(VlmRole::Checker, VlmConfig::checker()),
        PretrainModel::Policy => vlm(VlmRole::Policy, VlmConfig::policy()),
    }
}

/// The settings every training job shares, from a flow's `[pretrain]` table.
fn train_settings(p: &rlrig_flow::PretrainSettings) -> TrainSettings {
    TrainSettings {
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
        init_extend: p.init_extend,
        device: p.device.clone(),
    }
}

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
    let job = job_of(&loaded)?;
    rlrig_models::device::select(&job.train().device).map_err(|e| {
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
    } else if rlrig_models::train::checkpoint_to_resume(&dir).is_none() {
        bail!("--resume: {} has no checkpoint to continue", dir.display());
    }
    let log = |line: &str| eprintln!("{line}");
    let outcome = match &job {
        Job::Dit(j) => pretrain::run(j, &dir, resume, log)?,
        Job::Vlm(j) => vlm_train::run(j, &dir, resume, log)?,
    };
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
