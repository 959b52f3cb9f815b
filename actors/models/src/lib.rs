//! rlrig's built-in networks in burn (docs/models.md): the Diffuser's and the Editor's DiT,
//! trained and sampled as a rectified flow, and the Checker's and the Policy's small VLMs; their
//! training, their GRPO learners, and the roles they play.
//!
//! * [`text`]: the closed-vocabulary tokenizer of scene-graph and edit prompts.
//! * [`dit`]: [`DitConfig`] and the network [`Dit`] (`v_θ(x_s, s, text)`).
//! * [`rectified_flow`]: the training loss, the Euler ODE sampler with classifier-free guidance, and
//!   Flow-GRPO's SDE sampler with per-step log-probabilities.
//! * [`vlm`]: the Checker's and the Policy's small vision-language models.
//! * [`checker`]: the Checker's inference (its questions, findings and scene graphs).
//! * [`image`]: [`rlrig_contract::Image`] ↔ tensors in `[−1, 1]`.
//! * [`weights`]: one self-describing safetensors file per model ([`weights::Architecture`]:
//!   what each network tells its file).
//! * [`training_loop`]: the training loop every model shares (EMA, checkpoints, resume, budget).
//! * [`pretrain`]: pre-training the Diffuser and the Editor on data the world generates.
//! * [`vlm_train`]: pre-training the Checker and the Policy (imperfect images, oracle labels)
//!   and their evaluation.
//! * [`grpo`]: GRPO's objective for the Policy's tokens (advantages, clipping, k3 KL) and its
//!   learner (Reflection-GRPO phase 1).
//! * [`flow_grpo`]: Flow-GRPO's learner of the Editor (phase 2).
//! * [`quality`]: the models' quality against the oracle (`rlrig quality`).
//! * [`roles`]: the four neural roles (the `neural.*` kinds).
//! * [`kinds`]: [`register`] adds the `neural.*` kinds and the learners of `neural.policy` and
//!   `neural.editor` to the engine's registry.
//! * [`ModelError`]: why a public function of this crate failed.
//! * [`device`]: a flow's device name (`cpu`, `wgpu:N`, `cuda:N`) as a burn device.
//!
//! Everything is device-agnostic: burn 0.22 tensors carry their backend in their
//! [`Device`](burn::tensor::Device), not in a type parameter. On CPU use `Device::flex()`, and
//! `Device::flex().autodiff()` to train. This crate re-exports [`burn`] so that users share its
//! version.
//!
//! ```no_run
//! use rlrig_models::burn::tensor::Device;
//! use rlrig_models::rectified_flow::{self, SamplerConfig};
//! use rlrig_models::text::Tokenizer;
//! use rlrig_models::{Dit, DitConfig, image};
//!
//! let device = Device::flex();
//! let model = Dit::new(&DitConfig::diffuser(), &device)?;
//! let text = Tokenizer::default().batch(&["red circle left of blue square"], &device)?;
//! let x = rectified_flow::sample_ode(&model, &text, None, &SamplerConfig::default(), 42);
//! let images = image::tensor_to_images(x)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

#[doc(no_inline)]
pub use burn;

mod architecture;
pub mod checker;
pub mod device;
pub mod dit;
mod error;
pub mod flow_grpo;
pub mod fused;
pub mod grpo;
pub mod image;
pub mod jobs;
pub mod kinds;
mod layers;
pub mod pretrain;
pub mod quality;
pub mod rectified_flow;
pub mod roles;
pub mod text;
pub mod training_loop;
pub mod vlm;
pub mod vlm_data;
pub mod vlm_policy;
pub mod vlm_train;
pub mod weights;

pub use dit::{Dit, DitConfig, DitConfigError, Prediction};
pub use error::ModelError;
pub use kinds::register;
pub use roles::{
    CheckerSettings, NeuralChecker, NeuralDiffuser, NeuralEditor, NeuralPolicy, NeuralSettings,
    PolicySettings,
};
pub use text::{TextBatch, Tokenizer};
pub use weights::WeightsError;
