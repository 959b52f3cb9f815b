//! Rectified flow over a [`Dit`] (docs/models.md "Rectified flow", docs/method.md): the training
//! loss, the Euler ODE sampler with classifier-free guidance, and Flow-GRPO's SDE sampler with
//! per-step log-probabilities.
//!
//! Convention: `s ∈ [0, 1]` is the noise level, `x_s = (1 − s)·x0 + s·ε`, the network predicts
//! `v = ε − x0`, images are in `[−1, 1]`, sampling runs from `s = 1` to `0` over the uniform
//! levels of [`noise_levels`].
//!
//! # Randomness
//!
//! Every random draw (noise levels, prompt dropout, Gaussian noise) comes from a ChaCha8
//! stream: the caller's generator for [`training_loss`], `ChaCha8Rng::seed_from_u64(seed)` for
//! the samplers. Normals are made on the host by the Box–Muller transform (in `f64`, stored as
//! `f32`) and uploaded, so the noise depends only on the seed and the shapes, never on the
//! backend, the device's own generator or thread scheduling; a sampler called twice with one
//! seed gives bit-identical results on one device.
//!
//! # Conditioning image (the Editor)
//!
//! A model whose `in_channels` exceed `out_channels` takes a conditioning image (the source
//! image for the Editor) of `in_channels − out_channels` channels; it is concatenated after the
//! noisy image on the channel axis at every model call, never noised.

use std::f64::consts::PI;

use burn::optim::AdamWConfig;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dit::Dit;
use crate::dit::Prediction;
use crate::text::TextBatch;

/// Probability that a training prompt is replaced by the unconditional one.
pub const UNCOND_PROB: f64 = 0.1;

/// Flow-GRPO's noise scale `a` of the SDE sampler.
pub const SDE_NOISE_SCALE: f64 = 0.7;

/// The learning rate of docs/models.md.
pub const LEARNING_RATE: f64 = 1e-3;

/// AdamW as docs/models.md fixes it: betas 0.9 / 0.999, weight decay 0, epsilon 1e-8
/// (PyTorch's; burn's defaults are weight decay 1e-4 and epsilon 1e-5). Use with
/// [`LEARNING_RATE`].
pub fn adamw() -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
}

/// How to sample: Euler steps, guidance scale and the SDE's noise scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Number of uniform steps from `s = 1` to `0`; at least 1.
    pub steps: usize,
    /// Classifier-free guidance scale `w`: `v = v_u + w·(v_c − v_u)`; `1` is the conditional
    /// velocity alone (one model call per step), `0` the unconditional one.
    pub guidance: f64,
    /// The SDE sampler's noise scale `a` (unused by the ODE sampler).
    pub noise_scale: f64,
}

impl Default for SamplerConfig {
    /// 20 steps, guidance 1, noise scale 0.7.
    fn default() -> Self {
        SamplerConfig {
            steps: 20,
            guidance: 1.0,
            noise_scale: SDE_NOISE_SCALE,
        }
    }
}

/// The noise levels of an Euler schedule: `1 − k/steps` for `k = 0..=steps` (from 1 to 0).
///
/// # Panics
///
/// If `steps` is 0.
pub fn noise_levels(steps: usize) -> Vec<f64> {
    assert!(steps > 0, "a sampler needs at least one step");
    (0..=steps).map(|k| 1.0 - k as f64 / steps as f64).collect()
}

/// `n` standard normals from `rng` (Box–Muller in `f64`, two normals per pair of uniforms).
pub fn standard_normals(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (2.0 * PI * u2).sin_cos();
        out.push((r * cos) as f32);
        out.push((r * sin) as f32);
    }
    out.truncate(n);
    out
}

