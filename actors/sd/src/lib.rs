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

use std::path::{Path, PathBuf};

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
    /// A file the layout needs is not there.
    #[error("{0}: missing")]
    Missing(PathBuf),
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A configuration file is malformed or asks for something unsupported (the key is named).
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Weights that do not fit the configured model (the tensors are named).
    #[error("{path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Which tensors are missing, unexpected or of the wrong shape.
        message: String,
    },
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

impl From<rlrig_hf::HfError> for SdError {
    fn from(e: rlrig_hf::HfError) -> Self {
        use rlrig_hf::HfError as H;
        match e {
            H::Missing(p) => SdError::Missing(p),
            H::Io { path, message } => SdError::Io { path, message },
            H::Config { path, message } => SdError::Config { path, message },
            H::Weights { path, message } => SdError::Weights { path, message },
            H::Settings(m) => SdError::Settings(m),
        }
    }
}

/// Reads a JSON config, naming the file and the key on error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SdError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SdError::Missing(path.to_owned()),
        _ => SdError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| SdError::Config {
        path: path.to_owned(),
        message: format!("`{}`: {}", e.path(), e.inner()),
    })
}
