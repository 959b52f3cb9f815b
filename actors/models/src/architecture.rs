//! [`Architecture`]: what a network is to its weights file (a serialisable config it is
//! built from, and the metadata key the config is stored under). The networks implement it next
//! to their definitions; [`crate::weights`] saves and loads any of them.

use crate::ModelError;
use std::fmt;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A network that a weights file can describe: its architecture is a serialisable config from
/// which it can be built.
pub trait Architecture: Module + Sized {
    /// The architecture.
    type Config: Serialize + DeserializeOwned + Clone + PartialEq + fmt::Debug;
    /// The metadata key its config is stored under.
    const CONFIG_KEY: &'static str;
    /// What it is called in errors (`DiT`, `Checker`, …).
    const NAME: &'static str;
    /// Its architecture.
    fn config(&self) -> &Self::Config;
    /// The device of its parameters.
    fn device(&self) -> Device;
    /// A freshly initialised network of an architecture; an invalid config is an error.
    fn build(config: &Self::Config, device: &Device) -> Result<Self, ModelError>;
}
