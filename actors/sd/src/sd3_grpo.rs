//! Flow-GRPO (arXiv 2505.05470) for Stable Diffusion 3 through LoRA: the SDE sampler that
//! records each step's log-probability, and the learner that trains the transformer's adapters
//! with the base weights frozen.
//!
//! The SDE is Flow-GRPO's (`sd3_sde_with_logprob`), the same as rlrig's small DiT
//! ([`rlrig_models::rectified_flow::SdeStep`]) on SD3's shifted σ schedule:
//! `σ_t = a·√(σ/(1 − σ))` (with the next σ in the denominator at σ = 1),
//! `μ = x·(1 + σ_t²/(2σ)·dt) + v·(1 + σ_t²(1 − σ)/(2σ))·dt`, `x' = μ + σ_t·√(−dt)·ε`, and the
//! step's log-probability the pixel mean of the Gaussian log-density of `x'`. SDE noise is
//! drawn in the first `sde_window` steps only; the rest are Euler (ODE) steps, so the reward is
//! credited to the window's transitions. States are rounded to `f16` as they are made (the
//! stored chain reproduces its log-probabilities exactly).
//!
//! The learner scores the stored transitions under the current adapters (the ratio to the
//! stored log-probability is GRPO's importance ratio) and, with `β > 0`, under the base model
//! without adapters as the KL reference, so the base weights are held once and never copied.

use std::path::Path;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rlrig_contract::{
    DenoisingChain, GrpoGroup, GrpoLearner, LearnStats, RoleError, SampledImage, WeightsUpdate,
};
use rlrig_models::flow_grpo::{FlowLearnerConfig, chained_samples, chunk_term};
use rlrig_models::grpo::{restore_lora_learner, reward_stats, save_lora_learner};
use rlrig_models::rectified_flow::{SdeStep, adamw, gaussian_log_prob, sde_window_chains};
use serde::{Deserialize, Serialize};

use crate::SdError;
use crate::sd3::{Conditioning, Sd3Pipeline};
use rlrig_hf::lora::{self, LoraConfig};

/// How the exploring sampler runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ExploreConfig {
    /// Steps of the schedule.
    pub steps: usize,
    /// The first steps that draw SDE noise (the rest are Euler steps).
    pub sde_window: usize,
    /// The SDE's noise scale `a` (Flow-GRPO: 0.7).
    pub noise_scale: f64,
    /// Classifier-free guidance scale (1: none).
    pub guidance: f64,
    /// Zero T5 tokens after the CLIP tokens.
    pub max_sequence_length: usize,
}

/// The σ of an `n`-step run as `f64` (diffusers' `f32` values).
fn levels(p: &Sd3Pipeline, n: usize) -> (Vec<f64>, Vec<f64>) {
    let s = p.scheduler.schedule(n);
    (
        s.sigmas.iter().map(|&v| f64::from(v)).collect(),
        s.timesteps.iter().map(|&v| f64::from(v)).collect(),
    )
}

/// Conditioning and (with guidance) the unconditional branch's.
fn conditioning(
    p: &Sd3Pipeline,
    prompts: &[&str],
    negative: &[&str],
    guidance: f64,
    max_sequence_length: usize,
    device: &Device,
) -> Result<(Conditioning, Option<Conditioning>), SdError> {
    let cond = p.encode(prompts, max_sequence_length, device)?;
    let uncond = (guidance > 1.0)
        .then(|| p.encode(negative, max_sequence_length, device))
        .transpose()?;
    Ok((cond, uncond))
}

