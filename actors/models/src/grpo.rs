//! GRPO's objective for token policies (DeepSeekMath 2402.03300; docs/method.md), as
//! Reflection-GRPO's phase 1 trains the Policy with it. Knob names follow TRL / verl.
//!
//! * Group-normalised advantages: `A_i = (r_i − mean(r)) / (std(r) + eps)` over the `G`
//!   rollouts of one prompt (population std), or `r_i − mean(r)` without std scaling
//!   (`scale_rewards = false`, Dr. GRPO). A group whose rewards are all equal carries no signal
//!   and is filtered (DAPO's dynamic sampling), and counted.
//! * Per token: `ρ = exp(logp − logp_old)`, loss `−min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A)`,
//!   plus `β · KL` with the k3 estimator `exp(ref − logp) − (ref − logp) − 1` against a frozen
//!   reference policy.
//! * Aggregation: `token_mean` (all tokens of the batch weigh the same, DAPO) or
//!   `sequence_mean` (each sequence's token mean, then the mean over sequences, GRPO's paper).
//!
//! [`Learner`] applies it to the Policy: groups of sampled edit prompts with their stored
//! log-probs and rewards in, one AdamW step (gradient clipping by norm), a new version out.

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Tensor, TensorData};
use rlrig_contract::{GrpoGroup, GrpoLearner, RoleError, WeightsUpdate};
use rlrig_hf::lora::{Adapted, LoraConfig};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::vlm_policy::{PolicyInput, PolicyNet};

/// How per-token losses become one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Every token of the batch weighs the same (DAPO).
    TokenMean,
    /// Mean over each sequence's tokens, then over sequences (the GRPO paper).
    SequenceMean,
}

/// GRPO's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Rollouts per prompt (`G`).
    pub num_generations: usize,
    /// Weight of the KL term (0: no reference policy needed).
    pub beta: f64,
    /// Lower clip range: `ρ ≥ 1 − epsilon`.
    pub epsilon: f64,
    /// Upper clip range: `ρ ≤ 1 + epsilon_high`.
    pub epsilon_high: f64,
    /// Token-mean or sequence-mean aggregation.
    pub loss_type: LossType,
    /// Divide advantages by the group's standard deviation.
    pub scale_rewards: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            num_generations: 8,
            beta: 0.04,
            epsilon: 0.2,
            epsilon_high: 0.28,
            loss_type: LossType::TokenMean,
            scale_rewards: true,
        }
    }
}

/// The epsilon added to a group's standard deviation.
pub const ADV_EPS: f64 = 1e-4;

/// A group's advantages, or `None` when every reward is equal (the group is filtered).
pub fn group_advantages(rewards: &[f64], scale_rewards: bool) -> Option<Vec<f64>> {
    let n = rewards.len() as f64;
    let first = *rewards.first()?;
    if rewards.iter().all(|&r| r == first) {
        return None;
    }
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    Some(
        rewards
            .iter()
            .map(|r| {
                let centred = r - mean;
                if scale_rewards {
                    centred / (std + ADV_EPS)
                } else {
                    centred
                }
            })
            .collect(),
    )
}

/// The k3 estimator of `KL(π ‖ π_ref)` per token: `exp(ref − logp) − (ref − logp) − 1` (≥ 0,
/// 0 where the two agree).
pub fn k3<const D: usize>(logp: Tensor<D>, ref_logp: Tensor<D>) -> Tensor<D> {
    let d = ref_logp - logp;
    d.clone().exp() - d - 1.0
}

/// The batch's loss and what it shows.
#[derive(Debug)]
pub struct GrpoLoss {
    /// The scalar to minimise.
    pub loss: Tensor<1>,
    /// Share of tokens whose ratio was clipped (on the side that binds).
    pub clip_fraction: f64,
    /// Mean k3 KL per token (0 without a reference).
    pub kl: f64,
}

