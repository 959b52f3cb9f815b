//! The pipelines as rlrig roles: `diffuser.sd` and `diffuser.sd3` (text to image) and
//! `editor.instruct-pix2pix` (image and edit prompt to image). A request's seed gives its starting noise (ChaCha8,
//! Box–Muller), so a run is reproducible whatever the batch it falls in.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use rlrig_contract::{
    Diffuser, EditRequest, Editor, GenerateRequest, Image, RoleError, SampledImage, WeightsUpdate,
};
use rlrig_models::flow_grpo::FlowLearnerConfig;
use serde::{Deserialize, Serialize};

use crate::SdError;
use crate::clip::ClipTextModel;
use crate::images::{from_image, noise, to_images};
use crate::pipeline::Pipeline;
use crate::scheduler::Scheduler;
use crate::sd3::{Sd3Pipeline, T5};
use crate::sd3_grpo::{ExploreConfig, Sd3FlowLearner, explore};
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet;
use crate::vae::Vae;
use rlrig_hf::lora::{self, LoraConfig};

/// Settings of both kinds, as flows give them. Paths are relative to the flow file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdSettings {
    /// A diffusers pipeline directory (`tokenizer/`, `text_encoder/`, `unet/`, `vae/`,
    /// `scheduler/`).
    pub path: PathBuf,
    /// Another `unet/` directory (e.g. an InstructPix2Pix UNet beside SD's other parts).
    #[serde(default)]
    pub unet: Option<PathBuf>,
    /// Another `scheduler/` directory.
    #[serde(default)]
    pub scheduler: Option<PathBuf>,
    /// `fp16` to load `diffusion_pytorch_model.fp16.safetensors` (widened to f32).
    #[serde(default)]
    pub variant: Option<String>,
    /// Sampling steps.
    #[serde(default = "steps")]
    pub steps: usize,
    /// Classifier-free guidance scale (1: none).
    #[serde(default = "guidance")]
    pub guidance: f64,
    /// Editor only: InstructPix2Pix's image guidance scale.
    #[serde(default = "image_guidance")]
    pub image_guidance: f64,
    /// Diffuser only: the negative prompt.
    #[serde(default)]
    pub negative_prompt: String,
}

fn steps() -> usize {
    20
}
fn guidance() -> f64 {
    7.5
}
fn image_guidance() -> f64 {
    1.5
}

impl SdSettings {
    /// Checks the numbers (what `rlrig validate` can check without the flow's directory).
    pub fn check(&self) -> Result<(), SdError> {
        if self.steps == 0 {
            return Err(SdError::Settings("`steps` must be at least 1".into()));
        }
        if self.guidance < 0.0 || self.image_guidance < 0.0 {
            return Err(SdError::Settings(
                "guidance scales must not be negative".into(),
            ));
        }
        Ok(())
    }

    /// Checks that the directories exist (`base`: the flow file's directory).
    pub fn check_paths(&self, base: &Path) -> Result<(), SdError> {
        for (key, p) in [
            ("path", Some(&self.path)),
            ("unet", self.unet.as_ref()),
            ("scheduler", self.scheduler.as_ref()),
        ] {
            if let Some(p) = p
                && !base.join(p).is_dir()
            {
                return Err(SdError::Settings(format!(
                    "`{key}`: {} is not a directory",
                    base.join(p).display()
                )));
            }
        }
        Ok(())
    }

    fn load(&self, base: &Path, device: &Device) -> Result<Pipeline, SdError> {
        let root = base.join(&self.path);
        let unet_dir = self
            .unet
            .as_ref()
            .map_or_else(|| root.join("unet"), |u| base.join(u));
        let sched_dir = self
            .scheduler
            .as_ref()
            .map_or_else(|| root.join("scheduler"), |s| base.join(s));
        Ok(Pipeline {
            tokenizer: ClipTokenizer::from_dir(root.join("tokenizer"))?,
            text_encoder: ClipTextModel::from_dir(root.join("text_encoder"), device)?,
            unet: UNet::from_dir(unet_dir, self.variant.as_deref(), device)?,
            vae: Vae::from_dir(root.join("vae"), device)?,
            scheduler: Scheduler::from_file(sched_dir.join("scheduler_config.json"))?,
        })
    }
}

