//! The roles played by the trained networks: Diffuser, Editor, Checker and Policy (the
//! paper's Actor).

use crate::ModelError;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{
    CheckReport, CheckRequest, Checker, DenoisingChain, Diffuser, EditPolicy, EditProposal,
    EditRequest, Editor, GenerateRequest, Image, ProposeRequest, RoleError, SampledImage,
    WeightsUpdate,
};
use rlrig_world::{WorldGraph, reflect};
use serde::{Deserialize, Serialize};

use crate::checker::{checker_findings, checker_graphs};
use crate::image::{images_to_tensor, tensor_to_images};
use crate::rectified_flow::{self, SamplerConfig};
use crate::text::{EOS, Tokenizer};
use crate::vlm::CheckerNet;
use crate::vlm_policy::{Decoding, PolicyInput, PolicyNet};
use crate::{Dit, weights};

/// Settings of the neural Diffuser and Editor kinds, as flows give them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeuralSettings {
    /// The weights file (safetensors with the architecture in its metadata), relative to the
    /// working directory.
    pub weights: PathBuf,
    /// Euler steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1: conditional only).
    pub guidance: f64,
    /// Phase 2 (Editor only): steps of the SDE sampler that exploring edits use (Flow-GRPO
    /// samples its training rollouts with fewer steps than it evaluates with).
    pub explore_steps: usize,
    /// Phase 2: the SDE's noise scale `a`.
    pub noise_scale: f64,
    /// Phase 2: how many of the `explore_steps`, from the first (the noisiest), are SDE steps
    /// that the learner trains on; the rest are ODE steps, so no sampler noise is left in the
    /// image the Checker scores (Flow-GRPO-Fast's window). Absent: every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sde_window: Option<usize>,
}

impl NeuralSettings {
    /// Defaults for a model whose shipped weights are at `weights`.
    pub fn with_weights(weights: impl Into<PathBuf>) -> Self {
        NeuralSettings {
            weights: weights.into(),
            steps: 20,
            guidance: 1.0,
            explore_steps: 10,
            noise_scale: rectified_flow::SDE_NOISE_SCALE,
            sde_window: None,
        }
    }

    /// Checks the values, and that the weights file exists (its contents are checked on load).
    pub fn check(&self) -> Result<(), ModelError> {
        if !self.weights.is_file() {
            return Err(ModelError::Settings(format!(
                "weights file {} does not exist (train it with a pre-training flow, or point `weights` at one)",
                self.weights.display()
            )));
        }
        if self.steps == 0 {
            return Err(ModelError::Settings("`steps` must be at least 1".into()));
        }
        if self.explore_steps == 0 {
            return Err(ModelError::Settings(
                "`explore_steps` must be at least 1".into(),
            ));
        }
        if let Some(w) = self.sde_window
            && !(1..=self.explore_steps).contains(&w)
        {
            return Err(ModelError::Settings(format!(
                "`sde_window` = {w}: must be between 1 and `explore_steps` ({})",
                self.explore_steps
            )));
        }
        if !self.noise_scale.is_finite() || self.noise_scale <= 0.0 {
            return Err(ModelError::Settings(format!(
                "`noise_scale` = {}: must be a number > 0",
                self.noise_scale
            )));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(ModelError::Settings(format!(
                "`guidance` = {}: must be a number ≥ 0",
                self.guidance
            )));
        }
        Ok(())
    }
}

impl Default for NeuralSettings {
    fn default() -> Self {
        NeuralSettings::with_weights("weights/diffuser.safetensors")
    }
}

/// The starting noise of one request: a pure function of its seed, so that an image does not
/// depend on which batch it was sampled in.
fn noise(seeds: &[u64], c: usize, size: usize, device: &Device) -> Tensor<4> {
    let parts: Vec<Tensor<4>> = seeds
        .iter()
        .map(|&s| {
            rectified_flow::normal_tensor(
                [1, c, size, size],
                &mut ChaCha8Rng::seed_from_u64(s),
                device,
            )
        })
        .collect();
    Tensor::cat(parts, 0)
}

