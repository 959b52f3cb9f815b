//! What the binary's integration tests share: running `rlrig` from the repository root and
//! reading what it printed.
#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::process::{Command, ExitStatus, Output};

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

/// `rlrig ARGS… --set run_dir=RUN_DIR` run to completion from the repository root: its exit
/// status and its output as text.
pub fn rlrig_in(args: &[&str], run_dir: &Path) -> (ExitStatus, String) {
    let set = format!("run_dir={}", run_dir.display());
    let mut all = args.to_vec();
    all.extend(["--set", &set]);
    let o = rlrig(&all);
    (o.status, text(&o))
}

/// A training run's `metrics.jsonl`: one value per learner step, each with a finite loss.
pub fn learner_metrics(run: &Path) -> Vec<serde_json::Value> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    for s in &steps {
        assert!(s["loss"].as_f64().is_some_and(f64::is_finite), "{s}");
    }
    steps
}
