//! The training loop every built-in model shares: AdamW with linear warm-up, an exponential
//! moving average of the weights, periodic evaluation, atomic checkpoints, `--resume`, a
//! wall-clock budget and the export of the averaged weights.
//!
//! A run directory holds `checkpoint/` (the model, the average and the optimiser in burn's
//! burnpack format, which keeps parameter identities so the optimiser state lines up on resume,
//! and `state.json`; swapped in atomically, and resumed from `checkpoint.old/` when a crash
//! came mid-swap: [`rlrig_checkpoint`]), `loss.jsonl` (one line per step) and, at the end of
//! every invocation (finished or stopped by its time budget), `model.safetensors` — the
//! average — also written to the job's `export` path when given. What a model learns from and how it is evaluated is its
//! [`Task`]'s business; every batch must be a pure function of `(seed, step)` so that a resumed
//! run continues exactly where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::weights::{self, Architecture};

/// The training loop's settings, shared by every pre-training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopSettings {
    /// Optimiser steps in all.
    pub steps: u64,
    /// Examples per step.
    pub batch: usize,
    /// AdamW learning rate (after warm-up).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Seed of data and noise.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Steps between evaluations.
    pub sample_every: u64,
    /// Wall-clock budget in minutes for this invocation; stops with a checkpoint.
    pub max_minutes: Option<f64>,
    /// Where to copy the final weights.
    pub export: Option<PathBuf>,
    /// Weights to start a fresh run from (ignored on resume).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// With `init`: the model may extend the file's architecture
    /// ([`weights::load_extending`]); its new tensors keep their fresh initialisation.
    #[serde(default)]
    pub init_extend: bool,
    /// Where it trains: `cpu`, `wgpu` or `wgpu:N` ([`crate::device::select`]).
    #[serde(default = "cpu")]
    pub device: String,
}

fn cpu() -> String {
    "cpu".into()
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint does not belong to this job, or is damaged.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Weights could not be saved or loaded.
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    /// A checkpoint could not be swapped in, or the loss log rewritten.
    #[error(transparent)]
    Files(#[from] rlrig_checkpoint::CheckpointError),
    /// A model could not be built or fed.
    #[error(transparent)]
    Model(#[from] crate::ModelError),
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

/// An I/O error on `path`, for `map_err`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Any displayable error as [`TrainError::Other`].
pub(crate) fn other(e: &dyn std::fmt::Display) -> TrainError {
    TrainError::Other(e.to_string())
}

/// What one model learns: its network, its batches and its evaluation.
pub trait Task {
    /// The network.
    type Model: Architecture;

    /// The shared settings.
    fn settings(&self) -> &LoopSettings;

    /// What must be equal for a checkpoint to belong to this job (model, architecture, seed,
    /// batch, …); stored in the checkpoint and compared on resume.
    fn identity(&self) -> serde_json::Value;

    /// The architecture.
    fn config(&self) -> &<Self::Model as Architecture>::Config;

    /// The loss of training batch `step` (a scalar with a gradient).
    fn loss(&self, model: &Self::Model, step: u64) -> Result<Tensor<1>, TrainError>;

    /// Evaluates the averaged weights after `step` steps, writes what it shows into `dir`
    /// and returns the log line and a JSON summary.
    fn evaluate(
        &self,
        model: &Self::Model,
        step: u64,
        dir: &Path,
    ) -> Result<(String, serde_json::Value), TrainError>;
}

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CheckpointState {
    job: serde_json::Value,
    step: u64,
    seconds: f64,
}

/// One line of `loss.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossLine {
    /// Step just taken (1-based).
    pub step: u64,
    /// The batch's loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Training seconds so far, over all invocations.
    pub seconds: f64,
}

/// How an invocation ended.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// The step reached.
    pub step: u64,
    /// Whether all steps are done (else the time budget ran out).
    pub finished: bool,
    /// Mean loss of the last 100 steps of this invocation.
    pub recent_loss: f64,
    /// The last evaluation's summary, if one ran.
    pub last_eval: Option<serde_json::Value>,
}

/// A deterministic 64-bit mix of two numbers (SplitMix64's finaliser), for per-step seeds.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The decay of the weights' exponential moving average (0.999: docs/method.md, "Why the
/// built-in world is shaped as it is"), reached after a warm-up ([`ema_decay`]). Evaluations
/// and the exported weights use the average, which samples far cleaner than the raw weights of
/// the last step.
pub const EMA_DECAY: f64 = 0.999;

/// The average's decay after `step` steps: `min(EMA_DECAY, (1 + step) / (10 + step))`, so that
/// the average follows the fast early changes instead of lagging behind the initial weights
/// for thousands of steps.
pub fn ema_decay(step: u64) -> f64 {
    EMA_DECAY.min((1.0 + step as f64) / (10.0 + step as f64))
}

/// Collects a module's float parameters, flattened, by parameter id.
struct Collect(std::collections::HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.insert(param.id, t.reshape([n]));
    }
}

