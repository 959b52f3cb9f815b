//! Hugging Face checkpoint formats for rlrig's burn models, shared by the crates that run real
//! architectures (`rlrig-sd`, `rlrig-qwen`):
//!
//! * [`load`]: PyTorch-layout safetensors (transformers' and diffusers' files, sharded ones with
//!   their `*.safetensors.index.json` too) into burn modules; a missing, unexpected or
//!   misshapen tensor is an error naming it;
//! * [`lora`]: LoRA adapters on a model's projections ([`lora::Proj`], [`lora::Adapted`]) in
//!   PEFT's directory layout, read and written.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

pub mod load;
pub mod lora;

/// Why a checkpoint, a configuration or an adapter could not be read, written or applied.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A file the layout needs is not there.
    #[error("{0}: missing")]
    Missing(PathBuf),
    /// A file could not be read or written.
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
    /// Weights that do not fit the model (the tensors are named).
    #[error("{path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Which tensors are missing, unexpected or of the wrong shape.
        message: String,
    },
    /// Adapter settings that cannot be applied (the setting is named).
    #[error("{0}")]
    Settings(String),
}

/// Reads a JSON file, naming the file and the key on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HfError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HfError::Missing(path.to_owned()),
        _ => HfError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| HfError::Config {
        path: path.to_owned(),
        message: format!("`{}`: {}", e.path(), e.inner()),
    })
}
