//! The `[train]` table: a cycle flow that trains one actor with Reflection-GRPO — the Policy
//! (phase 1) or the Editor (phase 2, Flow-GRPO) — or the Diffuser with Flow-GRPO.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::default_device;

/// Reflection-GRPO settings. Knob names follow TRL / verl (`num_generations`, `beta`,
/// `epsilon`, `epsilon_high`, `loss_type`, `scale_rewards`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// The actor whose weights are trained: one with role `policy` (phase 1), `editor`
    /// (phase 2) or `diffuser` (a step of `cycle.start`); every other actor is frozen.
    /// (`policy = "…"` is accepted as an alias.)
    #[serde(alias = "policy")]
    pub actor: String,
    /// Samples per round (`G`): edit prompts the Policy writes, each edited and re-checked
    /// (phase 1), edits the Editor makes of one edit prompt, each re-checked (phase 2), or
    /// images the Diffuser makes of the prompt, each checked (round 0).
    #[serde(default = "default_generations")]
    pub num_generations: u32,
    /// Learner steps to take.
    pub steps: u64,
    /// Groups per learner step.
    #[serde(default = "default_groups")]
    pub groups_per_step: usize,
    /// AdamW's learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Weight of the KL to the frozen starting weights (0: no reference): k3 per token for the
    /// Policy, the Gaussian KL of the step means per denoising step for the Editor.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Lower clip range: `ratio ≥ 1 − epsilon`.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Upper clip range: `ratio ≤ 1 + epsilon_high`.
    #[serde(default = "default_epsilon_high")]
    pub epsilon_high: f64,
    /// `token_mean` (DAPO) or `sequence_mean` (GRPO's paper).
    #[serde(default = "default_loss_type")]
    pub loss_type: String,
    /// Divide advantages by the group's standard deviation (`false`: Dr. GRPO).
    #[serde(default = "yes")]
    pub scale_rewards: bool,
    /// Gradient clipping by norm.
    #[serde(default = "default_grad_norm")]
    pub max_grad_norm: f64,
    /// Sampling temperature of the Policy's log-probs (must match the Policy actor's; unused
    /// in phase 2).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Phase 1: a branch whose edit prompt repeats a lower branch's of the same group is
    /// sampled again with another seed, up to this many times (0: never), so that a group's
    /// edit prompts differ and its rewards can (a group of equal prompts teaches nothing and is
    /// filtered). The learner's log-probs stay those of the Policy's full distribution.
    #[serde(default)]
    pub max_resamples: u32,
    /// Groups sampled by weights more than this many versions old are skipped (and counted).
    #[serde(default = "default_staleness")]
    pub max_staleness: u64,
    /// Save a checkpoint every this many learner steps (and at the end).
    #[serde(default = "default_checkpoint")]
    pub checkpoint_every: u64,
    /// Device of the learner: `cpu`, `wgpu`, `wgpu:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Evaluate the Policy on held-out prompts every this many versions, and the last one
    /// (0: never). The evaluation runs the flow's cycle without `[train]`, the Policy greedy,
    /// beside the training, and the oracle judges it (`eval.jsonl`).
    #[serde(default)]
    pub eval_every: u64,
    /// Held-out prompts per evaluation (the world's sampler).
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: u64,
    /// The sampler seed of the validation prompts (different from `prompts.seed`, and from
    /// the test prompts' 1000 of the evaluation flows, so that choosing a version by it leaves
    /// the test set unseen).
    #[serde(default = "default_eval_seed")]
    pub eval_seed: u64,
}

fn default_eval_prompts() -> u64 {
    100
}
fn default_eval_seed() -> u64 {
    2000
}

fn default_generations() -> u32 {
    8
}
fn default_groups() -> usize {
    16
}
fn default_lr() -> f64 {
    1e-5
}
fn default_beta() -> f64 {
    0.04
}
fn default_epsilon() -> f64 {
    0.2
}
fn default_epsilon_high() -> f64 {
    0.28
}
fn default_loss_type() -> String {
    "token_mean".into()
}
fn yes() -> bool {
    true
}
fn default_grad_norm() -> f64 {
    1.0
}
fn default_temperature() -> f64 {
    1.0
}
fn default_staleness() -> u64 {
    2
}
fn default_checkpoint() -> u64 {
    10
}
