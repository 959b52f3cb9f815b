//! README.md's two set-up commands stay in step with CI and the tree: the test command it gives
//! is the one `.ci/run` runs, and the main job it gives names a flow file that exists.

use std::path::{Path, PathBuf};

/// How far down README.md the two commands must appear.
const HEAD_LINES: usize = 60;
/// The test command README.md gives and CI runs.
const TEST_COMMAND: &str = "cargo test --workspace --locked";
/// How README.md's main-job command starts; the flow file follows.
const RUN_PREFIX: &str = "cargo run --release -- run ";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md's first lines, trimmed, without comment lines.
fn readme_head() -> Vec<String> {
    read("README.md")
        .lines()
        .take(HEAD_LINES)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.starts_with('#'))
        .collect()
}

/// The command lines of a shell script, trimmed, without comments.
fn script_commands(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn readme_test_command_is_what_ci_runs() {
    let head = readme_head();
    let tests: Vec<&String> = head
        .iter()
        .filter(|l| l.starts_with("cargo test"))
        .collect();
    assert_eq!(
        tests,
        [TEST_COMMAND],
        "README.md's first {HEAD_LINES} lines must give exactly one test command, `{TEST_COMMAND}` \
         (if it changes, change .ci/run and this test with it)"
    );
    let ci = script_commands(&read(".ci/run"));
    assert!(
        ci.iter().any(|l| l == TEST_COMMAND),
        ".ci/run must run `{TEST_COMMAND}`, the test command README.md gives; it runs:\n{}",
        ci.join("\n")
    );
}

#[test]
fn readme_run_command_names_an_existing_flow() {
    let head = readme_head();
    let runs: Vec<&String> = head.iter().filter(|l| l.starts_with(RUN_PREFIX)).collect();
    assert_eq!(
        runs.len(),
        1,
        "README.md's first {HEAD_LINES} lines must give one `{RUN_PREFIX}FLOW` command, found {runs:?}"
    );
    let flow = runs[0][RUN_PREFIX.len()..]
        .split_whitespace()
        .next()
        .expect("the run command names no flow");
    assert!(
        flow.ends_with(".toml"),
        "README.md's run command names `{flow}`, not a flow file"
    );
    assert!(
        root().join(Path::new(flow)).is_file(),
        "README.md's run command names `{flow}`, which does not exist"
    );
}
