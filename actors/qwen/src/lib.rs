//! Qwen2.5-VL (Bai et al. 2025, arXiv 2502.13923) in burn 0.22, loaded from a transformers
//! directory, as rlrig's Checker (`checker.qwen2-vl`) and Policy (`policy.qwen2-vl`, the
//! paper's Actor), trained by Reflection-GRPO through LoRA.
//!
//! * [`config`]: `config.json` (transformers 4.x flat or 5.x nested), unsupported keys refused
//!   by name;
//! * [`preprocess`]: the image processor (smart resize, PIL's bicubic filter, normalisation,
//!   patches in the vision tower's order);
//! * [`chat`]: the tokenizer and the chat template (rendered with minijinja);
//! * [`vision`]: the vision tower (patch embedding, window / full attention with 2-D rotary
//!   positions, the patch merger);
//! * [`text`]: the Qwen2 decoder (grouped-query attention, multimodal rotary positions,
//!   RMSNorm, SwiGLU) and its KV cache;
//! * [`model`]: both towers, the 3-D position ids, KV-cached decoding with per-token
//!   log-probabilities and re-scoring;
//! * [`grpo`]: the Reflection-GRPO learner of the Policy through LoRA;
//! * [`kinds`]: the rlrig roles.

#![warn(missing_docs)]

use std::path::Path;

/// The burn this crate is built with (for callers that build tensors).
pub use burn;

pub mod chat;
pub mod config;
pub mod grpo;
pub mod kinds;
mod layers;
pub mod model;
pub mod preprocess;
pub mod text;
pub mod vision;

/// Why a Qwen2.5-VL model, its processor or a kind could not be built, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum QwenError {
    /// A file of the model directory is missing, unreadable or malformed, asks for something
    /// unsupported, or holds weights or adapters that do not fit (the file, key or tensors
    /// named).
    #[error(transparent)]
    File(#[from] rlrig_hf::HfError),
    /// The tokenizer or the chat template failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An input that does not fit the computation (an image too large, a sequence too long, …).
    #[error("{0}")]
    Invalid(String),
    /// A kind's settings are refused (the setting is named).
    #[error("{0}")]
    Settings(String),
}

/// Reads a JSON file, naming the file and the key on error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, QwenError> {
    Ok(rlrig_hf::read_json(path)?)
}
