//! Flow-GRPO (arXiv 2505.05470; docs/method.md) for the DiT family: the Editor
//! (Reflection-GRPO's phase 2) and the Diffuser (the RL-tuned generator).
//!
//! An Editor's group is `G` edits of one (source image, edit prompt), a Diffuser's `G` images of
//! one prompt, each sampled by the role's SDE sampler ([`crate::rectified_flow::sample_sde_window`]) and
//! stored with its denoising chain: the `K + 1` states and each step's log-probability under
//! the weights that sampled it. A sample's reward is the Checker's verdict on its image; its
//! advantage (group-normalised,
//! clipped to `±adv_clip`) is shared by its `K` steps. Per step:
//!
//! * `ρ = exp(logp − logp_old)`, with `logp` the Gaussian log-density of the stored transition
//!   under the current weights ([`crate::rectified_flow::transition_log_prob`]; a pixel mean, as the
//!   sampler records it);
//! * loss `−min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A) + β·KL`, where `KL` is the exact Gaussian
//!   KL between the step's transition under the current and the frozen reference weights (the
//!   starting network): the pixel mean of `(μ_θ − μ_ref)² / (2·std²)` with the step's `std`;
//! * the steps of the batch are averaged (`token_mean`: every step weighs the same) or each
//!   chain's steps first (`sequence_mean`) — the same aggregation code as phase 1
//!   ([`crate::grpo::loss_with_kl`]).
//!
//! One AdamW step per learner step, gradient clipping by norm; the version advances when the
//! weights change.

use crate::ModelError;
use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, Tensor, TensorData};
use rlrig_contract::{
    DenoisingChain, GroupSample, GrpoGroup, GrpoLearner, LearnStats, RoleError, WeightsUpdate,
};
use serde::{Deserialize, Serialize};

use crate::Dit;
use crate::grpo::{
    GrpoConfig, group_advantages, loss_with_kl, restore_learner, reward_stats, save_learner,
};
use crate::image::images_to_tensor;
use crate::rectified_flow::{self, SamplerConfig, SdeStep};
use crate::text::{TextBatch, Tokenizer};

/// The Flow-GRPO learner's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowLearnerConfig {
    /// GRPO's knobs (`temperature` does not apply).
    pub grpo: GrpoConfig,
    /// AdamW's learning rate.
    pub lr: f64,
    /// Gradient clipping by norm.
    pub max_grad_norm: f32,
    /// Advantages are clipped to `±adv_clip` (Flow-GRPO: 5).
    pub adv_clip: f64,
    /// Chains per backward pass: a step's gradient is accumulated over micro-batches of this
    /// many chains (the same gradient as one pass; the autodiff graph of every denoising step
    /// of a chunk is held until its backward pass, about 40 MiB per step of a 32×32 chain).
    pub micro_batch: usize,
}

impl Default for FlowLearnerConfig {
    fn default() -> Self {
        FlowLearnerConfig {
            grpo: GrpoConfig::default(),
            lr: 1e-5,
            max_grad_norm: 1.0,
            adv_clip: 5.0,
            micro_batch: 8,
        }
    }
}

/// One sample of a group, as the learner reads it: an edit (with its source image) or a
/// generated image (without).
struct Edit<'a> {
    source: Option<&'a rlrig_contract::Image>,
    prompt: String,
    chain: &'a DenoisingChain,
    advantage: f64,
}

/// The Flow-GRPO learner of an Editor or a Diffuser: the trained network (on an autodiff
/// device), a frozen copy of its starting weights as the KL reference, AdamW with gradient
/// clipping, a version.
pub struct FlowLearner {
    /// Always `Some` between calls (taken for the optimiser's step, which consumes it).
    model: Option<Dit>,
    reference: Dit,
    optim: burn::optim::ModuleOptimizer,
    config: FlowLearnerConfig,
    tok: Tokenizer,
    version: u64,
}

