//! [`ModelError`]: why a model of this crate could not be built, loaded, fed or trained.

use crate::device::DeviceError;
use crate::dit::DitConfigError;
use crate::image::ImageTensorError;
use crate::text::TextError;
use crate::weights::WeightsError;

/// Why a model could not be built, loaded, fed or trained: the public functions of this crate
/// return it (the narrower errors of [`crate::weights`], [`crate::text`], … convert with `?`).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A kind's or a job's settings are refused (the message names the setting).
    #[error("{0}")]
    Settings(String),
    /// The device name does not name a usable device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A weights file cannot be read, written or understood.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A prompt the tokenizer cannot encode, or ids it cannot decode.
    #[error(transparent)]
    Text(#[from] TextError),
    /// Images that do not fit a tensor, or a tensor that is not images.
    #[error(transparent)]
    Image(#[from] ImageTensorError),
    /// An architecture that describes no buildable network.
    #[error(transparent)]
    Config(#[from] DitConfigError),
    /// The repair rule found no edit for a report.
    #[error(transparent)]
    Repair(#[from] rlrig_world::reflect::RepairError),
    /// An input or a model that does not fit the computation asked of it (shapes, sizes,
    /// a weights file holding the wrong network, an empty batch, a non-finite loss, …).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for ModelError {
    /// A message from the crate's internal checks: [`ModelError::Invalid`].
    fn from(message: String) -> ModelError {
        ModelError::Invalid(message)
    }
}

impl From<&str> for ModelError {
    fn from(message: &str) -> ModelError {
        ModelError::Invalid(message.to_string())
    }
}
