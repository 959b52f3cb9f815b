//! diffusers' DDIM (η = 0) and Euler-discrete schedulers, read from `scheduler_config.json`:
//! SD's `scaled_linear` (or `linear`) β schedule, ε- or v-prediction, `leading`, `linspace` or
//! `trailing` timestep spacing with `steps_offset`.
//!
//! A [`Schedule`] is one sampling run of `n` steps: the timesteps the UNet is given, the
//! input scaling and the update of step `i`. Steps are addressed by index, not by timestep,
//! so repeated timesteps are no ambiguity.

use std::path::Path;

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::SdError;
use rlrig_hf::HfError;

/// What the UNet predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity `√ᾱ·ε − √(1−ᾱ)·x₀` (SD 2.x 768-v).
    VPrediction,
}

/// The scheduler family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `DDIMScheduler`, deterministic (η = 0).
    Ddim,
    /// `EulerDiscreteScheduler`, no churn.
    Euler,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default = "thousand")]
    num_train_timesteps: usize,
    #[serde(default = "beta_start")]
    beta_start: f64,
    #[serde(default = "beta_end")]
    beta_end: f64,
    #[serde(default = "linear_schedule")]
    beta_schedule: String,
    #[serde(default)]
    trained_betas: Option<serde_json::Value>,
    #[serde(default = "epsilon")]
    prediction_type: Prediction,
    #[serde(default = "yes")]
    set_alpha_to_one: bool,
    #[serde(default)]
    steps_offset: usize,
    #[serde(default = "linspace")]
    timestep_spacing: String,
    #[serde(default)]
    clip_sample: bool,
    #[serde(default)]
    thresholding: bool,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    rescale_betas_zero_snr: bool,
}

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.0001
}
fn beta_end() -> f64 {
    0.02
}
fn linear_schedule() -> String {
    "linear".into()
}
fn epsilon() -> Prediction {
    Prediction::Epsilon
}
fn yes() -> bool {
    true
}
fn linspace() -> String {
    "linspace".into()
}

/// How timesteps are spread over the training range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// `round(linspace(0, T−1, n))`, reversed.
    Linspace,
    /// `k·(T / n) + steps_offset`, reversed.
    Leading,
    /// `round(arange(T, 0, −T/n)) − 1`.
    Trailing,
}

/// A scheduler, as configured.
#[derive(Clone, Debug)]
pub struct Scheduler {
    /// DDIM or Euler.
    pub kind: Kind,
    /// ε or v.
    pub prediction: Prediction,
    /// Timestep spacing.
    pub spacing: Spacing,
    /// Added to leading timesteps.
    pub steps_offset: usize,
    /// DDIM: ᾱ of the step before the first is 1 (else ᾱ₀).
    pub set_alpha_to_one: bool,
    /// ᾱ_t for t = 0 … T−1.
    pub alphas_cumprod: Vec<f64>,
}

impl Scheduler {
    /// Reads a `scheduler_config.json` (`scheduler/` of a diffusers directory).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SdError> {
        let path = path.as_ref();
        let raw: RawConfig = crate::read_json(path)?;
        let bad = |message: String| {
            SdError::File(HfError::Config {
                path: path.to_owned(),
                message,
            })
        };
        let kind = match raw.class_name.as_str() {
            "DDIMScheduler" => Kind::Ddim,
            "EulerDiscreteScheduler" => Kind::Euler,
            other => {
                return Err(bad(format!(
                    "`_class_name` = {other:?}: supported are DDIMScheduler and EulerDiscreteScheduler"
                )));
            }
        };
        for (key, on) in [
            (
                "trained_betas",
                raw.trained_betas.as_ref().is_some_and(|v| !v.is_null()),
            ),
            ("clip_sample", raw.clip_sample && kind == Kind::Ddim),
            ("thresholding", raw.thresholding),
            ("use_karras_sigmas", raw.use_karras_sigmas),
            ("rescale_betas_zero_snr", raw.rescale_betas_zero_snr),
        ] {
            if on {
                return Err(bad(format!("`{key}` is not supported")));
            }
        }
        let spacing = match raw.timestep_spacing.as_str() {
            "linspace" => Spacing::Linspace,
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            other => {
                return Err(bad(format!(
                    "`timestep_spacing` = {other:?}: expected linspace, leading or trailing"
                )));
            }
        };
        let t = raw.num_train_timesteps;
        if t < 2 {
            return Err(bad("`num_train_timesteps` must be at least 2".into()));
        }
        let lin = |a: f64, b: f64| (0..t).map(move |i| a + (b - a) * i as f64 / (t - 1) as f64);
        let betas: Vec<f64> = match raw.beta_schedule.as_str() {
            "scaled_linear" => lin(raw.beta_start.sqrt(), raw.beta_end.sqrt())
                .map(|b| b * b)
                .collect(),
            "linear" => lin(raw.beta_start, raw.beta_end).collect(),
            other => {
                return Err(bad(format!(
                    "`beta_schedule` = {other:?}: expected scaled_linear or linear"
                )));
            }
        };
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(Scheduler {
            kind,
            prediction: raw.prediction_type,
            spacing,
            steps_offset: raw.steps_offset,
            set_alpha_to_one: raw.set_alpha_to_one,
            alphas_cumprod,
        })
    }

    fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The schedule of a run of `n` steps (n ≥ 1).
    pub fn schedule(&self, n: usize) -> Schedule {
        assert!(n >= 1, "a schedule needs at least one step");
        let t = self.train_steps();
        let timesteps: Vec<f64> = match self.spacing {
            Spacing::Leading => (0..n)
                .rev()
                .map(|k| (k * (t / n) + self.steps_offset) as f64)
                .collect(),
            Spacing::Linspace => {
                let v = (0..n).rev().map(|k| {
                    if n == 1 {
                        0.0
                    } else {
                        (t - 1) as f64 * k as f64 / (n - 1) as f64
                    }
                });
                match self.kind {
                    // DDIM rounds to integer timesteps; Euler interpolates between them.
                    Kind::Ddim => v.map(f64::round_ties_even).collect(),
                    Kind::Euler => v.collect(),
                }
            }
            Spacing::Trailing => (0..n)
                .map(|k| (t as f64 - k as f64 * t as f64 / n as f64).round_ties_even() - 1.0)
                .collect(),
        };
        let sigmas = match self.kind {
            Kind::Ddim => Vec::new(),
            Kind::Euler => {
                let train: Vec<f64> = self
                    .alphas_cumprod
                    .iter()
                    .map(|a| ((1.0 - a) / a).sqrt())
                    .collect();
                let mut s: Vec<f64> = timesteps.iter().map(|&x| interp(&train, x)).collect();
                s.push(0.0);
                s
            }
        };
        Schedule {
            scheduler: self.clone(),
            timesteps,
            sigmas,
            n,
        }
    }
}

