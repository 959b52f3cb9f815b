//! The job a pre-training flow file (a `[pretrain]` table) describes: the model's default
//! architecture with the flow's settings over it, checked, and run into a directory. The
//! command line names no network: it builds a [`Job`] and runs it.

use crate::ModelError;
use std::path::Path;

use rlrig_flow::{FlowError, Loaded, PretrainFlow, PretrainModel};

use crate::DitConfig;
use crate::pretrain::{self, ModelKind, PretrainJob};
use crate::training_loop::{LoopSettings, TrainError, TrainOutcome};
use crate::vlm::VlmConfig;
use crate::vlm_data::VlmData;
use crate::vlm_train::{self, VlmJob, VlmRole};

/// What a pre-training flow trains.
#[derive(Clone, Debug)]
pub enum Job {
    /// The Diffuser or the Editor (a DiT).
    Dit(PretrainJob),
    /// The Checker or the Policy (a VLM).
    Vlm(VlmJob),
}

impl Job {
    /// The job `loaded` describes, its settings checked (errors located in the flow).
    pub fn from_flow(loaded: &Loaded<PretrainFlow>) -> Result<Job, FlowError> {
        job_of(loaded)
    }

    /// The shared settings.
    pub fn train(&self) -> &LoopSettings {
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
) -> Result<T, FlowError> {
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
fn job_of(loaded: &Loaded<PretrainFlow>) -> Result<Job, FlowError> {
    let p = &loaded.flow.pretrain;
    let arch = &p.architecture;
    let train = train_settings(p);
    let dit = |model: ModelKind, base: DitConfig| -> Result<Job, FlowError> {
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
    let vlm = |model: VlmRole, base: VlmConfig| -> Result<Job, FlowError> {
        let config: VlmConfig = over(loaded, "architecture", &base, arch)?;
        config
            .validate()
            .map_err(|e| loaded.error_at("pretrain.architecture", e.to_string()))?;
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
fn train_settings(p: &rlrig_flow::PretrainSettings) -> LoopSettings {
    LoopSettings {
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

impl Job {
    /// Checks that the job's device can be used (`cpu`, `wgpu`, `wgpu:N`, …).
    pub fn check_device(&self) -> Result<(), ModelError> {
        crate::device::select(&self.train().device)?;
        Ok(())
    }

    /// Trains into `dir` (checkpoints, sample grids, `loss.jsonl`, the exported weights);
    /// `resume` continues from the checkpoint there. `log` gets progress lines.
    pub fn run(
        &self,
        dir: &Path,
        resume: bool,
        log: impl FnMut(&str),
    ) -> Result<TrainOutcome, TrainError> {
        match self {
            Job::Dit(j) => pretrain::run(j, dir, resume, log),
            Job::Vlm(j) => vlm_train::run(j, dir, resume, log),
        }
    }
}

/// Whether `dir` holds a pre-training checkpoint that `--resume` can continue.
pub fn can_resume(dir: &Path) -> bool {
    crate::training_loop::checkpoint_to_resume(dir).is_some()
}