/// GRPO's loss over a batch of sequences.
///
/// * `logp`: `(B, T)` log-probs of the sampled tokens under the current policy (with a
///   gradient), `old_logp`: the same under the policy that sampled them, `ref_logp`: under the
///   frozen reference (needed when `beta > 0`).
/// * `advantages`: one per sequence; `mask`: `(B, T)`, 1 for real tokens, 0 past each end.
pub fn loss(
    logp: Tensor<2>,
    old_logp: Tensor<2>,
    ref_logp: Option<Tensor<2>>,
    advantages: &[f64],
    mask: Tensor<2>,
    config: &GrpoConfig,
) -> GrpoLoss {
    let kl = ref_logp
        .filter(|_| config.beta > 0.0)
        .map(|reference| k3(logp.clone(), reference));
    loss_with_kl(logp, old_logp, kl, advantages, mask, config)
}

/// [`loss`] with the KL term given per token (or per denoising step): `kl` is `(B, T)`, added
/// with weight `beta` where the mask is 1. Flow-GRPO's Editor passes the Gaussian KL of its
/// step means here.
pub fn loss_with_kl(
    logp: Tensor<2>,
    old_logp: Tensor<2>,
    kl: Option<Tensor<2>>,
    advantages: &[f64],
    mask: Tensor<2>,
    config: &GrpoConfig,
) -> GrpoLoss {
    let [b, t] = logp.dims();
    assert_eq!(
        advantages.len(),
        b,
        "grpo::loss: one advantage per sequence"
    );
    let device = logp.device();
    let adv = Tensor::<2>::from_data(
        TensorData::new(
            advantages.iter().map(|&a| a as f32).collect::<Vec<_>>(),
            [b, 1],
        ),
        &device,
    )
    .expand([b, t]);
    let ratio = (logp.clone() - old_logp).exp();
    let clipped = ratio
        .clone()
        .clamp(1.0 - config.epsilon, 1.0 + config.epsilon_high);
    let unclipped_obj = ratio.clone() * adv.clone();
    let clipped_obj = clipped * adv.clone();
    let objective = unclipped_obj.clone().min_pair(clipped_obj.clone());
    let mut per_token = objective.neg();
    // Clipped tokens: where the clipped term binds (it is the smaller one).
    let binds = clipped_obj.lower(unclipped_obj).float() * mask.clone();
    let mut kl_mean = 0.0;
    if let Some(kl) = kl.filter(|_| config.beta > 0.0) {
        let counted = mask.clone().sum().into_scalar::<f32>().max(1.0);
        kl_mean = f64::from((kl.clone() * mask.clone()).sum().into_scalar::<f32>() / counted);
        per_token = per_token + kl.mul_scalar(config.beta);
    }
    let per_token = per_token * mask.clone();
    let tokens = mask.clone().sum().into_scalar::<f32>().max(1.0);
    let clip_fraction = f64::from(binds.sum().into_scalar::<f32>() / tokens);
    let loss = match config.loss_type {
        LossType::TokenMean => per_token.sum().div_scalar(tokens),
        LossType::SequenceMean => {
            let lengths = mask.sum_dim(1).clamp_min(1.0);
            (per_token.sum_dim(1) / lengths).mean()
        }
    };
    GrpoLoss {
        loss: loss.reshape([1]),
        clip_fraction,
        kl: kl_mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t2(rows: &[&[f32]]) -> Tensor<2> {
        let (b, t) = (rows.len(), rows[0].len());
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [b, t]), &Device::flex())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn advantages_by_hand() {
        // mean 0.5, population std 0.5.
        let a = group_advantages(&[1.0, 0.0, 1.0, 0.0], true).unwrap();
        let expect = 0.5 / (0.5 + ADV_EPS);
        assert!(close(a[0], expect) && close(a[1], -expect), "{a:?}");
        let a = group_advantages(&[0.75, 0.25, 0.5], false).unwrap();
        assert!(close(a[0], 0.25) && close(a[1], -0.25) && close(a[2], 0.0));
        // All equal: filtered.
        assert_eq!(group_advantages(&[0.5, 0.5, 0.5], true), None);
        assert_eq!(group_advantages(&[], true), None);
    }

    #[test]
    fn clipping_binds_on_both_sides() {
        let config = GrpoConfig {
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: 0.28,
            ..GrpoConfig::default()
        };
        let old = t2(&[&[0.0, 0.0], &[0.0, 0.0]]);
        // Ratios e^0.5 ≈ 1.6487 (above 1.28) and e^-0.5 ≈ 0.6065 (below 0.8).
        let logp = t2(&[&[0.5, -0.5], &[0.5, -0.5]]);
        let mask = t2(&[&[1.0, 1.0], &[1.0, 1.0]]);
        let out = loss(logp, old, None, &[1.0, -1.0], mask, &config);
        // A = +1: min(1.6487, 1.28) = 1.28; min(0.6065, 0.8·1) = 0.6065 (unclipped binds).
        // A = −1: min(−1.6487, −1.28) = −1.6487 (unclipped); min(−0.6065, −0.8) = −0.8.
        let expect = -(1.28 + 0.606_530_7 - 1.648_721_3 - 0.8) / 4.0;
        assert!(close(f64::from(out.loss.into_scalar::<f32>()), expect));
        assert!(close(out.clip_fraction, 0.5), "{}", out.clip_fraction);
    }

    #[test]
    fn k3_is_zero_for_identical_policies_and_positive_otherwise() {
        let logp = t2(&[&[-1.0, -2.0, -0.5]]);
        let same = k3(logp.clone(), logp.clone()).sum().into_scalar::<f32>();
        assert_eq!(same, 0.0);
        let r = t2(&[&[-1.5, -2.0, -0.1]]);
        let v = k3(logp, r).into_data().try_to_vec::<f32>().unwrap();
        // d = ref − logp = (−0.5, 0, 0.4): e^d − d − 1.
        let by_hand = [(-0.5f64).exp() + 0.5 - 1.0, 0.0, 0.4f64.exp() - 0.4 - 1.0];
        for (a, b) in v.iter().zip(by_hand) {
            assert!(close(f64::from(*a), b));
        }
    }

    #[test]
    fn the_kl_term_and_the_aggregations() {
        let config = GrpoConfig {
            beta: 0.5,
            ..GrpoConfig::default()
        };
        let logp = t2(&[&[-1.0, -1.0, 0.0], &[-2.0, 0.0, 0.0]]);
        let mask = t2(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]);
        // Identical policies, zero advantages: the loss is 0 and so is the KL.
        let out = loss(
            logp.clone(),
            logp.clone(),
            Some(logp.clone()),
            &[0.0, 0.0],
            mask.clone(),
            &config,
        );
        assert_eq!(out.kl, 0.0);
        assert!(close(f64::from(out.loss.into_scalar::<f32>()), 0.0));
        // Ratios 1, A = (1, 2): token mean −(1 + 1 + 2)/3, sequence mean −(1 + 2)/2.
        let tm = loss(
            logp.clone(),
            logp.clone(),
            None,
            &[1.0, 2.0],
            mask.clone(),
            &config,
        );
        assert!(close(f64::from(tm.loss.into_scalar::<f32>()), -4.0 / 3.0));
        let sm = loss(
            logp.clone(),
            logp.clone(),
            None,
            &[1.0, 2.0],
            mask,
            &GrpoConfig {
                loss_type: LossType::SequenceMean,
                ..config
            },
        );
        assert!(close(f64::from(sm.loss.into_scalar::<f32>()), -1.5));
    }
}