/// Samples one image per prompt along Flow-GRPO's SDE, each row's noise (start and steps) from
/// `ChaCha8Rng::seed_from_u64(seeds[i])`, and answers the images with their chains (weights
/// `version`). `latent`: the latent side.
#[allow(clippy::too_many_arguments)]
pub fn explore(
    p: &Sd3Pipeline,
    prompts: &[&str],
    negative: &[&str],
    seeds: &[u64],
    latent: usize,
    config: &ExploreConfig,
    version: u64,
    device: &Device,
) -> Result<Vec<SampledImage>, SdError> {
    let b = prompts.len();
    assert_eq!(seeds.len(), b, "one seed per prompt");
    if !(1..=config.steps).contains(&config.sde_window) {
        return Err(SdError::Settings(format!(
            "`sde_window` = {}: 1 to the {} exploring steps",
            config.sde_window, config.steps
        )));
    }
    let c = p.transformer.in_channels();
    let (cond, uncond) = conditioning(
        p,
        prompts,
        negative,
        config.guidance,
        config.max_sequence_length,
        device,
    )?;
    let (sigmas, timesteps) = levels(p, config.steps);
    let out = sde_window_chains(
        [c, latent, latent],
        seeds,
        &sigmas,
        config.noise_scale,
        config.sde_window,
        device,
        |x, step| p.velocity(x, timesteps[step], &cond, uncond.as_ref(), config.guidance),
    );
    let (x, states, log_probs) = (out.images, out.states, out.log_probs);
    let images = crate::images::to_images(p.finish(x).images)
        .map_err(|e| SdError::Settings(e.to_string()))?;
    let dims = [c as u32, latent as u32, latent as u32];
    images
        .into_iter()
        .zip(states.iter().zip(log_probs))
        .map(|(image, (states, log_probs))| {
            let chain = DenoisingChain::new(
                version,
                config.noise_scale,
                config.guidance,
                dims,
                states,
                log_probs,
            )
            .and_then(|chain| chain.within_schedule(config.steps))
            .map_err(|e| SdError::Settings(e.to_string()))?;
            Ok(SampledImage { image, chain })
        })
        .collect()
}

/// One generated image of a group, as the learner reads it.
struct Sample<'a> {
    prompt: String,
    chain: &'a DenoisingChain,
    advantage: f64,
}

/// The Flow-GRPO learner of `diffuser.sd3`: the pipeline on an autodiff device with the
/// transformer's base weights frozen and LoRA adapters trained by AdamW with gradient clipping.
pub struct Sd3FlowLearner {
    /// Always `Some` between calls (the optimiser's step consumes the transformer).
    pipeline: Option<Sd3Pipeline>,
    lora: LoraConfig,
    optim: burn::optim::ModuleOptimizer,
    config: FlowLearnerConfig,
    negative: String,
    max_sequence_length: usize,
    version: u64,
}

/// The learner's state besides adapters and optimiser, as a checkpoint stores it.
#[derive(Serialize, Deserialize)]
struct LearnerState {
    version: u64,
    lora: LoraConfig,
}

impl Sd3FlowLearner {
    /// A learner over `pipeline` (loaded on an autodiff device): the transformer's weights are
    /// frozen, adapters of `lora` attached (or `adapters`, a PEFT directory, loaded), version 0.
    pub fn new(
        pipeline: Sd3Pipeline,
        lora: LoraConfig,
        adapters: Option<&Path>,
        config: FlowLearnerConfig,
        negative: String,
        max_sequence_length: usize,
    ) -> Result<Self, SdError> {
        let mut pipeline = pipeline;
        let device = pipeline.vae.devices()[0].clone();
        pipeline.transformer = pipeline.transformer.no_grad();
        let lora = match adapters {
            Some(dir) => lora::load_dir(&mut pipeline.transformer, dir)?,
            None => {
                lora::attach(&mut pipeline.transformer, &lora, &device)?;
                lora
            }
        };
        let optim = adamw()
            .with_grad_clipping(Some(
                burn::optim::grad_clipping::GradientClippingConfig::Norm(config.max_grad_norm),
            ))
            .init();
        Ok(Sd3FlowLearner {
            pipeline: Some(pipeline),
            lora,
            optim,
            config,
            negative,
            max_sequence_length,
            version: 0,
        })
    }

    fn pipe(&self) -> &Sd3Pipeline {
        self.pipeline.as_ref().expect("held between steps")
    }

