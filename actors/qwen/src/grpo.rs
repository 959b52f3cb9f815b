//! Reflection-GRPO's phase 1 on Qwen2.5-VL: the Policy's edit prompts, scored by the Checker
//! after the edit, train LoRA adapters of the model; its base weights stay frozen (`no_grad`)
//! and are never copied. The KL reference is the same network with its adapters switched off.
//!
//! GRPO's objective is rlrig-models' ([`rlrig_models::grpo::loss`]); each sequence is scored
//! and back-propagated on its own with its share of the batch's aggregation, so memory holds
//! one sequence's graph at a time.

use std::path::Path;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rlrig_contract::{GrpoGroup, GrpoLearner, LearnStats, RoleError, WeightsUpdate};
use rlrig_hf::lora::{self, LoraConfig};
use rlrig_models::grpo::{
    LearnerConfig, LossType, group_advantages, loss, restore_lora_learner, reward_stats,
    save_lora_learner,
};
use serde::{Deserialize, Serialize};

use crate::QwenError;
use crate::config::QwenConfig;
use crate::model::{Net, Processor, Prompt};

/// Turns a group's prompt and reflection into the Policy's text (the kind's template).
pub type PolicyText = Box<dyn Fn(&str, &str) -> String + Send>;

/// The GRPO learner of `policy.qwen2-vl`.
pub struct QwenLearner {
    /// Always `Some` between calls (the optimiser's step consumes the network).
    net: Option<Net>,
    config: QwenConfig,
    processor: Processor,
    text: PolicyText,
    lora: LoraConfig,
    optim: burn::optim::ModuleOptimizer,
    learner: LearnerConfig,
    version: u64,
}

/// The learner's state besides adapters and optimiser, as a checkpoint stores it.
#[derive(Serialize, Deserialize)]
struct LearnerState {
    version: u64,
    lora: LoraConfig,
}

struct Sample<'a> {
    prompt: &'a Prompt,
    tokens: &'a [u32],
    old: &'a [f32],
    advantage: f64,
}

impl QwenLearner {
    /// A learner over `net` (loaded on an autodiff device): its weights frozen, adapters of
    /// `lora` attached (or those of `adapters`, a PEFT directory), version 0.
    pub fn new(
        net: Net,
        config: QwenConfig,
        processor: Processor,
        text: PolicyText,
        lora: LoraConfig,
        adapters: Option<&Path>,
        learner: LearnerConfig,
    ) -> Result<Self, QwenError> {
        let device = net.devices()[0].clone();
        let mut net = burn::module::Module::no_grad(net);
        let lora = match adapters {
            Some(dir) => lora::load_dir(&mut net, dir)?,
            None => {
                lora::attach(&mut net, &lora, &device)?;
                lora
            }
        };
        let optim = rlrig_models::rectified_flow::adamw()
            .with_grad_clipping(Some(
                burn::optim::grad_clipping::GradientClippingConfig::Norm(learner.max_grad_norm),
            ))
            .init();
        Ok(QwenLearner {
            net: Some(net),
            config,
            processor,
            text,
            lora,
            optim,
            learner,
            version: 0,
        })
    }

    fn net(&self) -> &Net {
        self.net.as_ref().expect("held between steps")
    }

    /// The adapters, as [`lora::to_bytes`] writes them.
    pub fn adapters(&self) -> Result<Vec<u8>, QwenError> {
        Ok(lora::to_bytes(self.net(), &self.lora)?)
    }