struct LoadedDit {
    model: Dit,
    tok: Tokenizer,
    sampler: SamplerConfig,
    /// Phase 2's SDE sampler.
    explore: SamplerConfig,
    /// Phase 2: the SDE steps of `explore` (the rest are ODE steps).
    sde_window: usize,
    /// The weights' version: 0 as loaded, then the trainer's.
    version: u64,
}

fn load(settings: &NeuralSettings, device: &str, want_cond: bool) -> Result<LoadedDit, ModelError> {
    settings.check()?;
    let device = crate::device::select(device)?;
    let model = weights::load(&settings.weights, &device)?;
    let has_cond = model.config().cond_channels() > 0;
    if has_cond != want_cond {
        return Err(ModelError::Invalid(format!(
            "{}: holds {} but this kind needs {}",
            settings.weights.display(),
            if has_cond {
                "an editor (it takes a source image)"
            } else {
                "a diffuser"
            },
            if want_cond { "an editor" } else { "a diffuser" }
        )));
    }
    let tok = Tokenizer::new(model.config().text_len);
    let sampler = SamplerConfig {
        steps: settings.steps,
        guidance: settings.guidance,
        ..SamplerConfig::default()
    };
    let explore = SamplerConfig {
        steps: settings.explore_steps,
        noise_scale: settings.noise_scale,
        ..sampler
    };
    Ok(LoadedDit {
        model,
        tok,
        sampler,
        explore,
        sde_window: settings.sde_window.unwrap_or(settings.explore_steps),
        version: 0,
    })
}

/// The trained text → image Diffuser (a rectified-flow DiT sampled with the Euler ODE sampler).
pub struct NeuralDiffuser(LoadedDit);

impl NeuralDiffuser {
    /// Loads the weights named by the settings onto `device` (`cpu`, `wgpu:N`, …).
    pub fn new(settings: &NeuralSettings, device: &str) -> Result<Self, ModelError> {
        load(settings, device, false).map(NeuralDiffuser)
    }
}

impl LoadedDit {
    /// One image per prompt, each from its own seed's noise.
    fn sample<S: AsRef<str>>(
        &self,
        prompts: &[S],
        seeds: &[u64],
        cond: Option<&[Image]>,
    ) -> Result<Vec<Image>, RoleError> {
        let err = |e: &dyn std::fmt::Display| RoleError(e.to_string());
        let device = self.model.device();
        let text = self.tok.batch(prompts, &device).map_err(|e| err(&e))?;
        let cond = cond
            .map(|images| images_to_tensor(images, &device))
            .transpose()
            .map_err(|e| err(&e))?;
        let c = self.model.config();
        let start = noise(seeds, c.out_channels, c.image_size, &device);
        let x = rectified_flow::sample_ode_from(
            &self.model,
            start,
            &text,
            cond.as_ref(),
            &self.sampler,
        );
        tensor_to_images(x).map_err(|e| err(&e))
    }
}

impl LoadedDit {
    /// Flow-GRPO's SDE sampler with `explore_steps` steps, noise scale `noise_scale` and SDE
    /// noise in the first `sde_window` of them ([`rectified_flow::sample_sde_window`]): one image and
    /// its denoising chain per prompt, each chain carrying the weights' version.
    fn explore<S: AsRef<str>>(
        &self,
        prompts: &[S],
        seeds: &[u64],
        cond: Option<&[Image]>,
    ) -> Result<Vec<SampledImage>, ModelError> {
        let device = self.model.device();
        let text = self.tok.batch(prompts, &device)?;
        let cond = cond
            .map(|images| images_to_tensor(images, &device))
            .transpose()?;
        let out = rectified_flow::sample_sde_window(
            &self.model,
            &text,
            cond.as_ref(),
            &self.explore,
            self.sde_window,
            seeds,
        );
        let images = tensor_to_images(out.images)?;
        let c = self.model.config();
        let shape = [
            c.out_channels as u32,
            c.image_size as u32,
            c.image_size as u32,
        ];
        images
            .into_iter()
            .zip(out.states.iter().zip(out.log_probs))
            .map(|(image, (states, log_probs))| {
                let chain = DenoisingChain::new(
                    self.version,
                    self.explore.noise_scale,
                    self.explore.guidance,
                    shape,
                    states,
                    log_probs,
                )
                .and_then(|chain| chain.within_schedule(self.explore.steps))
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
                Ok(SampledImage { image, chain })
            })
            .collect()
    }