/// One sampled edit prompt of a group: its tokens, their log-probs under the policy that
/// sampled them, and its reward.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Token ids, `<eos>` included when generated.
    pub tokens: Vec<u32>,
    /// Log-probs at sampling time (`logp_old`).
    pub logprobs: Vec<f32>,
    /// The reward (the Checker's score after the edit).
    pub reward: f64,
}

/// The `G` samples drawn for one Policy input.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// What the Policy read.
    pub input: PolicyInput,
    /// Its samples.
    pub samples: Vec<Sample>,
}

/// The learner's settings besides GRPO's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// GRPO's knobs.
    pub grpo: GrpoConfig,
    /// AdamW's learning rate.
    pub lr: f64,
    /// Gradient clipping by norm, per parameter tensor (burn's `GradientClipping::Norm`).
    pub max_grad_norm: f32,
    /// The sampling temperature the log-probs are taken at.
    pub temperature: f64,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            grpo: GrpoConfig::default(),
            lr: 1e-5,
            max_grad_norm: 1.0,
            temperature: 1.0,
        }
    }
}

/// What one learner step saw and did (the contract's type).
pub use rlrig_contract::LearnStats as StepStats;

/// A step's stats before it is taken: the weights' version, the number of groups, and the
/// mean and (population) standard deviation of every sample's reward.
pub fn reward_stats(rewards: &[f64], groups: usize, version: u64) -> StepStats {
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    StepStats {
        version,
        groups,
        reward_mean: mean,
        reward_std: (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt(),
        ..StepStats::default()
    }
}

/// The GRPO learner of the Policy: the trained network (on an autodiff device), a frozen copy
/// of its starting weights as the KL reference, AdamW with gradient clipping, and a version
/// that every step that changes the weights advances.
pub struct Learner {
    /// Always `Some` between calls (taken for the optimiser's step, which consumes it).
    policy: Option<PolicyNet>,
    reference: PolicyNet,
    optim: burn::optim::ModuleOptimizer,
    config: LearnerConfig,
    version: u64,
}

impl Learner {
    /// A learner starting from `policy` (built on an autodiff device), at version 0.
    pub fn new(policy: PolicyNet, config: LearnerConfig) -> Self {
        let reference = burn::module::Module::valid(&policy);
        let optim = crate::rectified_flow::adamw()
            .with_grad_clipping(Some(
                burn::optim::grad_clipping::GradientClippingConfig::Norm(config.max_grad_norm),
            ))
            .init();
        Learner {
            policy: Some(policy),
            reference,
            optim,
            config,
            version: 0,
        }
    }

    /// The current weights, for the Policy actors (no autodiff).
    pub fn policy(&self) -> PolicyNet {
        burn::module::Module::valid(self.net())
    }

    fn net(&self) -> &PolicyNet {
        self.policy
            .as_ref()
            .expect("the learner holds its policy between steps")
    }

    /// The version of the current weights.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// One GRPO step on a batch of groups.
    pub fn step(&mut self, groups: &[Group]) -> Result<StepStats, ModelError> {
        let rewards: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.samples.iter().map(|s| s.reward))
            .collect();
        let mut stats = reward_stats(&rewards, groups.len(), self.version);
        let (mut inputs, mut tokens, mut old, mut advantages) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for g in groups {
            let r: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
            let Some(adv) = group_advantages(&r, self.config.grpo.scale_rewards) else {
                stats.filtered_groups += 1;
                continue;
            };
            for (s, a) in g.samples.iter().zip(adv) {
                if s.tokens.len() != s.logprobs.len() {
                    return Err(ModelError::Invalid(format!(
                        "a sample has {} tokens but {} log-probs",
                        s.tokens.len(),
                        s.logprobs.len()
                    )));
                }
                inputs.push(g.input.clone());
                tokens.push(s.tokens.clone());
                old.push(s.logprobs.clone());
                advantages.push(a);
            }
        }
        stats.sequences = inputs.len();
        if inputs.is_empty() {
            return Ok(stats);
        }
        let t = self.config.temperature;
        let (logp, mask) = self.net().target_logprobs(&inputs, &tokens, t)?;
        let [b, width] = logp.dims();
        let device = logp.device();
        let padded = |rows: &[Vec<f32>]| -> Tensor<2> {
            let mut flat = vec![0f32; b * width];
            for (r, row) in rows.iter().enumerate() {
                flat[r * width..r * width + row.len()].copy_from_slice(row);
            }
            Tensor::from_data(TensorData::new(flat, [b, width]), &device)
        };
        let reference = (self.config.grpo.beta > 0.0)
            .then(|| self.reference.score(&inputs, &tokens, t))
            .transpose()?
            .map(|r| padded(&r));
        let out = loss(
            logp,
            padded(&old),
            reference,
            &advantages,
            mask,
            &self.config.grpo,
        );
        stats.loss = f64::from(out.loss.clone().into_scalar::<f32>());
        stats.kl = out.kl;
        stats.clip_fraction = out.clip_fraction;
        let grads = burn::optim::GradientsParams::from_grads(out.loss.backward(), self.net());
        let policy = self.policy.take().expect("held between steps");
        self.policy = Some(self.optim.step(self.config.lr, policy, grads));
        self.version += 1;
        stats.version = self.version;
        Ok(stats)
    }
}