fn role_err(e: SdError) -> RoleError {
    RoleError(e.to_string())
}

/// A pipeline loaded for one of the kinds, with its settings and device.
struct LoadedPipeline {
    pipeline: Pipeline,
    settings: SdSettings,
    device: Device,
}

impl LoadedPipeline {
    /// Checks the settings, loads the pipeline (`base`: the flow file's directory) and
    /// refuses a UNet that does not take `channels` input channels.
    fn new(
        kind: &str,
        channels: usize,
        hint: &str,
        settings: &SdSettings,
        base: &Path,
        device: &Device,
    ) -> Result<Self, SdError> {
        settings.check()?;
        settings.check_paths(base)?;
        let pipeline = settings.load(base, device)?;
        let got = pipeline.unet.in_channels();
        if got != channels {
            return Err(SdError::Settings(format!(
                "{kind}: the UNet takes {got} channels, not {channels} ({hint})"
            )));
        }
        Ok(LoadedPipeline {
            pipeline,
            settings: settings.clone(),
            device: device.clone(),
        })
    }
}

/// `diffuser.sd`: Stable Diffusion text to image at the UNet's `sample_size`.
pub struct SdDiffuser(LoadedPipeline);

impl SdDiffuser {
    /// Loads the pipeline (`base`: the flow file's directory).
    pub fn new(settings: &SdSettings, base: &Path, device: &Device) -> Result<Self, SdError> {
        let hint = "an InstructPix2Pix UNet? use editor.instruct-pix2pix";
        LoadedPipeline::new("diffuser.sd", 4, hint, settings, base, device).map(SdDiffuser)
    }
}

impl Diffuser for SdDiffuser {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        let size = self.0.pipeline.unet.sample_size();
        let latents = Tensor::cat(
            batch
                .iter()
                .map(|r| noise(r.seed, 4, size, size, &self.0.device))
                .collect(),
            0,
        );
        let prompts: Vec<String> = batch.iter().map(|r| r.prompt.prompt()).collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let negative = vec![self.0.settings.negative_prompt.as_str(); batch.len()];
        let out = self
            .0
            .pipeline
            .generate(
                &prompts,
                &negative,
                latents,
                self.0.settings.steps,
                self.0.settings.guidance,
            )
            .map_err(role_err)?;
        to_images(out.images)
    }
}

/// `editor.instruct-pix2pix`: InstructPix2Pix image editing.
pub struct Ip2pEditor(LoadedPipeline);

impl Ip2pEditor {
    /// Loads the pipeline (`base`: the flow file's directory); its UNet must take 8 channels.
    pub fn new(settings: &SdSettings, base: &Path, device: &Device) -> Result<Self, SdError> {
        let hint = "noisy and source latents";
        LoadedPipeline::new("editor.instruct-pix2pix", 8, hint, settings, base, device)
            .map(Ip2pEditor)
    }
}

impl Editor for Ip2pEditor {
    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        let factor = self.0.pipeline.vae.downscale();
        let mut out = Vec::with_capacity(batch.len());
        // One at a time: images of a batch may differ in size.
        for r in batch {
            let (w, h) = (r.image.width() as usize, r.image.height() as usize);
            if w % factor != 0 || h % factor != 0 {
                return Err(RoleError(format!(
                    "editor.instruct-pix2pix: a {w}x{h} image is not a multiple of the VAE's {factor}"
                )));
            }
            let latents = noise(r.seed, 4, h / factor, w / factor, &self.0.device);
            let img = from_image(&r.image, &self.0.device);
            let g = self
                .0
                .pipeline
                .edit(
                    &[r.edit_prompt.as_str()],
                    img,
                    latents,
                    self.0.settings.steps,
                    self.0.settings.guidance,
                    self.0.settings.image_guidance,
                )
                .map_err(role_err)?;
            out.extend(to_images(g.images)?);
        }
        Ok(out)
    }
}