    /// Loads the weights (a safetensors file's bytes of the same architecture) and takes the
    /// update's version.
    fn update(&mut self, update: &WeightsUpdate, role: &str) -> Result<(), ModelError> {
        let origin =
            std::path::PathBuf::from(format!("<{role} weights version {}>", update.version));
        let device = self.model.device();
        self.model = weights::from_bytes::<Dit>(
            update.weights.clone(),
            &origin,
            Some(self.model.config()),
            &device,
        )?;
        self.version = update.version;
        Ok(())
    }
}

impl Diffuser for NeuralDiffuser {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        let prompts: Vec<String> = batch.iter().map(|r| r.prompt.prompt()).collect();
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        self.0.sample(&prompts, &seeds, None)
    }

    /// Flow-GRPO on the generator: the Editor's exploring sampler, without a source image.
    fn generate_explore(
        &mut self,
        batch: &[GenerateRequest],
    ) -> Result<Vec<SampledImage>, RoleError> {
        let prompts: Vec<String> = batch.iter().map(|r| r.prompt.prompt()).collect();
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        self.0
            .explore(&prompts, &seeds, None)
            .map_err(|e| RoleError(format!("NeuralDiffuser: {e}")))
    }

    /// Loads the weights (a safetensors file's bytes of the same architecture) and takes the
    /// update's version.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.0
            .update(update, "diffuser")
            .map_err(|e| RoleError(format!("NeuralDiffuser: {e}")))
    }
}

/// The trained Editor (the paper's Inverse Diffuser): the same DiT family conditioned on the
/// source image (channel-concatenated) and the edit prompt.
pub struct NeuralEditor(LoadedDit);

impl NeuralEditor {
    /// Loads the weights named by the settings onto `device` (`cpu`, `wgpu:N`, …).
    pub fn new(settings: &NeuralSettings, device: &str) -> Result<Self, ModelError> {
        load(settings, device, true).map(NeuralEditor)
    }
}

impl Editor for NeuralEditor {
    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        let prompts: Vec<&str> = batch.iter().map(|r| r.edit_prompt.as_str()).collect();
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        let before: Vec<Image> = batch.iter().map(|r| r.image.clone()).collect();
        self.0.sample(&prompts, &seeds, Some(&before))
    }

    /// Flow-GRPO's SDE sampler with `explore_steps` steps, noise scale `noise_scale` and SDE
    /// noise in the first `sde_window` of them ([`rectified_flow::sample_sde_window`]); each chain
    /// carries the weights' version.
    fn edit_explore(&mut self, batch: &[EditRequest]) -> Result<Vec<SampledImage>, RoleError> {
        let prompts: Vec<&str> = batch.iter().map(|r| r.edit_prompt.as_str()).collect();
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        let before: Vec<Image> = batch.iter().map(|r| r.image.clone()).collect();
        self.0
            .explore(&prompts, &seeds, Some(&before))
            .map_err(|e| RoleError(format!("NeuralEditor: {e}")))
    }

    /// Loads the weights (a safetensors file's bytes of the same architecture) and takes the
    /// update's version.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.0
            .update(update, "editor")
            .map_err(|e| RoleError(format!("NeuralEditor: {e}")))
    }
}

