//! The Diffuser and Editor roles played by the trained networks.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{Diffuser, EditRequest, Editor, GenerateRequest, Image, RoleError};
use serde::{Deserialize, Serialize};

use crate::flow::{self, SamplerConfig};
use crate::image::{images_to_tensor, tensor_to_images};
use crate::text::Tokenizer;
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
}

impl NeuralSettings {
    /// Defaults for a model whose shipped weights are at `weights`.
    pub fn with_weights(weights: impl Into<PathBuf>) -> Self {
        NeuralSettings {
            weights: weights.into(),
            steps: 20,
            guidance: 1.0,
        }
    }

    /// Checks the values, and that the weights file exists (its contents are checked on load).
    pub fn check(&self) -> Result<(), String> {
        if !self.weights.is_file() {
            return Err(format!(
                "weights file {} does not exist (train it with a pre-training flow, or point `weights` at one)",
                self.weights.display()
            ));
        }
        if self.steps == 0 {
            return Err("`steps` must be at least 1".into());
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(format!(
                "`guidance` = {}: must be a number ≥ 0",
                self.guidance
            ));
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
            flow::normal_tensor(
                [1, c, size, size],
                &mut ChaCha8Rng::seed_from_u64(s),
                device,
            )
        })
        .collect();
    Tensor::cat(parts, 0)
}

struct Loaded {
    model: Dit,
    tok: Tokenizer,
    sampler: SamplerConfig,
}

fn load(settings: &NeuralSettings, want_cond: bool) -> Result<Loaded, String> {
    settings.check()?;
    let device = Device::flex();
    let model = weights::load(&settings.weights, &device).map_err(|e| e.to_string())?;
    let has_cond = model.config().cond_channels() > 0;
    if has_cond != want_cond {
        return Err(format!(
            "{}: holds {} but this kind needs {}",
            settings.weights.display(),
            if has_cond {
                "an editor (it takes a source image)"
            } else {
                "a diffuser"
            },
            if want_cond { "an editor" } else { "a diffuser" }
        ));
    }
    let tok = Tokenizer::new(model.config().text_len);
    let sampler = SamplerConfig {
        steps: settings.steps,
        guidance: settings.guidance,
        ..SamplerConfig::default()
    };
    Ok(Loaded {
        model,
        tok,
        sampler,
    })
}

/// The trained text → image Diffuser (a rectified-flow DiT sampled with the Euler ODE sampler).
pub struct NeuralDiffuser(Loaded);

impl NeuralDiffuser {
    /// Loads the weights named by the settings.
    pub fn new(settings: &NeuralSettings) -> Result<Self, String> {
        load(settings, false).map(NeuralDiffuser)
    }
}

impl Loaded {
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
        let x = flow::sample_ode_from(&self.model, start, &text, cond.as_ref(), &self.sampler);
        tensor_to_images(x).map_err(|e| err(&e))
    }
}

impl Diffuser for NeuralDiffuser {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        let prompts: Vec<String> = batch.iter().map(|r| r.prompt.prompt()).collect();
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        self.0.sample(&prompts, &seeds, None)
    }
}

/// The trained Editor (the paper's Inverse Diffuser): the same DiT family conditioned on the
/// source image (channel-concatenated) and the edit prompt.
pub struct NeuralEditor(Loaded);

impl NeuralEditor {
    /// Loads the weights named by the settings.
    pub fn new(settings: &NeuralSettings) -> Result<Self, String> {
        load(settings, true).map(NeuralEditor)
    }
}

impl Editor for NeuralEditor {
    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        let prompts: Vec<&str> = batch.iter().map(|r| r.edit_prompt.as_str()).collect();
        let seeds: Vec<u64> = batch.iter().map(|r| r.seed).collect();
        let before: Vec<Image> = batch.iter().map(|r| r.image.clone()).collect();
        self.0.sample(&prompts, &seeds, Some(&before))
    }
}