    /// The adapters, as [`lora::to_bytes`] writes them.
    pub fn adapters(&self) -> Result<Vec<u8>, SdError> {
        Ok(lora::to_bytes(&self.pipe().transformer, &self.lora)?)
    }

    /// The log-probability of each stored step of `chains` (one per prompt) under the current
    /// adapters: what the learner's importance ratio divides by the stored values.
    pub fn score(
        &self,
        prompts: &[&str],
        chains: &[&DenoisingChain],
    ) -> Result<Vec<Vec<f32>>, SdError> {
        let samples: Vec<Sample> = prompts
            .iter()
            .zip(chains)
            .map(|(p, c)| Sample {
                prompt: p.to_string(),
                chain: c,
                advantage: 0.0,
            })
            .collect();
        let (logp, _) = self.log_probs(&samples)?;
        let [_, k] = logp.dims();
        let v: Vec<f32> = logp.into_data().iter::<f32>().collect();
        Ok(v.chunks(k.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// The transformer (with its adapters), e.g. to compare outputs with and without them.
    pub fn transformer(&self) -> &crate::mmdit::Mmdit {
        &self.pipe().transformer
    }

    /// Per-step log-probabilities `(B, K)` of the stored chains under the current adapters,
    /// with a gradient, and the steps' KL to the base model `(B, K)` when `β > 0`.
    fn log_probs(&self, samples: &[Sample]) -> Result<(Tensor<2>, Option<Tensor<2>>), SdError> {
        let p = self.pipe();
        let first = samples[0].chain;
        let (steps, schedule) = (first.steps(), first.schedule_steps());
        let c = p.transformer.in_channels() as u32;
        if let Some(s) = samples
            .iter()
            .find(|s| s.chain.shape[0] != c || s.chain.shape[1] != s.chain.shape[2])
        {
            return Err(SdError::Settings(format!(
                "a chain of {:?} states does not fit this transformer's {c} latent channels",
                s.chain.shape
            )));
        }
        let device = p.vae.devices()[0].clone();
        let prompts: Vec<&str> = samples.iter().map(|s| s.prompt.as_str()).collect();
        let negative = vec![self.negative.as_str(); samples.len()];
        let (cond, uncond) = conditioning(
            p,
            &prompts,
            &negative,
            first.guidance,
            self.max_sequence_length,
            &device,
        )?;
        let (sigmas, timesteps) = levels(p, schedule);
        let shape = first.shape.map(|d| d as usize);
        let dims = [samples.len(), shape[0], shape[1], shape[2]];
        let batches: Vec<Vec<f32>> = (0..=steps)
            .map(|k| samples.iter().flat_map(|s| s.chain.state(k)).collect())
            .collect();
        let state =
            |k: usize| Tensor::<4>::from_data(TensorData::new(batches[k].clone(), dims), &device);
        let velocity = |x: Tensor<4>, t: f64, with_lora: bool| {
            let forward = |x: Tensor<4>, c: &Conditioning| {
                p.transformer
                    .forward_with(x, &[t], c.states.clone(), c.pooled.clone(), with_lora)
            };
            match &uncond {
                Some(u) => {
                    let out = forward(
                        Tensor::cat(vec![x.clone(), x], 0),
                        &u.clone().cat(cond.clone()),
                    );
                    let mut halves = out.chunk(2, 0);
                    let cv = halves.pop().expect("two halves");
                    let uv = halves.pop().expect("two halves");
                    uv.clone() + (cv - uv) * first.guidance
                }
                None => forward(x, &cond),
            }
        };
        let mut logps = Vec::with_capacity(steps);
        let mut kls = Vec::with_capacity(steps);
        for (k, &t) in timesteps.iter().enumerate().take(steps) {
            let coef = SdeStep::on(&sigmas, k, first.noise_scale);
            let x = state(k);
            let mean = coef.mean(x.clone(), velocity(x.clone(), t, true));
            logps.push(gaussian_log_prob(state(k + 1), mean.clone(), coef.std));
            if self.config.grpo.beta > 0.0 {
                let base = coef.mean(x.clone(), velocity(x, t, false)).detach();
                kls.push(coef.kl(mean, base));
            }
        }
        let kl = (!kls.is_empty()).then(|| Tensor::stack(kls, 1));
        Ok((Tensor::stack(logps, 1), kl))
    }

    /// One Flow-GRPO step on a batch of groups: only the adapters change.
    pub fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, SdError> {
        let rewards: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.samples.iter().map(|s| s.reward))
            .collect();
        let mut stats = reward_stats(&rewards, groups.len(), self.version);
        let mut samples = Vec::new();
        let chained = chained_samples(groups, &self.config, &mut stats)
            .map_err(|e| SdError::Settings(e.to_string()))?;
        for (g, s, chain, advantage) in chained {
            if g.image.is_some() || s.proposal.is_some() {
                return Err(SdError::Settings(format!(
                    "trajectory {} round {}: an edit; diffuser.sd3 learns from generated images",
                    g.trajectory, g.round
                )));
            }
            samples.push(Sample {
                prompt: g.prompt.prompt(),
                chain,
                advantage,
            });
        }
        stats.sequences = samples.len();
        if samples.is_empty() {
            return Ok(stats);
        }
        let first = samples[0].chain;
        if let Some(s) = samples.iter().find(|s| {
            s.chain.steps() != first.steps()
                || s.chain.schedule_steps() != first.schedule_steps()
                || s.chain.noise_scale != first.noise_scale
                || s.chain.guidance != first.guidance
                || s.chain.shape != first.shape
        }) {
            return Err(SdError::Settings(format!(
                "chains sampled with different samplers in one batch ({} of {} steps, a = {}, guidance {}, {:?} vs {} of {} steps, a = {}, guidance {}, {:?})",
                s.chain.steps(),
                s.chain.schedule_steps(),
                s.chain.noise_scale,
                s.chain.guidance,
                s.chain.shape,
                first.steps(),
                first.schedule_steps(),
                first.noise_scale,
                first.guidance,
                first.shape
            )));
        }
        let mut accumulator = GradientsAccumulator::new();
        for chunk in samples.chunks(self.config.micro_batch.max(1)) {
            let share = chunk.len() as f64 / samples.len() as f64;
            let (logp, kl) = self.log_probs(chunk)?;
            let chains: Vec<&DenoisingChain> = chunk.iter().map(|s| s.chain).collect();
            let advantages: Vec<f64> = chunk.iter().map(|s| s.advantage).collect();
            let term = chunk_term(
                logp,
                kl,
                &chains,
                &advantages,
                share,
                &self.config.grpo,
                &mut stats,
            );
            let transformer = &self.pipe().transformer;
            let grads = GradientsParams::from_grads(term.backward(), transformer);
            accumulator.accumulate(transformer, grads);
        }
        let grads = accumulator.grads();
        let mut p = self.pipeline.take().expect("held between steps");
        p.transformer = self.optim.step(self.config.lr, p.transformer, grads);
        self.pipeline = Some(p);
        self.version += 1;
        stats.version = self.version;
        Ok(stats)
    }
}

impl GrpoLearner for Sd3FlowLearner {
    fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, RoleError> {
        Sd3FlowLearner::step(self, groups).map_err(|e| RoleError(e.to_string()))
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
        save_lora_learner(
            dir,
            &self.pipe().transformer,
            &self.lora,
            &self.optim,
            &state,
        )
    }

    fn restore(&mut self, dir: &Path) -> Result<(), RoleError> {
        let mut p = self.pipeline.take().expect("held between steps");
        let mut transformer = Some(p.transformer);
        let restored: Result<LearnerState, RoleError> =
            restore_lora_learner(dir, &mut transformer, &mut self.optim);
        p.transformer = transformer.expect("given back");
        self.pipeline = Some(p);
        self.version = restored?.version;
        Ok(())
    }
}
