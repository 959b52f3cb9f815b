//! Pre-training flows: train one of the built-in models on data the world generates on the fly.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Checked, FlowProblem, Loaded};

/// A pre-training flow file: a `[pretrain]` table instead of actors and a cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainFlow {
    /// Name of the run; its directory is `<run_dir>/<name>`.
    pub name: String,
    /// Parent directory of runs.
    #[serde(default = "crate::default_run_dir")]
    pub run_dir: PathBuf,
    /// What to train and how.
    pub pretrain: PretrainSettings,
}

/// Which built-in model a pre-training flow trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PretrainModel {
    /// The text → image Diffuser.
    Diffuser,
    /// The image + edit prompt → image Editor.
    Editor,
    /// The image + prompt → verdicts and reflection Checker (a small VLM).
    Checker,
    /// The image + prompt + reflection → edit prompt Policy, the paper's Actor (a small VLM).
    Policy,
}

/// How to pre-train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainSettings {
    /// The model to train.
    pub model: PretrainModel,
    /// Architecture settings over the model's defaults (`patch`, `width`, `depth`, `heads`, …).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub architecture: serde_json::Map<String, serde_json::Value>,
    /// Optimiser steps in all.
    pub steps: u64,
    /// Examples per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// AdamW learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Steps of linear learning-rate warm-up.
    #[serde(default)]
    pub warmup: u64,
    /// Seed of the data and the noise.
    #[serde(default)]
    pub seed: u64,
    /// Steps between checkpoints (and loss-log flushes).
    #[serde(default = "default_every")]
    pub checkpoint_every: u64,
    /// The Editor only: extra weight on the pixels an edit changes (0: a plain mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit_weight: Option<f64>,
    /// The Diffuser and the Editor: the mean of the logit-normal noise levels they train at,
    /// `s = sigmoid(noise_mean + N(0, 1))` (0 when unset; positive trains more at high noise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_mean: Option<f64>,
    /// Training images besides the procedural ones, for the Checker and the Policy:
    /// `generated` (pool size), `generated_fraction`, `diffuser`, `editor`, `guidance`; and
    /// for the Policy `repairs`, the edit prompts it imitates (`"rule"` or `"any"`).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Steps between sample grids (evaluations).
    #[serde(default = "default_every")]
    pub sample_every: u64,
    /// Stop (with a checkpoint) after this many minutes of wall time in this invocation (a
    /// `--resume` gets the whole budget again); resume later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    /// Device: `cpu`, `wgpu`, `wgpu:N` (a build with the `wgpu` feature) or `cuda:N`.
    #[serde(default = "crate::default_device")]
    pub device: String,
    /// Weights to start from instead of a fresh network (same architecture), e.g. the shipped
    /// `weights/diffuser.safetensors` to train it further on a machine without the run's
    /// checkpoint. The optimiser starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// With `init`: the architecture may extend the file's (new layers, e.g. a DiT's
    /// `text_layers`); every tensor of the file must still fit, the new ones start fresh.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_extend: bool,
    /// Where the final weights are exported (safetensors + config), e.g. `weights/diffuser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<PathBuf>,
}

fn default_batch() -> usize {
    32
}
fn default_lr() -> f64 {
    1e-3
}
fn default_every() -> u64 {
    500
}

impl Checked for PretrainFlow {
    fn check(loaded: &Loaded<Self>) -> Vec<FlowProblem> {
        let p = &loaded.flow.pretrain;
        let mut out = Vec::new();
        let mut bad =
            |key: &str, m: &str| out.push(loaded.problem_at(&format!("pretrain.{key}"), m));
        if p.steps == 0 {
            bad("steps", "must be at least 1");
        }
        if p.batch == 0 {
            bad("batch", "must be at least 1");
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            bad("lr", "must be a positive number");
        }
        if p.checkpoint_every == 0 {
            bad("checkpoint_every", "must be at least 1");
        }
        if p.sample_every == 0 {
            bad("sample_every", "must be at least 1");
        }
        if p.max_minutes.is_some_and(|m| m.is_nan() || m <= 0.0) {
            bad("max_minutes", "must be a positive number of minutes");
        }
        if !p.data.is_empty() && matches!(p.model, PretrainModel::Diffuser | PretrainModel::Editor)
        {
            bad(
                "data",
                "only the checker and the policy take generated training images",
            );
        }
        if let Some(w) = p.edit_weight {
            if p.model != PretrainModel::Editor {
                bad("edit_weight", "only the editor weighs its edits");
            } else if !(w.is_finite() && w >= 0.0) {
                bad("edit_weight", "must be a number ≥ 0");
            }
        }
        if let Some(m) = p.noise_mean {
            if !matches!(p.model, PretrainModel::Diffuser | PretrainModel::Editor) {
                bad(
                    "noise_mean",
                    "only the diffuser and the editor draw noise levels",
                );
            } else if !(m.is_finite() && m.abs() <= 5.0) {
                bad("noise_mean", "must be a number in [-5, 5]");
            }
        }
        if p.init_extend && p.init.is_none() {
            bad("init_extend", "needs `init`, the weights to extend");
        }
        if !crate::validate::valid_device(&p.device) {
            bad("device", "expected `cpu`, `wgpu`, `wgpu:N` or `cuda:N`");
        }
        let name = &loaded.flow.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            out.push(loaded.problem_at(
                "name",
                format!("{name:?} is not a run name: use letters, digits, `-`, `_`, `.`"),
            ));
        }
        out
    }
}