/// Settings of `diffuser.sd3`, as flows give them. Paths are relative to the flow file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sd3Settings {
    /// A diffusers `StableDiffusion3Pipeline` directory.
    pub path: PathBuf,
    /// Sampling steps.
    #[serde(default = "sd3_steps")]
    pub steps: usize,
    /// Classifier-free guidance scale (1: none).
    #[serde(default = "sd3_guidance")]
    pub guidance: f64,
    /// The negative prompt.
    #[serde(default)]
    pub negative_prompt: String,
    /// Zero T5 tokens after the CLIP tokens (diffusers' `max_sequence_length`).
    #[serde(default = "sd3_max_sequence_length")]
    pub max_sequence_length: usize,
    /// `"auto"` (the default) runs the directory's T5 encoder when it lists one, zero T5 states
    /// otherwise; `"zeros"` never runs T5 (less memory).
    #[serde(default = "auto")]
    pub t5: String,
    /// Image side in pixels (default: the transformer's `sample_size` × the VAE's factor).
    #[serde(default)]
    pub size: Option<usize>,
    /// Flow-GRPO: steps of the exploring SDE sampler (default `steps`).
    #[serde(default)]
    pub explore_steps: Option<usize>,
    /// Flow-GRPO: the first exploring steps that draw SDE noise (default all).
    #[serde(default)]
    pub sde_window: Option<usize>,
    /// Flow-GRPO: the SDE's noise scale `a`.
    #[serde(default = "noise_scale")]
    pub noise_scale: f64,
    /// LoRA rank of the trained adapters.
    #[serde(default = "lora_rank")]
    pub lora_rank: usize,
    /// LoRA `α` (the adapters' term is scaled by `α / rank`).
    #[serde(default = "lora_alpha")]
    pub lora_alpha: f64,
    /// The transformer's projections that get adapters (PEFT's `target_modules`).
    #[serde(default = "lora_targets")]
    pub lora_targets: Vec<String>,
    /// A PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`) to start
    /// from, for generation and training.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
}

fn noise_scale() -> f64 {
    0.7
}
fn lora_rank() -> usize {
    4
}
fn lora_alpha() -> f64 {
    4.0
}
fn lora_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0"]
        .map(String::from)
        .to_vec()
}

fn sd3_steps() -> usize {
    28
}
fn sd3_guidance() -> f64 {
    7.0
}
fn sd3_max_sequence_length() -> usize {
    256
}
fn auto() -> String {
    "auto".into()
}

impl Sd3Settings {
    /// Checks the numbers and names (what `rlrig validate` can check without the directory).
    pub fn check(&self) -> Result<(), SdError> {
        if self.steps == 0 {
            return Err(SdError::Settings("`steps` must be at least 1".into()));
        }
        if self.guidance < 0.0 {
            return Err(SdError::Settings("`guidance` must not be negative".into()));
        }
        let explore = self.explore_config();
        if explore.steps == 0 || !(1..=explore.steps).contains(&explore.sde_window) {
            return Err(SdError::Settings(format!(
                "`sde_window` = {}: 1 to the {} exploring steps",
                explore.sde_window, explore.steps
            )));
        }
        if self.noise_scale.is_nan() || self.noise_scale <= 0.0 {
            return Err(SdError::Settings("`noise_scale` must be positive".into()));
        }
        if self.lora_rank == 0 || self.lora_targets.is_empty() {
            return Err(SdError::Settings(
                "`lora_rank` must be at least 1 and `lora_targets` name a projection".into(),
            ));
        }
        self.t5_mode()?;
        Ok(())
    }

    fn explore_config(&self) -> ExploreConfig {
        let steps = self.explore_steps.unwrap_or(self.steps);
        ExploreConfig {
            steps,
            sde_window: self.sde_window.unwrap_or(steps),
            noise_scale: self.noise_scale,
            guidance: self.guidance,
            max_sequence_length: self.max_sequence_length,
        }
    }

