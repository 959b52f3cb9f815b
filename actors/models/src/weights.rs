//! Saving and loading a model ([`Dit`], or any [`Architecture`]) as one safetensors file.
//!
//! The tensors are the model's parameters under their module paths (`blocks.0.attn.qkv.weight`,
//! f32, burn's `[in, out]` Linear layout), written by burn-store's `SafetensorsStore`. The
//! architecture goes in the file's metadata as JSON under the model's key ([`CONFIG_KEY`] for
//! the DiT), so a file is self-describing: [`load`] builds the DiT the file describes,
//! [`load_expecting`] also insists on a given architecture ([`load_model`] and
//! [`load_model_expecting`] for any [`Architecture`]).
//!
//! Loading checks the whole file before any weight is used and names the file and the
//! tensors in its errors: a missing or unreadable file, a truncated or corrupt container, a
//! missing or invalid architecture, and every tensor that is missing, unexpected, of another
//! shape or not f32. (Left to itself, burn-store reports shape mismatches as one
//! `ValidationFailed` string holding a `Debug` dump of its errors, and missing tensors as a
//! multi-line summary table.)

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

pub use crate::architecture::Architecture;
use crate::dit::{Dit, DitConfig};

/// The metadata key of the DiT's architecture (JSON of [`DitConfig`]).
pub const CONFIG_KEY: &str = <Dit as Architecture>::CONFIG_KEY;

/// A weights file that cannot be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file cannot be read or written.
    #[error("weights file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a complete safetensors container (truncated, corrupt, not safetensors).
    #[error("weights file {}: not a valid safetensors file: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the safetensors reader found.
        message: String,
    },
    /// The file's metadata has no architecture.
    #[error(
        "weights file {}: no `{key}` entry in the metadata; it holds no rlrig {name}",
        path.display()
    )]
    NoConfig {
        /// The file.
        path: PathBuf,
        /// The metadata key looked for.
        key: &'static str,
        /// The model looked for.
        name: &'static str,
    },
    /// The architecture in the metadata cannot be read.
    #[error("weights file {}: the `{key}` metadata is not a {name} config: {source}", path.display())]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: &'static str,
        /// The model looked for.
        name: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The architecture in the metadata describes no network.
    #[error("weights file {}: {message}", path.display())]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The file holds another architecture than the one asked for.
    #[error(
        "weights file {}: holds another architecture than expected: {differences}",
        path.display()
    )]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// Each setting that differs, as `width is 32, expected 64`.
        differences: String,
    },
    /// The tensors do not fit the architecture.
    #[error("weights file {}: tensors do not fit the architecture: {}", path.display(), list(problems))]
    Tensors {
        /// The file.
        path: PathBuf,
        /// Every problem found, in tensor-name order.
        problems: Vec<TensorProblem>,
    },
    /// burn-store failed to write or apply the tensors.
    #[error("weights file {}: {message}", path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// burn-store's message.
        message: String,
    },
}

/// One tensor of a weights file that does not fit the architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorProblem {
    /// The architecture has the tensor, the file does not.
    Missing {
        /// Its name.
        tensor: String,
    },
    /// The file has a tensor the architecture does not.
    Unexpected {
        /// Its name.
        tensor: String,
    },
    /// The shapes differ.
    Shape {
        /// Its name.
        tensor: String,
        /// The architecture's shape.
        expected: Vec<usize>,
        /// The file's.
        found: Vec<usize>,
    },
    /// The file stores the tensor in another type than f32.
    DType {
        /// Its name.
        tensor: String,
        /// The file's type.
        found: String,
    },
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorProblem::Missing { tensor } => write!(f, "tensor `{tensor}` is missing"),
            TensorProblem::Unexpected { tensor } => {
                write!(f, "tensor `{tensor}` is not part of the architecture")
            }
            TensorProblem::Shape {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor `{tensor}` has shape {found:?}, the architecture needs {expected:?}"
            ),
            TensorProblem::DType { tensor, found } => {
                write!(f, "tensor `{tensor}` is {found}, not F32")
            }
        }
    }
}