/// `ema ← decay·ema + (1 − decay)·current`, parameter by parameter (ids match: the average
/// starts as a copy of the model).
struct Blend {
    current: std::collections::HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(cur) = self.current.remove(&param.id) else {
            return param;
        };
        let decay = self.decay;
        param.map(|e| {
            let shape = e.shape();
            e.mul_scalar(decay) + cur.reshape(shape).mul_scalar(1.0 - decay)
        })
    }
}

/// Moves the average one step towards `model`.
fn update_ema<M: Module>(ema: M, model: &M, decay: f64) -> M {
    let mut collect = Collect(std::collections::HashMap::new());
    Module::valid(model).visit(&mut collect);
    ema.map(&mut Blend {
        current: collect.0,
        decay,
    })
}

/// Loads burnpack tensors into `model`, insisting that every one applies.
pub(crate) fn load_burnpack<M: Module>(
    model: &mut M,
    path: &Path,
    what: &str,
) -> Result<(), TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_owned(),
        message,
    };
    let mut store = BurnpackStore::from_file(path);
    let result = model
        .load_from(&mut store)
        .map_err(|e| bad(format!("{what}: {e}")))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(bad(format!(
            "{what}: tensors did not apply: {:?}; missing {:?}",
            result.errors, result.missing
        )));
    }
    Ok(())
}

/// The training device of a job: its named device, prepared for autodiff.
pub fn training_device(settings: &LoopSettings) -> Result<Device, TrainError> {
    Ok(crate::device::select(&settings.device)
        .map_err(|e| other(&e))?
        .autodiff())
}