impl FlowLearner {
    /// A learner starting from `model` (an Editor or a Diffuser, built on an autodiff device),
    /// at version 0.
    pub fn new(model: Dit, config: FlowLearnerConfig) -> Self {
        let reference = model.valid();
        let optim = rectified_flow::adamw()
            .with_grad_clipping(Some(
                burn::optim::grad_clipping::GradientClippingConfig::Norm(config.max_grad_norm),
            ))
            .init();
        let tok = Tokenizer::new(model.config().text_len);
        FlowLearner {
            model: Some(model),
            reference,
            optim,
            config,
            tok,
            version: 0,
        }
    }

    fn net(&self) -> &Dit {
        self.model
            .as_ref()
            .expect("the learner holds its model between steps")
    }

    /// The current weights, for the trained role's actors (no autodiff).
    pub fn model(&self) -> Dit {
        self.net().valid()
    }

    /// The per-step log-probabilities of the stored chains under the current weights,
    /// `(B, K)` with a gradient, the step means' KL to the reference `(B, K)` (when `beta >
    /// 0`), for the edits in order.
    fn log_probs(&self, edits: &[Edit]) -> Result<(Tensor<2>, Option<Tensor<2>>), ModelError> {
        same_sampler(edits)?;
        let first = edits[0].chain;
        let (steps, schedule) = (first.steps(), first.schedule_steps());
        let model = self.net();
        let config = model.config();
        let want = [
            config.out_channels as u32,
            config.image_size as u32,
            config.image_size as u32,
        ];
        if let Some(e) = edits.iter().find(|e| e.chain.shape != want) {
            return Err(ModelError::Invalid(format!(
                "a chain of {:?} states does not fit this network's {want:?}",
                e.chain.shape
            )));
        }
        let editor = config.cond_channels() > 0;
        if let Some(e) = edits.iter().find(|e| e.source.is_some() != editor) {
            return Err(ModelError::Invalid(format!(
                "a sample {} a source image but the trained network is {}",
                if e.source.is_some() { "has" } else { "lacks" },
                if editor { "an editor" } else { "a diffuser" }
            )));
        }
        let sampler = SamplerConfig {
            steps: schedule,
            guidance: first.guidance,
            noise_scale: first.noise_scale,
        };
        let device = model.device();
        let ref_device = self.reference.device();
        let beta = self.config.grpo.beta;
        let prompts: Vec<&str> = edits.iter().map(|e| e.prompt.as_str()).collect();
        let sources: Vec<rlrig_contract::Image> =
            edits.iter().filter_map(|e| e.source.cloned()).collect();
        let inputs = |device: &Device| -> Result<(TextBatch, Option<Tensor<4>>), ModelError> {
            Ok((
                self.tok.batch(&prompts, device)?,
                editor
                    .then(|| images_to_tensor(&sources, device))
                    .transpose()?,
            ))
        };
        let (text, cond) = inputs(&device)?;
        let reference_inputs = (beta > 0.0).then(|| inputs(&ref_device)).transpose()?;
        let b = edits.len();
        let dims = [b, want[0] as usize, want[1] as usize, want[2] as usize];
        // Each state of the batch decoded from f16 once; step k reads states k and k + 1.
        let batches: Vec<Vec<f32>> = (0..=steps)
            .map(|k| edits.iter().flat_map(|e| e.chain.state(k)).collect())
            .collect();
        let state = |k: usize, device: &Device| -> Tensor<4> {
            Tensor::from_data(TensorData::new(batches[k].clone(), dims), device)
        };
        let mut logps = Vec::with_capacity(steps);
        let mut kls = Vec::with_capacity(steps);
        for k in 0..steps {
            let coef = SdeStep::new(k, schedule, sampler.noise_scale);
            let (x, x_next) = (state(k, &device), state(k + 1, &device));
            let v = rectified_flow::velocity(
                model,
                x.clone(),
                coef.s,
                &text,
                cond.as_ref(),
                sampler.guidance,
            );
            let mean = coef.mean(x, v);
            logps.push(rectified_flow::gaussian_log_prob(
                x_next,
                mean.clone(),
                coef.std,
            ));
            if let Some((ref_text, ref_cond)) = &reference_inputs {
                let x_ref = state(k, &ref_device);
                let v_ref = rectified_flow::velocity(
                    &self.reference,
                    x_ref.clone(),
                    coef.s,
                    ref_text,
                    ref_cond.as_ref(),
                    sampler.guidance,
                );
                let mean_ref = coef.mean(x_ref, v_ref);
                let mean_ref = Tensor::<4>::from_data(mean_ref.into_data(), &device);
                kls.push(coef.kl(mean, mean_ref));
            }
        }
        let kl = (!kls.is_empty()).then(|| Tensor::stack(kls, 1));
        Ok((Tensor::stack(logps, 1), kl))
    }