/// The learner's state besides weights and optimiser, as a checkpoint stores it.
#[derive(Serialize, Deserialize)]
struct LearnerState {
    version: u64,
    #[allow(dead_code)]
    config: LearnerConfig,
}

impl Learner {
    /// The groups as the network reads them.
    fn groups(groups: &[GrpoGroup]) -> Result<Vec<Group>, String> {
        groups
            .iter()
            .map(|g| {
                let at = |what: &str| format!("trajectory {} round {}: {what}", g.trajectory, g.round);
                let (Some(image), Some(report)) = (&g.image, &g.report) else {
                    return Err(at("a group without the image and report the Policy read (was the trained actor a policy?)"));
                };
                let input = PolicyInput::new(image.clone(), &g.prompt.prompt(), &report.reflection)
                    .map_err(|e| at(&e.to_string()))?;
                Ok(Group {
                    input,
                    samples: g
                        .samples
                        .iter()
                        .map(|s| {
                            let p = s
                                .proposal
                                .as_ref()
                                .ok_or_else(|| at("a sample without an edit prompt"))?;
                            Ok(Sample {
                                tokens: p.token_ids.clone(),
                                logprobs: p.logprobs.clone(),
                                reward: s.reward,
                            })
                        })
                        .collect::<Result<_, String>>()?,
                })
            })
            .collect()
    }
}