/// Runs (or, with `resume`, continues) a task in `dir`; `log` sees the evaluations and other
/// news as they happen. `model` is the freshly initialised network, built on the training
/// device ([`training_device`]) from a seeded state; a resume or an `init` replaces its
/// weights.
pub fn run<T: Task>(
    task: &T,
    model: T::Model,
    dir: &Path,
    resume: bool,
    mut log: impl FnMut(&str),
) -> Result<TrainOutcome, TrainError> {
    let job = task.settings();
    let t_invocation = Instant::now();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ckpt = dir.join("checkpoint");
    let Start {
        mut model,
        mut ema,
        mut optim,
        mut step,
        mut seconds,
    } = start(task, model, dir, resume, &mut log)?;

    let loss_path = dir.join("loss.jsonl");
    if resume {
        // Steps logged after the checkpoint (a crash or a kill between checkpoints) are run
        // again: drop their lines so that every step appears once. The rewrite is atomic: a
        // crash during it leaves the old log, which the next resume truncates again.
        rlrig_checkpoint::truncate_jsonl(&loss_path, |l| {
            serde_json::from_str::<LossLine>(l).is_ok_and(|x| x.step <= step)
        })?;
    }
    let mut loss_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&loss_path)
        .map_err(io(&loss_path))?;
    let mut recent: Vec<f64> = Vec::new();
    let mut last_eval = None;
    let budget = job.max_minutes.map(|m| m * 60.0);
    let mut since = Instant::now();
    while step < job.steps {
        let lr = if job.warmup > 0 && step < job.warmup {
            job.lr * (step + 1) as f64 / job.warmup as f64
        } else {
            job.lr
        };
        let loss = task.loss(&model, step)?;
        let value = f64::from(loss.clone().into_scalar::<f32>());
        if !value.is_finite() {
            return Err(TrainError::Other(format!(
                "step {}: the loss is {value}; the last checkpoint holds the weights before it",
                step + 1
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        ema = update_ema(ema, &model, ema_decay(step));
        step += 1;
        seconds += since.elapsed().as_secs_f64();
        since = Instant::now();
        recent.push(value);
        if recent.len() > 100 {
            recent.remove(0);
        }
        let line = LossLine {
            step,
            loss: value,
            lr,
            seconds,
        };
        append_line(&mut loss_file, &loss_path, &line)?;
        let out_of_time = budget.is_some_and(|b| t_invocation.elapsed().as_secs_f64() >= b);
        if step % job.sample_every == 0 || step == job.steps {
            let (summary, record) = task.evaluate(&ema, step, dir)?;
            log(&format!(
                "step {step}: loss {:.4} (mean of last {}), {summary}",
                recent.iter().sum::<f64>() / recent.len() as f64,
                recent.len(),
            ));
            last_eval = Some(record);
            since = Instant::now();
        }
        if step % job.checkpoint_every == 0 || step == job.steps || out_of_time {
            // The log reaches the disk up to the checkpoint's step before the checkpoint does.
            loss_file.sync_data().map_err(io(&loss_path))?;
            checkpoint(&model, &ema, &optim, task.identity(), step, seconds, &ckpt)?;
            since = Instant::now();
        }
        if out_of_time && step < job.steps {
            log(&format!(
                "time budget reached at step {step}; continue with --resume"
            ));
            break;
        }
    }
    let finished = step >= job.steps;
    // The latest weights, whether the job finished or its time budget ran out.
    weights::save(&ema, dir.join("model.safetensors"))?;
    if let Some(export) = &job.export {
        if let Some(parent) = export.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        weights::save(&ema, export)?;
        log(&format!(
            "exported the step-{step} weights to {}",
            export.display()
        ));
    }
    Ok(TrainOutcome {
        step,
        finished,
        recent_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        last_eval,
    })
}

/// Where a run starts: the fresh model, `init`'s weights, or the checkpoint's (`resume`).
struct Start<M> {
    model: M,
    /// The weight average.
    ema: M,
    optim: burn::optim::ModuleOptimizer,
    step: u64,
    seconds: f64,
}

/// Reads what the run starts from (see [`Start`]); refuses a new run over a checkpoint.
fn start<T: Task>(
    task: &T,
    mut model: T::Model,
    dir: &Path,
    resume: bool,
    log: &mut impl FnMut(&str),
) -> Result<Start<T::Model>, TrainError> {
    let job = task.settings();
    let ckpt = dir.join("checkpoint");
    let mut optim = crate::rectified_flow::adamw().init();
    let (mut step, mut seconds) = (0u64, 0.0f64);
    // The checkpoint a resume reads: `checkpoint/`, or `checkpoint.old/` after a crash mid-swap.
    let found = checkpoint_to_resume(dir).unwrap_or_else(|| ckpt.clone());
    if resume {
        if found != ckpt {
            log(&format!(
                "{} is missing (a crash came while it was replaced): resuming from {}",
                ckpt.display(),
                found.display()
            ));
        }
        let state = checkpoint_state(&found, &task.identity())?;
        load_burnpack(&mut model, &found.join("model.bpk"), "model")?;
        optim = optim
            .load(found.join("optim.bpk"))
            .map_err(|e| TrainError::Checkpoint {
                path: found.clone(),
                message: format!("optimiser: {e}"),
            })?;
        step = state.step;
        seconds = state.seconds;
        log(&format!("resumed at step {step} ({seconds:.0} s trained)"));
    } else if let Some(init) = job
        .init
        .as_ref()
        .filter(|_| !rlrig_checkpoint::exists(&ckpt))
    {
        model = initial_weights(task, model, init, log)?;
    } else if rlrig_checkpoint::exists(&ckpt) {
        return Err(TrainError::Other(format!(
            "{} already holds a checkpoint: resume it (--resume) or start a new run",
            ckpt.display()
        )));
    }

    // The average: from the checkpoint when it has one (older checkpoints do not: it starts
    // from the current weights then), else a copy of the fresh model.
    let mut ema = Module::valid(&model);
    let ema_path = found.join("ema.bpk");
    if resume && ema_path.exists() {
        load_burnpack(&mut ema, &ema_path, "average")?;
    }
    Ok(Start {
        model,
        ema,
        optim,
        step,
        seconds,
    })
}

/// The state of the checkpoint in `found`, refused when another job wrote it.
fn checkpoint_state(
    found: &Path,
    identity: &serde_json::Value,
) -> Result<CheckpointState, TrainError> {
    let state_path = found.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: found.to_owned(),
            message: e.to_string(),
        })?;
    if !same_identity(&state.job, identity) {
        return Err(TrainError::Checkpoint {
            path: found.to_owned(),
            message:
                "it was written by a different job (model, architecture, seed or batch differ)"
                    .into(),
        });
    }
    Ok(state)
}

/// The weights a new run starts from: `init`'s, extended by fresh tensors for what it lacks
/// when the job says `init_extend`.
fn initial_weights<T: Task>(
    task: &T,
    model: T::Model,
    init: &Path,
    log: &mut impl FnMut(&str),
) -> Result<T::Model, TrainError> {
    if task.settings().init_extend {
        let (grown, new) = weights::load_extending(init, model)?;
        log(&format!(
            "starting from the weights in {}, {} new tensors fresh: {}",
            init.display(),
            new.len(),
            new.join(", ")
        ));
        Ok(grown)
    } else {
        let device = model.device();
        let model = weights::load_model_expecting::<T::Model>(init, task.config(), &device)?;
        log(&format!("starting from the weights in {}", init.display()));
        Ok(model)
    }
}

/// Appends one loss line with one write, so that a kill leaves at most one torn line (dropped
/// on resume).
fn append_line(file: &mut std::fs::File, path: &Path, line: &LossLine) -> Result<(), TrainError> {
    let text = serde_json::to_string(line).expect("serialises") + "\n";
    file.write_all(text.as_bytes()).map_err(io(path))
}

/// Whether a stored identity is this job's: every field of this job's identity is stored with
/// the same value (a checkpoint may record more, e.g. the whole job of an older version).
fn same_identity(stored: &serde_json::Value, now: &serde_json::Value) -> bool {
    match (stored, now) {
        (serde_json::Value::Object(s), serde_json::Value::Object(n)) => {
            n.iter().all(|(k, v)| s.get(k) == Some(v))
        }
        _ => stored == now,
    }
}

/// The checkpoint directory's marker: the file [`checkpoint`] writes last.
const STATE: &str = "state.json";

/// The checkpoint a `--resume` of the run in `dir` reads: `dir/checkpoint/`, or
/// `dir/checkpoint.old/` when a crash came between the two renames of its swap; `None` when
/// the run has none.
pub fn checkpoint_to_resume(dir: &Path) -> Option<PathBuf> {
    rlrig_checkpoint::to_resume(&dir.join("checkpoint"), STATE)
}

/// Writes the checkpoint to a scratch directory and swaps it into place
/// ([`rlrig_checkpoint::swap_in`]), so a crash leaves a whole checkpoint.
fn checkpoint<M: Module>(
    model: &M,
    ema: &M,
    optim: &burn::optim::ModuleOptimizer,
    job: serde_json::Value,
    step: u64,
    seconds: f64,
    ckpt: &Path,
) -> Result<(), TrainError> {
    let tmp = rlrig_checkpoint::scratch(ckpt)?;
    let bad = |m: String| TrainError::Checkpoint {
        path: tmp.clone(),
        message: m,
    };
    let mut store = BurnpackStore::from_file(tmp.join("model.bpk")).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| bad(e.to_string()))?;
    optim
        .save(tmp.join("optim.bpk"))
        .map_err(|e| bad(format!("optimiser: {e}")))?;
    let mut store = BurnpackStore::from_file(tmp.join("ema.bpk")).overwrite(true);
    ema.save_into(&mut store)
        .map_err(|e| bad(format!("average: {e}")))?;
    let state = CheckpointState { job, step, seconds };
    std::fs::write(
        tmp.join(STATE),
        serde_json::to_string_pretty(&state).expect("serialises"),
    )
    .map_err(io(&tmp))?;
    rlrig_checkpoint::swap_in(&tmp, ckpt)?;
    Ok(())
}