    /// `log π(tokens | prompt)` under the current adapters, without a gradient (what the
    /// Policy with the same adapters reports).
    pub fn score(&self, prompt: &Prompt, tokens: &[u32]) -> Result<Vec<f32>, QwenError> {
        let logp = burn::module::Module::valid(self.net()).token_logprobs(
            &self.config,
            prompt,
            tokens,
            self.learner.temperature,
            true,
        )?;
        logp.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| QwenError::Invalid(format!("log-probs: {e:?}")))
    }

    /// One GRPO step on a batch of groups: only the adapters change.
    pub fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, QwenError> {
        let rewards: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.samples.iter().map(|s| s.reward))
            .collect();
        let mut stats = reward_stats(&rewards, groups.len(), self.version);
        let mut prompts = Vec::new();
        let mut kept = Vec::new();
        for g in groups {
            let at = |what: &str| {
                QwenError::Invalid(format!(
                    "trajectory {} round {}: {what}",
                    g.trajectory, g.round
                ))
            };
            let (Some(image), Some(report)) = (&g.image, &g.report) else {
                return Err(at(
                    "a group without the image and report the Policy read (was the trained actor a policy?)",
                ));
            };
            let r: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
            let Some(adv) = group_advantages(&r, self.learner.grpo.scale_rewards) else {
                stats.filtered_groups += 1;
                continue;
            };
            let text = (self.text)(&g.prompt.prompt(), &report.reflection);
            prompts.push(self.processor.prompt(Some(image), &text)?);
            kept.push((g, adv));
        }
        let mut samples = Vec::new();
        for ((g, adv), prompt) in kept.iter().zip(&prompts) {
            for (s, a) in g.samples.iter().zip(adv) {
                let p = s.proposal.as_ref().ok_or_else(|| {
                    QwenError::Invalid(format!(
                        "trajectory {} round {}: a sample without an edit prompt",
                        g.trajectory, g.round
                    ))
                })?;
                if p.token_ids.is_empty() || p.token_ids.len() != p.logprobs.len() {
                    return Err(QwenError::Invalid(format!(
                        "trajectory {} round {}: a sample has {} tokens and {} log-probs",
                        g.trajectory,
                        g.round,
                        p.token_ids.len(),
                        p.logprobs.len()
                    )));
                }
                samples.push(Sample {
                    prompt,
                    tokens: &p.token_ids,
                    old: &p.logprobs,
                    advantage: *a,
                });
            }
        }
        stats.sequences = samples.len();
        if samples.is_empty() {
            return Ok(stats);
        }
        let tokens_total: usize = samples.iter().map(|s| s.tokens.len()).sum();
        let grpo = self.learner.grpo.clone();
        let t = self.learner.temperature;
        let (mut loss_sum, mut kl_sum, mut clip_sum) = (0.0, 0.0, 0.0);
        let mut accumulator = GradientsAccumulator::new();
        for s in &samples {
            let n = s.tokens.len();
            // This sequence's share of the batch's aggregation.
            let share = match grpo.loss_type {
                LossType::TokenMean => n as f64 / tokens_total as f64,
                LossType::SequenceMean => 1.0 / samples.len() as f64,
            };
            let net = self.net();
            let logp = net
                .token_logprobs(&self.config, s.prompt, s.tokens, t, true)?
                .unsqueeze_dim::<2>(0);
            let device: Device = logp.device();
            let row = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, n]), &device);
            let reference = (grpo.beta > 0.0)
                .then(|| {
                    net.token_logprobs(&self.config, s.prompt, s.tokens, t, false)
                        .map(|r| r.detach().unsqueeze_dim::<2>(0))
                })
                .transpose()?;
            let out = loss(
                logp,
                row(s.old.to_vec()),
                reference,
                &[s.advantage],
                row(vec![1.0; n]),
                &grpo,
            );
            let term = out.loss * share;
            loss_sum += f64::from(term.clone().into_scalar::<f32>());
            kl_sum += out.kl * share;
            clip_sum += out.clip_fraction * share;
            let grads = GradientsParams::from_grads(term.backward(), net);
            accumulator.accumulate(net, grads);
        }
        stats.loss = loss_sum;
        stats.kl = kl_sum;
        stats.clip_fraction = clip_sum;
        let grads = accumulator.grads();
        let net = self.net.take().expect("held between steps");
        self.net = Some(self.optim.step(self.learner.lr, net, grads));
        self.version += 1;
        stats.version = self.version;
        Ok(stats)
    }
}

impl GrpoLearner for QwenLearner {
    fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, RoleError> {
        QwenLearner::step(self, groups).map_err(|e| RoleError(e.to_string()))
    }

    fn version(&self) -> u64 {
        self.version
    }

    /// The adapters alone (safetensors bytes in PEFT's names, the LoRA settings in the
    /// metadata).
    fn update(&self) -> Result<WeightsUpdate, RoleError> {
        Ok(WeightsUpdate {
            version: self.version,
            weights: self.adapters().map_err(|e| RoleError(e.to_string()))?,
        })
    }

    /// The adapters, AdamW's moments of them and the settings ([`save_lora_learner`]).
    fn save(&self, dir: &Path) -> Result<(), RoleError> {
        let state = LearnerState {
            version: self.version,
            lora: self.lora.clone(),
        };
        save_lora_learner(dir, self.net(), &self.lora, &self.optim, &state)
    }

    fn restore(&mut self, dir: &Path) -> Result<(), RoleError> {
        let state: LearnerState = restore_lora_learner(dir, &mut self.net, &mut self.optim)?;
        if state.lora != self.lora {
            return Err(RoleError(format!(
                "restoring the learner from {}: the checkpoint's adapters ({:?}) are not this flow's ({:?})",
                dir.display(),
                state.lora,
                self.lora
            )));
        }
        self.version = state.version;
        Ok(())
    }
}