fn list(problems: &[TensorProblem]) -> String {
    const SHOWN: usize = 8;
    let mut text = problems
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    text
}

fn config_diff<C: Serialize>(expected: &C, found: &C) -> String {
    let as_map = |c: &C| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (e, f) = (as_map(expected), as_map(found));
    let shown = |v: Option<&serde_json::Value>| v.map_or("unset".to_owned(), ToString::to_string);
    // Both sides' keys: a field left out when it has its default is only in one of them.
    let keys: std::collections::BTreeSet<&String> = e.keys().chain(f.keys()).collect();
    keys.into_iter()
        .filter(|k| e.get(*k) != f.get(*k))
        .map(|k| format!("{k} is {}, expected {}", shown(f.get(k)), shown(e.get(k))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the model's weights and architecture to `path` (replacing any file there; the
/// write goes to a scratch file renamed into place, so a failed save leaves the old file).
pub fn save<M: Architecture>(model: &M, path: impl AsRef<Path>) -> Result<(), WeightsError> {
    let path = path.as_ref();
    let config = serde_json::to_string(model.config()).expect("a config serialises");
    let mut store = SafetensorsStore::from_file(path)
        .overwrite(true)
        .metadata(M::CONFIG_KEY, config);
    model
        .save_into(&mut store)
        .map_err(|e| WeightsError::Store {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// The model's weights and architecture as the bytes of a safetensors file (what [`save`]
/// writes), e.g. to send new Policy weights by message.
pub fn to_bytes<M: Architecture>(model: &M) -> Result<Vec<u8>, WeightsError> {
    let config = serde_json::to_string(model.config()).expect("a config serialises");
    let mut store = SafetensorsStore::from_bytes(None).metadata(M::CONFIG_KEY, config);
    let origin = || PathBuf::from("<in memory>");
    model
        .save_into(&mut store)
        .map_err(|e| WeightsError::Store {
            path: origin(),
            message: e.to_string(),
        })?;
    store.get_bytes().map_err(|e| WeightsError::Store {
        path: origin(),
        message: e.to_string(),
    })
}

/// Loads an `M` from the bytes of a weights file, insisting on the architecture `expected`
/// when given, with the checks of [`load_model`]; `origin` names the bytes in errors.
pub fn from_bytes<M: Architecture>(
    bytes: Vec<u8>,
    origin: &Path,
    expected: Option<&M::Config>,
    device: &Device,
) -> Result<M, WeightsError> {
    load_bytes::<M>(origin, bytes, expected, device)
}

/// Reads the DiT architecture stored in a weights file (checking the container, not the
/// tensors).
pub fn read_config(path: impl AsRef<Path>) -> Result<DitConfig, WeightsError> {
    read_model_config::<Dit>(path)
}

/// Reads the architecture of an `M` stored in a weights file.
pub fn read_model_config<M: Architecture>(
    path: impl AsRef<Path>,
) -> Result<M::Config, WeightsError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    Ok(parse::<M>(path, &bytes)?.0)
}

/// Loads the DiT a weights file describes onto `device`.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Dit, WeightsError> {
    load_model(path, device)
}

/// Loads a weights file onto `device`, insisting that it holds the DiT `expected`.
pub fn load_expecting(
    path: impl AsRef<Path>,
    expected: &DitConfig,
    device: &Device,
) -> Result<Dit, WeightsError> {
    load_model_expecting(path, expected, device)
}

/// Loads the `M` a weights file describes onto `device`.
pub fn load_model<M: Architecture>(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<M, WeightsError> {
    load_checked::<M>(path.as_ref(), None, device)
}

/// Loads an `M` onto `device`, insisting that the file holds the architecture `expected`.
pub fn load_model_expecting<M: Architecture>(
    path: impl AsRef<Path>,
    expected: &M::Config,
    device: &Device,
) -> Result<M, WeightsError> {
    load_checked::<M>(path.as_ref(), Some(expected), device)
}

fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The file's architecture and its tensors' `(dtype, shape)` by name.
#[allow(clippy::type_complexity)]
fn parse<M: Architecture>(
    path: &Path,
    bytes: &[u8],
) -> Result<(M::Config, BTreeMap<String, (Dtype, Vec<usize>)>), WeightsError> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| WeightsError::Format {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(M::CONFIG_KEY))
        .ok_or_else(|| WeightsError::NoConfig {
            path: path.to_owned(),
            key: M::CONFIG_KEY,
            name: M::NAME,
        })?;
    let config: M::Config =
        serde_json::from_str(json).map_err(|source| WeightsError::BadConfig {
            path: path.to_owned(),
            key: M::CONFIG_KEY,
            name: M::NAME,
            source,
        })?;
    let tensors = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, (info.dtype, info.shape.clone())))
        .collect();
    Ok((config, tensors))
}

fn load_checked<M: Architecture>(
    path: &Path,
    expected: Option<&M::Config>,
    device: &Device,
) -> Result<M, WeightsError> {
    load_bytes::<M>(path, read(path)?, expected, device)
}

fn load_bytes<M: Architecture>(
    path: &Path,
    bytes: Vec<u8>,
    expected: Option<&M::Config>,
    device: &Device,
) -> Result<M, WeightsError> {
    let (config, stored) = parse::<M>(path, &bytes)?;
    if let Some(expected) = expected.filter(|e| **e != config) {
        return Err(WeightsError::ConfigMismatch {
            path: path.to_owned(),
            differences: config_diff(expected, &config),
        });
    }
    let model = M::build(&config, device).map_err(|e| WeightsError::InvalidConfig {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(apply(path, bytes, &stored, model, false)?.0)
}

/// Loads a weights file into `model`, a network that *extends* the file's: every tensor of
/// the file must be one of the model's with the same shape, but the model may have more
/// (new layers, such as a text encoder added to a trained DiT), which keep their values.
/// The architectures themselves are not compared. Returns the model and the names of the
/// tensors the file did not have.
pub fn load_extending<M: Architecture>(
    path: impl AsRef<Path>,
    model: M,
) -> Result<(M, Vec<String>), WeightsError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let (_, stored) = parse::<M>(path, &bytes)?;
    apply(path, bytes, &stored, model, true)
}

/// Checks the file's tensors against the model's and loads them; with `extend`, tensors
/// the file lacks are not an error (they are returned by name).
fn apply<M: Architecture>(
    path: &Path,
    bytes: Vec<u8>,
    stored: &BTreeMap<String, (Dtype, Vec<usize>)>,
    mut model: M,
    extend: bool,
) -> Result<(M, Vec<String>), WeightsError> {
    let wanted: BTreeMap<String, Vec<usize>> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name, t.shape.as_slice().to_vec()))
        .collect();
    let (mut problems, mut new) = (Vec::new(), Vec::new());
    for (name, shape) in &wanted {
        match stored.get(name) {
            None if extend => new.push(name.clone()),
            None => problems.push(TensorProblem::Missing {
                tensor: name.clone(),
            }),
            Some((_, found)) if found != shape => problems.push(TensorProblem::Shape {
                tensor: name.clone(),
                expected: shape.clone(),
                found: found.clone(),
            }),
            Some((dtype, _)) if *dtype != Dtype::F32 => problems.push(TensorProblem::DType {
                tensor: name.clone(),
                found: format!("{dtype:?}"),
            }),
            Some(_) => {}
        }
    }
    problems.extend(
        stored
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .map(|name| TensorProblem::Unexpected {
                tensor: name.clone(),
            }),
    );
    if !problems.is_empty() {
        return Err(WeightsError::Tensors {
            path: path.to_owned(),
            problems,
        });
    }

    let mut store = SafetensorsStore::from_bytes(Some(bytes)).allow_partial(extend);
    let result = model
        .load_from(&mut store)
        .map_err(|e| WeightsError::Store {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if !result.errors.is_empty() || (!extend && !result.missing.is_empty()) {
        return Err(WeightsError::Store {
            path: path.to_owned(),
            message: format!(
                "burn-store could not apply the tensors: {:?}; missing: {:?}",
                result.errors, result.missing
            ),
        });
    }
    Ok((model, new))
}
