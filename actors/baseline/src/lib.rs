//! Baseline implementations of rlrig's roles, with no neural networks, over the built-in world.
//!
//! They are **baselines and test instruments**, not the method: they let the whole
//! Generate → Reflect → Edit cycle run, and be tested, with no model weights.
//!
//! | type | role trait | what it does |
//! |---|---|---|
//! | [`MistakenRenderer`] | [`Diffuser`](rlrig_contract::Diffuser) | draws the prompt exactly with the world's solver, then makes one spatial mistake at a set rate |
//! | [`OracleChecker`] | [`Checker`](rlrig_contract::Checker) | judges with the world's oracle parser; a test instrument and an inference baseline, never a training reward |
//! | [`RulePolicy`] | [`EditPolicy`](rlrig_contract::EditPolicy) | the paper's *Actor* as fixed rules: add the first missing item, else move the first violated relation |
//! | [`SceneEditor`] | [`Editor`](rlrig_contract::Editor) | reads the scene with the oracle, applies the edit prompt exactly, optionally loses some context, redraws |
//!
//! Each has a config struct (serde, unknown keys refused, missing keys defaulted) and a
//! constructor that validates it. Every role is deterministic for a given request seed.

#![warn(missing_docs)]

mod checker;
mod editor;
mod policy;
mod renderer;

pub use checker::{OracleChecker, OracleCheckerConfig};
pub use editor::{SceneEditor, SceneEditorConfig};
pub use policy::{RulePolicy, RulePolicyConfig};
pub use renderer::{MistakenRenderer, MistakenRendererConfig};

/// A baseline config value out of range. The message names the role, the key and the rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{role} config: `{key}` = {value}: {rule}")]
pub struct ConfigError {
    /// The role type whose config is wrong, e.g. `MistakenRenderer`.
    pub role: &'static str,
    /// The config key, e.g. `mistake_rate`.
    pub key: &'static str,
    /// The value given, as written in a config file.
    pub value: String,
    /// What the value must be, e.g. `must be a probability in [0, 1]`.
    pub rule: String,
}

/// Checks that `value` is a probability.
fn probability(role: &'static str, key: &'static str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError {
            role,
            key,
            value: value.to_string(),
            rule: "must be a probability in [0, 1]".into(),
        })
    }
}

/// Random streams of the roles, so that one seed drives independent noise in each.
mod stream {
    /// [`crate::MistakenRenderer`].
    pub const RENDERER: u64 = 0;
    /// [`crate::SceneEditor`].
    pub const EDITOR: u64 = 1;
}
