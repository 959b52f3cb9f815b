//! What the binary's integration tests share: running `rlrig` from the repository root and
//! reading what it printed.
#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::process::{Command, Output};

/// The repository root, where every test runs the binary.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `rlrig ARGS…` run to completion from the repository root.
pub fn rlrig(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("runs")
}

/// Standard output then standard error, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