    /// One Flow-GRPO step on a batch of groups.
    pub fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, ModelError> {
        let rewards: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.samples.iter().map(|s| s.reward))
            .collect();
        let mut stats = reward_stats(&rewards, groups.len(), self.version);
        let mut edits = Vec::new();
        for (g, s, chain, advantage) in chained_samples(groups, &self.config, &mut stats)? {
            // An edit is conditioned on its source image and edit prompt, a generated image on
            // the prompt alone.
            let (source, prompt) = match (&g.image, &s.proposal) {
                (Some(image), Some(p)) => (Some(image), p.edit_prompt.clone()),
                (None, None) => (None, g.prompt.prompt()),
                _ => {
                    return Err(ModelError::Invalid(format!(
                        "trajectory {} round {}: a sample with a source image but no edit prompt, or the other way round",
                        g.trajectory, g.round
                    )));
                }
            };
            edits.push(Edit {
                source,
                prompt,
                chain,
                advantage,
            });
        }
        stats.sequences = edits.len();
        if edits.is_empty() {
            return Ok(stats);
        }
        same_sampler(&edits)?;
        // Every chain has the same number of steps, so both aggregations are means over
        // chains of equal weight: a chunk's loss weighs its share of the chains.
        let mut accumulator = GradientsAccumulator::<Dit>::new();
        for chunk in edits.chunks(self.config.micro_batch.max(1)) {
            let share = chunk.len() as f64 / edits.len() as f64;
            let (logp, kl) = self.log_probs(chunk)?;
            let chains: Vec<&DenoisingChain> = chunk.iter().map(|e| e.chain).collect();
            let advantages: Vec<f64> = chunk.iter().map(|e| e.advantage).collect();
            let term = chunk_term(
                logp,
                kl,
                &chains,
                &advantages,
                share,
                &self.config.grpo,
                &mut stats,
            );
            let grads = burn::optim::GradientsParams::from_grads(term.backward(), self.net());
            accumulator.accumulate(self.net(), grads);
        }
        let grads = accumulator.grads();
        let model = self.model.take().expect("held between steps");
        self.model = Some(self.optim.step(self.config.lr, model, grads));
        self.version += 1;
        stats.version = self.version;
        Ok(stats)
    }
}

/// Refuses a batch whose chains were sampled with different samplers (steps, schedule, noise
/// scale or guidance): their transitions could not be scored with one set of coefficients.
fn same_sampler(edits: &[Edit]) -> Result<(), ModelError> {
    let first = edits[0].chain;
    let (steps, schedule) = (first.steps(), first.schedule_steps());
    for e in edits {
        let c = e.chain;
        if c.steps() != steps
            || c.schedule_steps() != schedule
            || c.noise_scale != first.noise_scale
            || c.guidance != first.guidance
        {
            return Err(ModelError::Invalid(format!(
                "chains sampled with different samplers in one batch ({} of {} steps, a = {}, guidance {} vs {} of {} steps, a = {}, guidance {})",
                c.steps(),
                c.schedule_steps(),
                c.noise_scale,
                c.guidance,
                steps,
                schedule,
                first.noise_scale,
                first.guidance
            )));
        }
    }
    Ok(())
}