/// Settings of the `neural.checker` kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckerSettings {
    /// The weights file, relative to the working directory.
    pub weights: PathBuf,
}

impl Default for CheckerSettings {
    fn default() -> Self {
        CheckerSettings {
            weights: PathBuf::from("weights/checker.safetensors"),
        }
    }
}

fn weights_exist(weights: &std::path::Path) -> Result<(), ModelError> {
    if weights.is_file() {
        Ok(())
    } else {
        Err(ModelError::Settings(format!(
            "weights file {} does not exist (train it with a pre-training flow, or point `weights` at one)",
            weights.display()
        )))
    }
}

impl CheckerSettings {
    /// Checks that the weights file exists (its contents are checked on load).
    pub fn check(&self) -> Result<(), ModelError> {
        weights_exist(&self.weights)
    }
}

/// The trained Checker: a small VLM that answers one question per prompt item and relation;
/// its verdicts give the score (the intrinsic reward) and the reflection, in the oracle's words
/// ([`rlrig_world::reflect`]).
pub struct NeuralChecker {
    net: CheckerNet,
}

impl NeuralChecker {
    /// Loads the weights onto `device` (`cpu`, `wgpu:N`, …).
    pub fn new(settings: &CheckerSettings, device: &str) -> Result<Self, ModelError> {
        settings.check()?;
        let device = crate::device::select(device)?;
        let net = weights::load_model::<CheckerNet>(&settings.weights, &device)?;
        Ok(NeuralChecker { net })
    }

    /// The network.
    pub fn net(&self) -> &CheckerNet {
        &self.net
    }
}