impl GrpoLearner for Learner {
    fn step(&mut self, groups: &[GrpoGroup]) -> Result<StepStats, RoleError> {
        let groups = Self::groups(groups).map_err(RoleError)?;
        Learner::step(self, &groups).map_err(|e| RoleError(e.to_string()))
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn update(&self) -> Result<WeightsUpdate, RoleError> {
        Ok(WeightsUpdate {
            version: self.version,
            weights: crate::weights::to_bytes(&self.policy())
                .map_err(|e| RoleError(e.to_string()))?,
        })
    }

    /// `policy.bpk` (weights), `optim.bpk` (AdamW's moments), `learner.json` (version,
    /// settings). The KL reference is not saved: it is the starting weights, which the learner
    /// is built from again.
    fn save(&self, dir: &Path) -> Result<(), RoleError> {
        let state = LearnerState {
            version: self.version,
            config: self.config.clone(),
        };
        save_learner(dir, "policy", self.net(), &self.optim, &state)
    }

    fn restore(&mut self, dir: &Path) -> Result<(), RoleError> {
        let state: LearnerState =
            restore_learner(dir, "policy", &mut self.policy, &mut self.optim)?;
        // The settings stay those the learner was built with (a resumed run reads its own
        // flow.toml); the saved ones are for the record.
        self.version = state.version;
        Ok(())
    }
}

/// Writes a learner's checkpoint into `dir`: `{name}.bpk` (the weights), `optim.bpk` (AdamW's
/// moments) and `learner.json` (`state`).
pub fn save_learner<M: Module, S: Serialize>(
    dir: &Path,
    name: &str,
    model: &M,
    optim: &burn::optim::ModuleOptimizer,
    state: &S,
) -> Result<(), RoleError> {
    save_checkpoint(dir, name, model, optim, state, None)
}

/// The checkpoint of a learner that trains LoRA adapters of a frozen model: `adapters.bpk` (the
/// adapters alone: the frozen weights stay those of the model's own files, never copied),
/// `optim.bpk` (AdamW's moments of the adapters), `learner.json` (`state`), and the adapters as
/// a PEFT directory `adapter/` (what `PeftModel.from_pretrained` and rlrig's kinds load).
pub fn save_lora_learner<M: Module + Adapted, S: Serialize>(
    dir: &Path,
    model: &M,
    lora: &LoraConfig,
    optim: &burn::optim::ModuleOptimizer,
    state: &S,
) -> Result<(), RoleError> {
    save_checkpoint(
        dir,
        "adapters",
        model,
        optim,
        state,
        Some(rlrig_hf::lora::PARAMS),
    )?;
    rlrig_hf::lora::save_dir(model, lora, &dir.join("adapter"))
        .map_err(|e| RoleError(format!("saving the learner to {}: {e}", dir.display())))
}

fn save_checkpoint<M: Module, S: Serialize>(
    dir: &Path,
    name: &str,
    model: &M,
    optim: &burn::optim::ModuleOptimizer,
    state: &S,
    only: Option<&str>,
) -> Result<(), RoleError> {
    let bad = |e: String| RoleError(format!("saving the learner to {}: {e}", dir.display()));
    let mut store = BurnpackStore::from_file(dir.join(format!("{name}.bpk"))).overwrite(true);
    if let Some(pattern) = only {
        store = store.with_regex(pattern);
    }
    model
        .save_into(&mut store)
        .map_err(|e| bad(e.to_string()))?;
    optim
        .save(dir.join("optim.bpk"))
        .map_err(|e| bad(format!("optimiser: {e}")))?;
    std::fs::write(
        dir.join("learner.json"),
        serde_json::to_string_pretty(state).expect("serialises"),
    )
    .map_err(|e| bad(e.to_string()))
}

/// Restores what [`save_learner`] wrote: the weights into `model` (held in an `Option` between
/// calls), the optimiser's moments into `optim`; returns the state.
pub fn restore_learner<M: Module, S: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    model: &mut Option<M>,
    optim: &mut burn::optim::ModuleOptimizer,
) -> Result<S, RoleError> {
    restore_checkpoint(dir, name, model, optim, None)
}