    /// The LoRA settings of trained adapters.
    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_rank,
            lora_alpha: self.lora_alpha,
            target_modules: self.lora_targets.clone().into(),
        }
    }

    /// Loads the pipeline named by `path` (`base`: the flow file's directory), with the
    /// starting adapter when one is named.
    fn load(&self, base: &Path, device: &Device) -> Result<Sd3Pipeline, SdError> {
        self.check()?;
        let root = base.join(&self.path);
        if !root.is_dir() {
            return Err(SdError::Settings(format!(
                "`path`: {} is not a directory",
                root.display()
            )));
        }
        let mut pipeline = Sd3Pipeline::from_dir(&root, self.t5_mode()?, device)?;
        if let Some(dir) = &self.adapter {
            lora::load_dir(&mut pipeline.transformer, &base.join(dir))?;
        }
        Ok(pipeline)
    }

    /// The Flow-GRPO learner of these settings' pipeline on `device` (an autodiff device):
    /// fresh adapters of [`lora`](Self::lora), or the starting `adapter`.
    pub fn learner(
        &self,
        base: &Path,
        device: &Device,
        config: FlowLearnerConfig,
    ) -> Result<Sd3FlowLearner, SdError> {
        let root = base.join(&self.path);
        let pipeline = Sd3Pipeline::from_dir(&root, self.t5_mode()?, device)?;
        self.check()?;
        let adapter = self.adapter.as_ref().map(|d| base.join(d));
        Sd3FlowLearner::new(
            pipeline,
            self.lora(),
            adapter.as_deref(),
            config,
            self.negative_prompt.clone(),
            self.max_sequence_length,
        )
    }

    fn t5_mode(&self) -> Result<T5, SdError> {
        match self.t5.as_str() {
            "auto" => Ok(T5::Auto),
            "zeros" => Ok(T5::Zeros),
            other => Err(SdError::Settings(format!(
                "`t5` = {other:?}: \"auto\" or \"zeros\""
            ))),
        }
    }
}

/// `diffuser.sd3`: Stable Diffusion 3 text to image (two CLIPs and T5).
pub struct Sd3Diffuser {
    pipeline: Sd3Pipeline,
    settings: Sd3Settings,
    latent: usize,
    device: Device,
    version: u64,
}

impl Sd3Diffuser {
    /// Loads the pipeline (`base`: the flow file's directory) and checks the image size
    /// against the VAE's factor, the patch size and the position grid.
    pub fn new(settings: &Sd3Settings, base: &Path, device: &Device) -> Result<Self, SdError> {
        let pipeline = settings.load(base, device)?;
        let factor = pipeline.vae.downscale();
        let t = &pipeline.transformer;
        let size = settings.size.unwrap_or_else(|| pipeline.default_size());
        let step = factor * t.patch_size();
        let largest = t.max_patches() * step;
        if size == 0 || !size.is_multiple_of(step) || size > largest {
            return Err(SdError::Settings(format!(
                "`size` = {size}: a multiple of {step} (VAE factor × patch) up to {largest} (the position grid)"
            )));
        }
        Ok(Sd3Diffuser {
            latent: size / factor,
            pipeline,
            settings: settings.clone(),
            device: device.clone(),
            version: 0,
        })
    }
}

impl Diffuser for Sd3Diffuser {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        let (c, s) = (self.pipeline.transformer.in_channels(), self.latent);
        let latents = Tensor::cat(
            batch
                .iter()
                .map(|r| noise(r.seed, c, s, s, &self.device))
                .collect(),
            0,
        );
        let prompts: Vec<String> = batch.iter().map(|r| r.prompt.prompt()).collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let negative = vec![self.settings.negative_prompt.as_str(); batch.len()];
        let out = self
            .pipeline
            .generate(
                &prompts,
                &negative,
                latents,
                self.settings.steps,
                self.settings.guidance,
                self.settings.max_sequence_length,
            )
            .map_err(role_err)?;
        to_images(out.images)
    }

    /// Flow-GRPO's SDE sampler (`explore_steps`, `sde_window`, `noise_scale`): each image with
    /// its denoising chain and per-step log-probabilities.
    fn generate_explore(
        &mut self,
        batch: &[GenerateRequest],
    ) -> Result<Vec<SampledImage>, RoleError> {
        let prompts: Vec<String> = batch.iter().map(|r| r.prompt.prompt()).collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let negative = vec![self.settings.negative_prompt.as_str(); batch.len()];
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        explore(
            &self.pipeline,
            &prompts,
            &negative,
            &seeds,
            self.latent,
            &self.settings.explore_config(),
            self.version,
            &self.device,
        )
        .map_err(role_err)
    }

    /// Takes the learner's adapters (the bytes of [`lora::to_bytes`]) and their version.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        let origin = PathBuf::from(format!("<adapters version {}>", update.version));
        lora::from_bytes(
            &mut self.pipeline.transformer,
            &update.weights,
            None,
            &origin,
        )
        .map_err(|e| role_err(e.into()))?;
        self.version = update.version;
        Ok(())
    }
}
