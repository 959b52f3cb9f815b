//! The Stable Diffusion family in burn, loaded from diffusers-format directories (the layout
//! of `model_index.json`, `tokenizer/`, `text_encoder/`, `scheduler/`, …), device-agnostic like
//! the rest of rlrig's burn code.
//!
//! Built: the CLIP tokenizer ([`tokenizer`]) and text encoders ([`clip`]), the UNet of SD 1.x /
//! 2.x / InstructPix2Pix ([`unet`]), Stable Diffusion 3's MMDiT ([`mmdit`]), the VAE ([`vae`]),
//! the DDIM, Euler and flow-matching schedulers ([`scheduler`], [`flow_match`]), the pipelines
//! ([`pipeline`], [`sd3`]), Flow-GRPO for SD3 through LoRA adapters (`rlrig_hf::lora`)
//! ([`sd3_grpo`]) and the kinds ([`kinds`]). Each is checked against diffusers / transformers /
//! PEFT outputs on tiny random-weight models (`tests/fixtures/`, made by the scripts in
//! `scripts/sd_fixtures/`).

#![warn(missing_docs)]

use std::path::Path;

pub use burn;

mod blocks;
pub mod clip;
pub mod flow_match;
mod images;
pub mod kinds;
pub mod mmdit;
pub mod pipeline;
pub mod scheduler;
pub mod sd3;
pub mod sd3_grpo;
pub mod t5;
pub mod tokenizer;
pub mod unet;
pub mod vae;

/// Why a model or its configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    /// A file of the layout is missing, unreadable or malformed, asks for something
    /// unsupported, or holds weights that do not fit (the file, key or tensors named).
    #[error(transparent)]
    File(#[from] rlrig_hf::HfError),
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A configuration asks for a model this crate does not build (the key is named).
    #[error("{0}")]
    Unsupported(String),
    /// A kind's settings are refused, or name a model that does not fit the kind.
    #[error("{0}")]
    Settings(String),
}

/// Reads a JSON config, naming the file and the key on error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SdError> {
    Ok(rlrig_hf::read_json(path)?)
}