/// A sample of a group as a Flow-GRPO learner reads it: its group, itself, its chain and its
/// advantage.
pub type ChainedSample<'a> = (&'a GrpoGroup, &'a GroupSample, &'a DenoisingChain, f64);

/// Every sample of the groups whose rewards differ, with its chain and its group-normalised
/// advantage clipped to `±adv_clip`; groups of equal rewards are counted in
/// `stats.filtered_groups`. A sample without a chain is an error naming its trajectory and
/// round.
pub fn chained_samples<'a>(
    groups: &'a [GrpoGroup],
    config: &FlowLearnerConfig,
    stats: &mut LearnStats,
) -> Result<Vec<ChainedSample<'a>>, ModelError> {
    let mut out = Vec::new();
    for g in groups {
        let r: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
        let Some(adv) = group_advantages(&r, config.grpo.scale_rewards) else {
            stats.filtered_groups += 1;
            continue;
        };
        for (s, a) in g.samples.iter().zip(adv) {
            let chain = s.chain.as_ref().ok_or_else(|| {
                ModelError::Invalid(format!(
                    "trajectory {} round {}: a sample has no denoising chain (Flow-GRPO learns from an Editor's or a Diffuser's exploring samples; was the trained actor one?)",
                    g.trajectory, g.round
                ))
            })?;
            out.push((g, s, chain, a.clamp(-config.adv_clip, config.adv_clip)));
        }
    }
    Ok(out)
}

/// One micro-batch's term of a Flow-GRPO step: the clipped objective (with KL) of `logp`
/// `(B, K)` against the chains' stored log-probabilities, every step counted, weighted by the
/// micro-batch's `share` of the batch; its loss, KL and clip fraction are added to `stats` (the
/// value logged is the one differentiated).
pub fn chunk_term(
    logp: Tensor<2>,
    kl: Option<Tensor<2>>,
    chains: &[&DenoisingChain],
    advantages: &[f64],
    share: f64,
    grpo: &GrpoConfig,
    stats: &mut LearnStats,
) -> Tensor<1> {
    let [b, k] = logp.dims();
    let device = logp.device();
    let old: Vec<f32> = chains
        .iter()
        .flat_map(|c| c.log_probs.iter().copied())
        .collect();
    let old = Tensor::<2>::from_data(TensorData::new(old, [b, k]), &device);
    let mask = Tensor::<2>::ones([b, k], &device);
    let out = loss_with_kl(logp, old, kl, advantages, mask, grpo);
    let term = out.loss.mul_scalar(share);
    stats.loss += f64::from(term.clone().into_scalar::<f32>());
    stats.kl += share * out.kl;
    stats.clip_fraction += share * out.clip_fraction;
    term
}

/// The learner's state besides weights and optimiser, as a checkpoint stores it.
#[derive(Serialize, Deserialize)]
struct LearnerState {
    version: u64,
    #[allow(dead_code)]
    config: FlowLearnerConfig,
}

impl GrpoLearner for FlowLearner {
    fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, RoleError> {
        FlowLearner::step(self, groups).map_err(|e| RoleError(e.to_string()))
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn update(&self) -> Result<WeightsUpdate, RoleError> {
        Ok(WeightsUpdate {
            version: self.version,
            weights: crate::weights::to_bytes(&self.model())
                .map_err(|e| RoleError(e.to_string()))?,
        })
    }

    /// `editor.bpk` (weights), `optim.bpk` (AdamW's moments), `learner.json` (version,
    /// settings). The KL reference is the starting weights, built again on resume.
    fn save(&self, dir: &Path) -> Result<(), RoleError> {
        let state = LearnerState {
            version: self.version,
            config: self.config.clone(),
        };
        save_learner(dir, "editor", self.net(), &self.optim, &state)
    }

    fn restore(&mut self, dir: &Path) -> Result<(), RoleError> {
        let state: LearnerState = restore_learner(dir, "editor", &mut self.model, &mut self.optim)?;
        self.version = state.version;
        Ok(())
    }
}