/// Restores what [`save_lora_learner`] wrote: every adapter parameter of `model` must be in
/// `adapters.bpk`; the frozen weights keep the values they were loaded with.
pub fn restore_lora_learner<M: Module, S: serde::de::DeserializeOwned>(
    dir: &Path,
    model: &mut Option<M>,
    optim: &mut burn::optim::ModuleOptimizer,
) -> Result<S, RoleError> {
    restore_checkpoint(dir, "adapters", model, optim, Some(rlrig_hf::lora::PARAMS))
}

fn restore_checkpoint<M: Module, S: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    model: &mut Option<M>,
    optim: &mut burn::optim::ModuleOptimizer,
    only: Option<&str>,
) -> Result<S, RoleError> {
    let bad = |e: String| RoleError(format!("restoring the learner from {}: {e}", dir.display()));
    let text = std::fs::read_to_string(dir.join("learner.json")).map_err(|e| bad(e.to_string()))?;
    let state: S = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut m = model.take().expect("held between calls");
    let path = dir.join(format!("{name}.bpk"));
    let loaded = match only {
        None => crate::training_loop::load_burnpack(&mut m, &path, name).map_err(|e| e.to_string()),
        Some(pattern) => load_matching(&mut m, &path, pattern),
    };
    *model = Some(m);
    loaded.map_err(bad)?;
    let old = std::mem::replace(optim, crate::rectified_flow::adamw().init());
    *optim = old
        .load(dir.join("optim.bpk"))
        .map_err(|e| bad(format!("optimiser: {e}")))?;
    Ok(state)
}

/// Loads the parameters of `model` whose path matches `pattern` from a burnpack file; each of
/// them must be there.
fn load_matching<M: Module>(model: &mut M, path: &Path, pattern: &str) -> Result<(), String> {
    let mut store = BurnpackStore::from_file(path)
        .with_regex(pattern)
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The filter leaves the other parameters unloaded, and reported missing.
    let filter = burn::store::PathFilter::new().with_regex(pattern);
    let missing: Vec<&String> = result
        .missing
        .iter()
        .map(|(n, _)| n)
        .filter(|n| filter.matches(n))
        .collect();
    if !result.errors.is_empty() || !missing.is_empty() {
        return Err(format!(
            "{}: tensors did not apply: {:?}; missing {missing:?}",
            path.display(),
            result.errors,
        ));
    }
    Ok(())
}
