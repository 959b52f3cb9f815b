//! A custom actor kind from Rust, plugged into rlrig's own command line.
//!
//! `StrictChecker` is a checker that gives no partial credit: an image scores 1 when every
//! item and relation of the prompt holds, else 0 (the per-verdict work is delegated to the
//! built-in oracle checker). It registers as kind `example.strict_checker`; everything else —
//! flows, validation, `run`, the store — is rlrig's.
//!
//! ```sh
//! cargo run --example custom_checker -- run examples/custom-checker.toml
//! cargo run --example custom_checker -- kinds
//! ```

use rlrig_baseline::{OracleChecker, OracleCheckerConfig};
use rlrig_contract::{CheckReport, CheckRequest, Checker, RoleError};
use serde::Deserialize;

/// Settings of `example.strict_checker`, as a flow gives them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StrictConfig {
    /// The score an image must reach on the oracle's partial scale to count as right.
    pass_at: f64,
}

impl Default for StrictConfig {
    fn default() -> Self {
        StrictConfig { pass_at: 1.0 }
    }
}

/// All-or-nothing checker.
struct StrictChecker {
    oracle: OracleChecker,
    pass_at: f64,
}

impl Checker for StrictChecker {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        let mut reports = self.oracle.check(batch)?;
        for r in &mut reports {
            r.score = if r.score >= self.pass_at { 1.0 } else { 0.0 };
            r.reflection = format!("[strict] {}", r.reflection);
        }
        Ok(reports)
    }
}

fn main() {
    let mut registry = rlrig::builtin_registry();
    registry.add_checker(
        "example.strict_checker",
        "example: all-or-nothing checker (score 1 only when everything holds)",
        |c: &StrictConfig| {
            if (0.0..=1.0).contains(&c.pass_at) {
                Ok(())
            } else {
                Err(format!("`pass_at` = {}: must be in [0, 1]", c.pass_at).into())
            }
        },
        |c, _ctx| {
            let oracle = OracleChecker::new(OracleCheckerConfig::default())?;
            Ok(Box::new(StrictChecker {
                oracle,
                pass_at: c.pass_at,
            }))
        },
    );
    std::process::exit(rlrig::cli::main(registry));
}