/// A tensor of standard normals from `rng`, in row-major order.
pub fn normal_tensor<const D: usize>(
    shape: [usize; D],
    rng: &mut impl Rng,
    device: &Device,
) -> Tensor<D> {
    let values = standard_normals(shape.iter().product(), rng);
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn levels_tensor(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// The model's input: `x`, followed by the conditioning image on the channel axis if any.
fn model_input(model: &Dit, x: Tensor<4>, cond_image: Option<&Tensor<4>>) -> Tensor<4> {
    let want = model.config().cond_channels();
    match cond_image {
        None => {
            assert_eq!(
                want, 0,
                "this model takes a conditioning image of {want} channels; none was given"
            );
            x
        }
        Some(cond) => {
            assert_eq!(
                cond.dims()[1],
                want,
                "conditioning image has {} channels; this model takes {want}",
                cond.dims()[1]
            );
            Tensor::cat(vec![x, cond.clone()], 1)
        }
    }
}

/// The rectified-flow loss `mean((v_θ(x_s, s, text) − (ε − x0))²)` of one batch.
///
/// `x0`: clean images `(B, out_channels, H, W)` in `[−1, 1]`; `cond_image`: the Editor's source
/// images (see the [module docs](self)); `text`: the prompts, each replaced by the
/// unconditional one with probability [`UNCOND_PROB`]. Draws from `rng`, in this order: `B`
/// normals `n` (then `s = sigmoid(n)`, logit-normal), `B` uniforms for prompt dropout, the
/// noise `ε` (row-major). Returns a one-element tensor, differentiable when the model is on an
/// autodiff device.
pub fn training_loss(
    model: &Dit,
    x0: Tensor<4>,
    cond_image: Option<&Tensor<4>>,
    text: &TextBatch,
    rng: &mut impl Rng,
) -> Tensor<1> {
    training_loss_weighted(model, x0, cond_image, text, rng, 0.0, 0.0)
}

/// [`training_loss`] with the Editor's pixels that the edit changes (source and target differ
/// by more than 0.1 in some channel) weighted `1 + edit_weight` in a normalised weighted mean,
/// so that the few pixels an edit touches are not drowned by the many it copies, and the noise
/// levels drawn as `s = sigmoid(noise_mean + n)`: a positive `noise_mean` trains more often at
/// the high noise where a sample's layout and colours are decided. With `edit_weight = 0` (or
/// no source image) and `noise_mean = 0` it is [`training_loss`].
pub fn training_loss_weighted(
    model: &Dit,
    x0: Tensor<4>,
    cond_image: Option<&Tensor<4>>,
    text: &TextBatch,
    rng: &mut impl Rng,
    edit_weight: f64,
    noise_mean: f64,
) -> Tensor<1> {
    let dims = x0.dims();
    let b = dims[0];
    assert_eq!(
        text.batch_size(),
        b,
        "training_loss: {} prompts for {b} images",
        text.batch_size()
    );
    let device = x0.device();
    let s: Vec<f32> = standard_normals(b, rng)
        .into_iter()
        .map(|n| (1.0 / (1.0 + (-(noise_mean + f64::from(n))).exp())) as f32)
        .collect();
    let drop: Vec<bool> = (0..b).map(|_| rng.random::<f64>() < UNCOND_PROB).collect();
    let eps = normal_tensor(dims, rng, &device);

    let s = levels_tensor(s, &device);
    let sb = s.clone().reshape([b, 1, 1, 1]);
    let xs = x0.clone() * (sb.clone().neg() + 1.0) + eps.clone() * sb;
    let text = text.drop_rows(&drop);
    let out = model.forward(
        model_input(model, xs, cond_image),
        s,
        text.ids().clone(),
        text.mask().clone(),
    );
    let weights = cond_image.filter(|_| edit_weight > 0.0).map(|cond| {
        let changed = (x0.clone() - cond.clone())
            .abs()
            .max_dim(1)
            .greater_elem(0.1)
            .float();
        changed.mul_scalar(edit_weight).add_scalar(1.0)
    });
    let squared = match model.config().prediction {
        Prediction::Velocity => (out - (eps - x0)).square(),
        // The clean image is the target; its error is the velocity's scaled by s.
        Prediction::Sample => (out - x0).square(),
    };
    match weights {
        None => squared.mean(),
        Some(w) => {
            let c = squared.dims()[1] as f64;
            let total = w.clone().sum().mul_scalar(c);
            (squared * w).sum() / total
        }
    }
}

/// The smallest noise level the clean-image parameterisation divides by.
const MIN_LEVEL: f64 = 1e-4;

/// The model's output at noise level `s` as a velocity.
fn as_velocity(model: &Dit, out: Tensor<4>, x: Tensor<4>, s: f64) -> Tensor<4> {
    match model.config().prediction {
        Prediction::Velocity => out,
        Prediction::Sample => (x - out).div_scalar(s.max(MIN_LEVEL)),
    }
}

/// The guided velocity at noise level `s`: `v_u + w·(v_c − v_u)` with `w = guidance`.
///
/// `w = 1` makes one model call on the prompts; otherwise the conditional and unconditional
/// passes run as one model call on a batch of `2B`.
pub fn velocity(
    model: &Dit,
    x: Tensor<4>,
    s: f64,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    guidance: f64,
) -> Tensor<4> {
    let b = x.dims()[0];
    let device = x.device();
    if guidance == 1.0 {
        let level = levels_tensor(vec![s as f32; b], &device);
        let input = model_input(model, x.clone(), cond_image);
        let out = model.forward(input, level, text.ids().clone(), text.mask().clone());
        return as_velocity(model, out, x, s);
    }
    let input = model_input(model, x.clone(), cond_image);
    let x2 = Tensor::cat(vec![input.clone(), input], 0);
    let s2 = levels_tensor(vec![s as f32; 2 * b], &device);
    let text2 = text.concat(&TextBatch::unconditional(b, text.text_len(), &device));
    let out = model.forward(x2, s2, text2.ids().clone(), text2.mask().clone());
    let v = as_velocity(model, out, Tensor::cat(vec![x.clone(), x], 0), s);
    let v_c = v.clone().narrow(0, 0, b);
    let v_u = v.narrow(0, b, b);
    v_u.clone() + (v_c - v_u).mul_scalar(guidance)
}

fn initial_noise(model: &Dit, batch: usize, rng: &mut ChaCha8Rng, device: &Device) -> Tensor<4> {
    let c = model.config();
    normal_tensor(
        [batch, c.out_channels, c.image_size, c.image_size],
        rng,
        device,
    )
}

/// Samples images with the Euler ODE sampler: `x ← x + (s_next − s)·v` from `s = 1` to `0`.
///
/// The starting noise is drawn from `ChaCha8Rng::seed_from_u64(seed)`, one image per prompt of
/// `text`. Returns `(B, out_channels, H, W)`, not clamped (see [`crate::image`]).
///
/// # Panics
///
/// If `sampler.steps` is 0 or a shape does not fit the model.
pub fn sample_ode(
    model: &Dit,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    sampler: &SamplerConfig,
    seed: u64,
) -> Tensor<4> {
    let device = model.device();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = initial_noise(model, text.batch_size(), &mut rng, &device);
    sample_ode_from(model, noise, text, cond_image, sampler)
}

/// [`sample_ode`] from given noise at `s = 1`.
pub fn sample_ode_from(
    model: &Dit,
    noise: Tensor<4>,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    sampler: &SamplerConfig,
) -> Tensor<4> {
    let levels = noise_levels(sampler.steps);
    let mut x = noise;
    for pair in levels.windows(2) {
        let (s, s_next) = (pair[0], pair[1]);
        let v = velocity(model, x.clone(), s, text, cond_image, sampler.guidance);
        x = x + v.mul_scalar(s_next - s);
    }
    x
}

/// The Gaussian transition of one SDE step: `x' ~ N(x_coef·x + v_coef·v, std²)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdeStep {
    /// The noise level `s` of the step's start.
    pub s: f64,
    /// `dt = s_next − s < 0`.
    pub dt: f64,
    /// `σ_t = a·√(s/(1 − s))`, with the next level `s₁` in the denominator at `s = 1`.
    pub sigma: f64,
    /// `σ_t·√(−dt)`, the transition's standard deviation.
    pub std: f64,
    /// `1 + σ_t²/(2s)·dt`.
    pub x_coef: f64,
    /// `(1 + σ_t²(1 − s)/(2s))·dt`.
    pub v_coef: f64,
}

impl SdeStep {
    /// The coefficients of step `step` (`0..steps`) of the schedule of `steps` steps with noise
    /// scale `a` (docs/models.md "SDE sampler").
    ///
    /// # Panics
    ///
    /// If `step >= steps`.
    pub fn new(step: usize, steps: usize, a: f64) -> SdeStep {
        assert!(step < steps, "step {step} of a {steps}-step schedule");
        SdeStep::on(&noise_levels(steps), step, a)
    }

    /// The coefficients of step `step` of any schedule of noise levels `levels` (descending
    /// from 1, ending at 0, one more than the steps), e.g. Stable Diffusion 3's shifted σ.
    ///
    /// # Panics
    ///
    /// If `step + 1 >= levels.len()`.
    pub fn on(levels: &[f64], step: usize, a: f64) -> SdeStep {
        assert!(
            step + 1 < levels.len(),
            "step {step} of a {}-step schedule",
            levels.len().saturating_sub(1)
        );
        let (s, s_next) = (levels[step], levels[step + 1]);
        let dt = s_next - s;
        let denominator = if s >= 1.0 { 1.0 - levels[1] } else { 1.0 - s };
        let sigma = a * (s / denominator).sqrt();
        SdeStep {
            s,
            dt,
            sigma,
            std: sigma * (-dt).sqrt(),
            x_coef: 1.0 + sigma * sigma / (2.0 * s) * dt,
            v_coef: (1.0 + sigma * sigma * (1.0 - s) / (2.0 * s)) * dt,
        }
    }

    /// The transition's mean `μ = x_coef·x + v_coef·v`.
    pub fn mean(&self, x: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        x.mul_scalar(self.x_coef) + v.mul_scalar(self.v_coef)
    }

    /// The exact KL between this step's transitions of means `mean` and `reference` (the
    /// same standard deviation), per image: the pixel mean of `(μ − μ_ref)² / (2·std²)`,
    /// shape `(B)`.
    pub fn kl(&self, mean: Tensor<4>, reference: Tensor<4>) -> Tensor<1> {
        let b = mean.dims()[0];
        (mean - reference)
            .square()
            .div_scalar(2.0 * self.std * self.std)
            .flatten::<2>(1, 3)
            .mean_dim(1)
            .reshape([b])
    }
}

/// The log-density of `x_next` under `N(mean, std²)` per pixel, averaged over the pixels of each
/// image: `mean(−(x' − μ)²/(2std²) − ln std − ½·ln 2π)`, shape `(B)`.
pub fn gaussian_log_prob(x_next: Tensor<4>, mean: Tensor<4>, std: f64) -> Tensor<1> {
    let b = x_next.dims()[0];
    let constant = -std.ln() - 0.5 * (2.0 * PI).ln();
    (x_next - mean)
        .square()
        .mul_scalar(-1.0 / (2.0 * std * std))
        .add_scalar(constant)
        .flatten::<2>(1, 3)
        .mean_dim(1)
        .reshape([b])
}

/// What the SDE sampler returns.
#[derive(Clone, Debug)]
pub struct SdeSample {
    /// The final images `x` at `s = 0`, `(B, out_channels, H, W)`, not clamped.
    pub images: Tensor<4>,
    /// Per step, the log-probability of the step's transition, `(B)` (see
    /// [`gaussian_log_prob`]); `steps` entries.
    pub log_probs: Vec<Tensor<1>>,
    /// The states visited: the starting noise, then the state after each step (`steps + 1`
    /// entries; the last is `images`).
    pub trajectory: Vec<Tensor<4>>,
}

/// Samples with Flow-GRPO's SDE sampler (same marginals as the ODE), recording each step's
/// log-probability.
///
/// Each step draws `x' = μ + std·ε` (see [`SdeStep`]) with the guided velocity. The starting
/// noise, then each step's `ε` in order, come from `ChaCha8Rng::seed_from_u64(seed)`. Run it on
/// a model without autodiff (`model.valid()`): rollouts need no graph, and
/// [`transition_log_prob`] recomputes the differentiable log-probabilities when training.
///
/// # Panics
///
/// If `sampler.steps` is 0 or a shape does not fit the model.
pub fn sample_sde(
    model: &Dit,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    sampler: &SamplerConfig,
    seed: u64,
) -> SdeSample {
    let device = model.device();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = initial_noise(model, text.batch_size(), &mut rng, &device);
    let levels = noise_levels(sampler.steps);
    let mut trajectory = vec![x.clone()];
    let mut log_probs = Vec::with_capacity(sampler.steps);
    for (step, &s) in levels[..sampler.steps].iter().enumerate() {
        let coef = SdeStep::new(step, sampler.steps, sampler.noise_scale);
        let v = velocity(model, x.clone(), s, text, cond_image, sampler.guidance);
        let mean = coef.mean(x, v);
        let eps = normal_tensor(mean.dims(), &mut rng, &device);
        let x_next = mean.clone() + eps.mul_scalar(coef.std);
        log_probs.push(gaussian_log_prob(x_next.clone(), mean, coef.std));
        trajectory.push(x_next.clone());
        x = x_next;
    }
    SdeSample {
        images: x,
        log_probs,
        trajectory,
    }
}

/// What [`sample_sde_chains`] and [`sample_sde_window`] return.
#[derive(Clone, Debug)]
pub struct SdeChains {
    /// The final images at `s = 0`, `(B, out_channels, H, W)`, not clamped.
    pub images: Tensor<4>,
    /// Per row: the states of its SDE steps (the starting noise first, then one per SDE
    /// step), each row-major, rounded to `f16`, concatenated.
    pub states: Vec<Vec<f32>>,
    /// Per row: the log-probability of each step's transition ([`gaussian_log_prob`] of the
    /// rounded state).
    pub log_probs: Vec<Vec<f32>>,
}

/// Rounds every value to `f16` (on the host), as a stored denoising chain keeps it; also
/// returns the rounded values.
fn round_to_f16(x: Tensor<4>) -> (Tensor<4>, Vec<f32>) {
    let dims = x.dims();
    let device = x.device();
    let values: Vec<f32> = x
        .into_data()
        .iter::<f32>()
        .map(rlrig_contract::round_f16)
        .collect();
    let rounded = Tensor::from_data(TensorData::new(values.clone(), dims), &device);
    (rounded, values)
}

/// Flow-GRPO's SDE sampler for phase 2, one noise stream per row: row `i` draws its starting
/// noise and then each step's `ε` from `ChaCha8Rng::seed_from_u64(seeds[i])`, so a row's chain
/// does not depend on the batch it ran in (and its starting noise is the ODE sampler's for the
/// same seed). Every state is rounded to `f16` as it is made, and each step's log-probability
/// is taken of the rounded state: a stored chain reproduces its log-probabilities exactly
/// through [`transition_log_prob`]. Every step is an SDE step: [`sample_sde_window`] with the
/// whole schedule as the window.
///
/// # Panics
///
/// If `seeds` does not have one seed per prompt, `sampler.steps` is 0, or a shape does not
/// fit the model.
pub fn sample_sde_chains(
    model: &Dit,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    sampler: &SamplerConfig,
    seeds: &[u64],
) -> SdeChains {
    sample_sde_window(model, text, cond_image, sampler, sampler.steps, seeds)
}

/// [`sample_sde_chains`] with SDE noise in the first `sde_steps` steps of the schedule only
/// (Flow-GRPO-Fast's window at the high-noise end); the remaining steps are Euler ODE steps
/// with the same guided velocity. The chain holds the window: its `sde_steps + 1` states and
/// `sde_steps` log-probabilities. The final image is a deterministic function of the window's
/// last state, so the reward it earns is credited to the window's transitions alone, and no
/// sampler noise is left in the image (with every step stochastic, the last step leaves noise
/// of standard deviation `a·√(s/(1−s))·√(1/K)` at `s = 1/K` in the pixels).
///
/// # Panics
///
/// As [`sample_sde_chains`], and if `sde_steps` is 0 or more than `sampler.steps`.
pub fn sample_sde_window(
    model: &Dit,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    sampler: &SamplerConfig,
    sde_steps: usize,
    seeds: &[u64],
) -> SdeChains {
    assert_eq!(seeds.len(), text.batch_size(), "one seed per prompt");
    let c = model.config();
    let levels = noise_levels(sampler.steps);
    sde_window_chains(
        [c.out_channels, c.image_size, c.image_size],
        seeds,
        &levels,
        sampler.noise_scale,
        sde_steps,
        &model.device(),
        |x, step| velocity(model, x, levels[step], text, cond_image, sampler.guidance),
    )
}

/// Flow-GRPO's windowed SDE sampler over any velocity and any schedule of noise levels
/// (`levels`: descending from 1 to 0, one more than the steps): row `i` draws its starting
/// noise `[C, H, W]` and then each SDE step's `ε` from `ChaCha8Rng::seed_from_u64(seeds[i])`,
/// the first `sde_steps` steps are SDE steps ([`SdeStep::on`]) and the rest Euler steps;
/// `velocity(x, step)` is the (guided) velocity at step `step`. States are rounded to `f16` as
/// they are made and each step's log-probability taken of the rounded state.
///
/// # Panics
///
/// If `sde_steps` is 0 or more than the schedule's steps.
pub fn sde_window_chains(
    shape: [usize; 3],
    seeds: &[u64],
    levels: &[f64],
    noise_scale: f64,
    sde_steps: usize,
    device: &Device,
    mut velocity: impl FnMut(Tensor<4>, usize) -> Tensor<4>,
) -> SdeChains {
    let steps = levels.len().saturating_sub(1);
    assert!(
        (1..=steps).contains(&sde_steps),
        "an SDE window of {sde_steps} steps in a {steps}-step schedule"
    );
    let b = seeds.len();
    let shape = [1, shape[0], shape[1], shape[2]];
    let mut rngs: Vec<ChaCha8Rng> = seeds
        .iter()
        .map(|&s| ChaCha8Rng::seed_from_u64(s))
        .collect();
    let start: Vec<Tensor<4>> = rngs
        .iter_mut()
        .map(|rng| normal_tensor(shape, rng, device))
        .collect();
    let (mut x, first) = round_to_f16(Tensor::cat(start, 0));
    let per_row = first.len() / b;
    let mut states: Vec<Vec<f32>> = first.chunks_exact(per_row).map(<[f32]>::to_vec).collect();
    let mut log_probs = vec![Vec::with_capacity(sde_steps); b];
    for step in 0..steps {
        let v = velocity(x.clone(), step);
        if step >= sde_steps {
            x = x + v.mul_scalar(levels[step + 1] - levels[step]);
            continue;
        }
        let coef = SdeStep::on(levels, step, noise_scale);
        let mean = coef.mean(x, v);
        let eps: Vec<Tensor<4>> = rngs
            .iter_mut()
            .map(|rng| normal_tensor(shape, rng, device))
            .collect();
        let (x_next, values) =
            round_to_f16(mean.clone() + Tensor::cat(eps, 0).mul_scalar(coef.std));
        let lp: Vec<f32> = gaussian_log_prob(x_next.clone(), mean, coef.std)
            .into_data()
            .iter::<f32>()
            .collect();
        for (row, chunk) in values.chunks_exact(per_row).enumerate() {
            states[row].extend_from_slice(chunk);
            log_probs[row].push(lp[row]);
        }
        x = x_next;
    }
    SdeChains {
        images: x,
        states,
        log_probs,
    }
}

/// The log-probability of a given transition `x → x_next` at step `step` of the sampler's
/// schedule, under the model's current velocity: the quantity whose ratio to the stored one is
/// GRPO's importance ratio. Shape `(B)`; differentiable through the model when it is on an
/// autodiff device.
///
/// # Panics
///
/// If `step >= sampler.steps` or a shape does not fit the model.
pub fn transition_log_prob(
    model: &Dit,
    x: Tensor<4>,
    x_next: Tensor<4>,
    step: usize,
    text: &TextBatch,
    cond_image: Option<&Tensor<4>>,
    sampler: &SamplerConfig,
) -> Tensor<1> {
    let coef = SdeStep::new(step, sampler.steps, sampler.noise_scale);
    let v = velocity(model, x.clone(), coef.s, text, cond_image, sampler.guidance);
    gaussian_log_prob(x_next, coef.mean(x, v), coef.std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_muller_normals_have_unit_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let v = standard_normals(20_001, &mut rng);
        assert_eq!(v.len(), 20_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn levels_run_from_one_to_zero() {
        assert_eq!(noise_levels(4), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn sde_coefficients_follow_the_formulas() {
        // s = 1 uses the next level (0.75) in the denominator.
        let first = SdeStep::new(0, 4, 0.7);
        assert_eq!(first.s, 1.0);
        assert!((first.sigma - 0.7 * (1.0f64 / 0.25).sqrt()).abs() < 1e-12);
        let mid = SdeStep::new(2, 4, 0.7);
        let sigma: f64 = 0.7 * (0.5f64 / 0.5).sqrt();
        assert!((mid.sigma - sigma).abs() < 1e-12);
        assert!((mid.std - sigma * 0.25f64.sqrt()).abs() < 1e-12);
        assert!((mid.x_coef - (1.0 - sigma * sigma / 1.0 * 0.25)).abs() < 1e-12);
        assert!((mid.v_coef - (1.0 + sigma * sigma * 0.5 / 1.0) * -0.25).abs() < 1e-12);
    }
}