/// Linear interpolation of `table` (indexed 0…len−1) at `x`, clamped at the ends.
fn interp(table: &[f64], x: f64) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    table[i] * (1.0 - f) + table[i + 1] * f
}

/// One step's result.
pub struct Step {
    /// The latents for the next step.
    pub prev_sample: Tensor<4>,
    /// The model's estimate of the clean latents.
    pub pred_original_sample: Tensor<4>,
}

/// One sampling run: `n` steps of a scheduler.
#[derive(Clone, Debug)]
pub struct Schedule {
    scheduler: Scheduler,
    n: usize,
    /// The timestep the UNet is given at each step.
    pub timesteps: Vec<f64>,
    /// Euler: σ at each step and a final 0 (`n + 1` values); DDIM: empty.
    pub sigmas: Vec<f64>,
}

impl Schedule {
    /// What the starting Gaussian noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        match self.scheduler.kind {
            Kind::Ddim => 1.0,
            Kind::Euler => {
                let max = self.sigmas.iter().copied().fold(0.0, f64::max);
                match self.scheduler.spacing {
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                    _ => max,
                }
            }
        }
    }

    /// The UNet's input at step `i`.
    pub fn scale_model_input(&self, x: Tensor<4>, i: usize) -> Tensor<4> {
        match self.scheduler.kind {
            Kind::Ddim => x,
            Kind::Euler => {
                let s = self.sigmas[i];
                x / (s * s + 1.0).sqrt()
            }
        }
    }

    /// Step `i`: from the latents `x` and the (guided) model output to the next latents.
    pub fn step(&self, out: Tensor<4>, i: usize, x: Tensor<4>) -> Step {
        let s = &self.scheduler;
        match s.kind {
            Kind::Ddim => {
                let t = self.timesteps[i] as usize;
                let prev = t as i64 - (s.train_steps() / self.n) as i64;
                let a_t = s.alphas_cumprod[t];
                let a_prev = if prev >= 0 {
                    s.alphas_cumprod[prev as usize]
                } else if s.set_alpha_to_one {
                    1.0
                } else {
                    s.alphas_cumprod[0]
                };
                let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
                let (x0, eps) = match s.prediction {
                    Prediction::Epsilon => ((x - out.clone() * sb) / sa, out),
                    Prediction::VPrediction => {
                        (x.clone() * sa - out.clone() * sb, out * sa + x * sb)
                    }
                };
                Step {
                    prev_sample: x0.clone() * a_prev.sqrt() + eps * (1.0 - a_prev).sqrt(),
                    pred_original_sample: x0,
                }
            }
            Kind::Euler => {
                let sigma = self.sigmas[i];
                let x0 = match s.prediction {
                    Prediction::Epsilon => x.clone() - out * sigma,
                    Prediction::VPrediction => {
                        let c = sigma * sigma + 1.0;
                        out * (-sigma / c.sqrt()) + x.clone() / c
                    }
                };
                let d = (x.clone() - x0.clone()) / sigma;
                Step {
                    prev_sample: x + d * (self.sigmas[i + 1] - sigma),
                    pred_original_sample: x0,
                }
            }
        }
    }
}
