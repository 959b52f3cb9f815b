//! `FlowMatchEulerDiscreteScheduler`: the rectified-flow schedule of Stable Diffusion 3.
//!
//! The sample at noise level σ is `x_σ = (1 − σ)·x₀ + σ·ε`; the transformer predicts the
//! velocity `v = ε − x₀`, and an Euler step is `x_{σ'} = x_σ + (σ' − σ)·v`. The σ of `n` steps
//! are spread linearly from σ_max to σ_min and bent toward noise by the shift `s`:
//! `σ ↦ s·σ / (1 + (s − 1)·σ)`; the timestep the transformer sees is `1000·σ`. Computed as
//! diffusers computes it (including σ_min, which is itself the shifted last training σ).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::SdError;
use rlrig_hf::HfError;

#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default = "thousand")]
    num_train_timesteps: usize,
    #[serde(default = "one")]
    shift: f64,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

fn thousand() -> usize {
    1000
}
fn one() -> f64 {
    1.0
}

/// Why a config key is refused: unknown, or a feature this port does not have turned on.
fn refused(key: &str, value: &serde_json::Value) -> Option<String> {
    let off = match key {
        // Only read when dynamic shifting is on.
        "base_shift" | "max_shift" | "base_image_seq_len" | "max_image_seq_len"
        | "time_shift_type" => return None,
        "use_dynamic_shifting"
        | "invert_sigmas"
        | "use_karras_sigmas"
        | "use_exponential_sigmas"
        | "use_beta_sigmas"
        | "stochastic_sampling" => value.as_bool() == Some(false) || value.is_null(),
        "shift_terminal" => value.is_null(),
        k if k.starts_with('_') => return None,
        _ => {
            return Some(format!(
                "`{key}` is not a key of FlowMatchEulerDiscreteScheduler this port supports"
            ));
        }
    };
    (!off).then(|| format!("`{key}` = {value}: not supported (only its default)"))
}

/// The flow-matching Euler scheduler, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowMatchScheduler {
    /// Training timesteps (σ = t / this).
    pub num_train_timesteps: usize,
    /// The σ shift `s` (SD3: 3.0).
    pub shift: f64,
}

/// The σ and timesteps of an `n`-step run.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowSchedule {
    /// σ_0 … σ_{n−1} and a final 0 (`n + 1` values, as diffusers' f32).
    pub sigmas: Vec<f32>,
    /// `1000·σ_i` for the `n` steps (as diffusers' f32).
    pub timesteps: Vec<f32>,
}

impl FlowMatchScheduler {
    /// Reads a `scheduler_config.json`; a key this port does not support, or a feature turned
    /// on that it does not have, is an error naming it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SdError> {
        let path = path.as_ref();
        let raw: RawConfig = crate::read_json(path)?;
        let bad = |message: String| {
            SdError::File(HfError::Config {
                path: path.to_owned(),
                message,
            })
        };
        if raw.class_name != "FlowMatchEulerDiscreteScheduler" {
            return Err(bad(format!(
                "`_class_name` = {:?}: expected FlowMatchEulerDiscreteScheduler",
                raw.class_name
            )));
        }
        if let Some(m) = raw.other.iter().find_map(|(k, v)| refused(k, v)) {
            return Err(bad(m));
        }
        if raw.shift.is_nan() || raw.shift <= 0.0 || raw.num_train_timesteps == 0 {
            return Err(bad(
                "`shift` and `num_train_timesteps` must be positive".into()
            ));
        }
        Ok(FlowMatchScheduler {
            num_train_timesteps: raw.num_train_timesteps,
            shift: raw.shift,
        })
    }

    /// The shift applied to a σ in f32, as at construction.
    fn shifted_f32(&self, sigma: f32) -> f32 {
        let s = self.shift as f32;
        s * sigma / (1.0 + (s - 1.0) * sigma)
    }

    /// The schedule of an `n`-step run (`n ≥ 1`).
    pub fn schedule(&self, n: usize) -> FlowSchedule {
        assert!(n >= 1, "at least one step");
        let t = self.num_train_timesteps as f64;
        // σ_max and σ_min of the shifted training schedule (f32, as diffusers builds them).
        let train = self.num_train_timesteps as f32;
        let sigma_max = self.shifted_f32(1.0) as f64;
        let sigma_min = self.shifted_f32(1.0 / train) as f64;
        let (hi, lo) = (sigma_max * t, sigma_min * t);
        // numpy's linspace: start + i·step, the last exactly the end.
        let step = if n > 1 {
            (lo - hi) / (n - 1) as f64
        } else {
            0.0
        };
        let mut sigmas: Vec<f32> = (0..n)
            .map(|i| {
                let ts = if n > 1 && i == n - 1 {
                    lo
                } else {
                    hi + i as f64 * step
                };
                let s = ts / t;
                (self.shift * s / (1.0 + (self.shift - 1.0) * s)) as f32
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * train).collect();
        sigmas.push(0.0);
        FlowSchedule { sigmas, timesteps }
    }
}

impl FlowSchedule {
    /// Steps in the run.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Whether the run has no step.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The Euler step `i`: `x + (σ_{i+1} − σ_i)·v`.
    pub fn step(&self, velocity: Tensor<4>, i: usize, x: Tensor<4>) -> Tensor<4> {
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        x + velocity * dt
    }
}