impl Checker for NeuralChecker {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        let graphs = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                WorldGraph::from_scene_graph(&r.prompt).map_err(|e| {
                    RoleError(format!(
                        "NeuralChecker: request {i} (prompt {:?}): {e}",
                        r.prompt.prompt()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pairs: Vec<(&WorldGraph, &Image)> = graphs
            .iter()
            .zip(batch)
            .map(|(g, r)| (g, &r.image))
            .collect();
        let findings = checker_findings(&self.net, &pairs)
            .map_err(|e| RoleError(format!("NeuralChecker: {e}")))?;
        let seen = checker_graphs(&self.net, &pairs, &findings)
            .map_err(|e| RoleError(format!("NeuralChecker: {e}")))?;
        Ok(graphs
            .iter()
            .zip(findings)
            .zip(seen)
            .zip(batch)
            .map(|(((g, f), s), r)| reflect::report(g, f).with_graph(&r.prompt, s))
            .collect())
    }
}

/// Settings of the `neural.policy` kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// The weights file, relative to the working directory.
    pub weights: PathBuf,
    /// Greedy decoding (deterministic); `false` samples.
    pub greedy: bool,
    /// Sampling temperature (the returned log-probs are under it too).
    pub temperature: f64,
    /// Sample among the `top_k` likeliest tokens (0: all).
    pub top_k: usize,
    /// The most tokens of an edit prompt, `<eos>` included.
    pub max_tokens: usize,
    /// Greedy decoding writes only edit prompts of the edit-prompt language (the likeliest
    /// token that keeps the prompt inside it; [`Decoding::grammar`]). Default true.
    pub grammar: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        let d = Decoding::default();
        PolicySettings {
            weights: PathBuf::from("weights/policy.safetensors"),
            greedy: d.greedy,
            temperature: d.temperature,
            top_k: d.top_k,
            max_tokens: d.max_tokens,
            grammar: true,
        }
    }
}

impl PolicySettings {
    /// Checks the values, and that the weights file exists.
    pub fn check(&self) -> Result<(), ModelError> {
        weights_exist(&self.weights)?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(ModelError::Settings(format!(
                "`temperature` = {}: must be above 0",
                self.temperature
            )));
        }
        if self.max_tokens == 0 {
            return Err(ModelError::Settings(
                "`max_tokens` must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// How it decodes.
    pub fn decoding(&self) -> Decoding {
        Decoding {
            greedy: self.greedy,
            temperature: self.temperature,
            top_k: self.top_k,
            max_tokens: self.max_tokens,
            grammar: self.grammar,
        }
    }
}

/// The trained Policy (the paper's Actor): a small VLM that writes the edit prompt token by
/// token from the image, the prompt and the Checker's reflection, and reports each token's
/// log-probability.
pub struct NeuralPolicy {
    net: PolicyNet,
    decoding: Decoding,
    version: u64,
}

impl NeuralPolicy {
    /// Loads the weights onto `device` (`cpu`, `wgpu:N`, …).
    pub fn new(settings: &PolicySettings, device: &str) -> Result<Self, ModelError> {
        settings.check()?;
        let device = crate::device::select(device)?;
        let net = weights::load_model::<PolicyNet>(&settings.weights, &device)?;
        Ok(NeuralPolicy {
            net,
            decoding: settings.decoding(),
            version: 0,
        })
    }

    /// The network.
    pub fn net(&self) -> &PolicyNet {
        &self.net
    }

    /// The Policy's input for a request: the image, the prompt's and the reflection's tokens.
    pub fn input(request: &ProposeRequest) -> Result<PolicyInput, ModelError> {
        PolicyInput::new(
            request.image.clone(),
            &request.prompt.prompt(),
            &request.report.reflection,
        )
    }

    /// The per-token log-probabilities of given token sequences (as
    /// [`EditProposal::token_ids`] holds them) under the current weights.
    pub fn score(
        &self,
        batch: &[ProposeRequest],
        tokens: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, RoleError> {
        let inputs = self.inputs(batch)?;
        self.net
            .score(&inputs, tokens, self.decoding.temperature)
            .map_err(|e| RoleError(format!("NeuralPolicy: {e}")))
    }

    fn inputs(&self, batch: &[ProposeRequest]) -> Result<Vec<PolicyInput>, RoleError> {
        batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Self::input(r).map_err(|e| {
                    RoleError(format!(
                        "NeuralPolicy: request {i} (prompt {:?}): {e}",
                        r.prompt.prompt()
                    ))
                })
            })
            .collect()
    }
}

impl EditPolicy for NeuralPolicy {
    /// Loads the weights (a safetensors file's bytes, of the same architecture) and takes the
    /// update's version.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        let origin =
            std::path::PathBuf::from(format!("<policy weights version {}>", update.version));
        let device = crate::weights::Architecture::device(&self.net);
        let net = weights::from_bytes::<PolicyNet>(
            update.weights.clone(),
            &origin,
            Some(crate::weights::Architecture::config(&self.net)),
            &device,
        )
        .map_err(|e| RoleError(format!("NeuralPolicy: {e}")))?;
        self.net = net;
        self.version = update.version;
        Ok(())
    }

    fn propose(&mut self, batch: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        let inputs = self.inputs(batch)?;
        let mut rngs: Vec<ChaCha8Rng> = batch
            .iter()
            .map(|r| ChaCha8Rng::seed_from_u64(r.seed))
            .collect();
        let decoded = self
            .net
            .decode(&inputs, &self.decoding, &mut rngs)
            .map_err(|e| RoleError(format!("NeuralPolicy: {e}")))?;
        let tok = Tokenizer::full(usize::MAX);
        decoded
            .into_iter()
            .map(|d| {
                let words: Vec<u32> = d.tokens.iter().copied().filter(|&t| t != EOS).collect();
                Ok(EditProposal {
                    edit_prompt: tok
                        .decode(&words)
                        .map_err(|e| RoleError(format!("NeuralPolicy: {e}")))?,
                    token_ids: d.tokens,
                    logprobs: d.logprobs,
                    policy_version: self.version,
                })
            })
            .collect()
    }
}
