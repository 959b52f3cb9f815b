//! What scripts rely on, through the real binary: exit codes (0 all done, 1 other errors,
//! 2 refused, 3 some trajectories failed; 130 interrupted is checked by tests/run.rs's Ctrl-C
//! test), `metrics.json`'s `failed` and `complete`, `--json` printing JSON only, human text
//! instead of Rust debug text, and a closed stdout ending the command quietly.

mod common;
use common::{rlrig, root, text};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

const OK: i32 = 0;
const REFUSED: i32 = 2;
const TRAJECTORIES_FAILED: i32 = 3;

#[test]
fn a_run_with_every_trajectory_done_exits_0_and_says_so_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=6",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(OK), "{}", text(&o));
    let dir = tmp.path().join("infer-baseline");
    let m = metrics(&dir);
    assert_eq!(
        (&m["prompts"], &m["done"], &m["failed"], &m["complete"]),
        (
            &serde_json::json!(6),
            &serde_json::json!(6),
            &serde_json::json!(0),
            &serde_json::json!(true)
        ),
        "{m}"
    );
    // scores.jsonl records each trajectory's prompt, for `compare` to check pairs.
    let scores = std::fs::read_to_string(dir.join("scores.jsonl")).unwrap();
    for l in scores.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v["prompt"].is_string()
                && v["scene_graph"]["items"].is_array()
                && v["outcome"] == "done",
            "{v}"
        );
    }

    // `trajectories show`: the outcome in words, not Rust's Debug.
    let show = rlrig(&["trajectories", "show", dir.to_str().unwrap(), "0"]);
    assert_eq!(show.status.code(), Some(OK), "{}", text(&show));
    let out = String::from_utf8_lossy(&show.stdout);
    assert!(out.contains("done: answer round "), "{out}");
    assert!(
        !out.contains("Done {") && !out.contains("Some("),
        "no debug text: {out}"
    );
    // The report's chain headings too.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("done: answer round "));
    assert!(!html.contains("Done {") && !html.contains("Some("));

    // A reader that goes away (`… | head`) ends the command quietly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args(["trajectories", "ls", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(OK), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Broken pipe"), "{}", stderr(&o));
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' trajectories ls '{}' | head -n 1",
            env!("CARGO_BIN_EXE_rlrig"),
            dir.display()
        ))
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("Broken pipe"), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);

    // The missing trajectory is refused input.
    let o = rlrig(&["trajectories", "show", dir.to_str().unwrap(), "99"]);
    assert_eq!(o.status.code(), Some(REFUSED), "{}", text(&o));
}

#[test]
fn some_failed_trajectories_exit_3_with_their_count() {
    let tmp = tempfile::tempdir().unwrap();
    // A checker that errors on every prompt with a yellow item: those trajectories fail after
    // their retries, the others are done.
    let o = rlrig(&[
        "run",
        "examples/external-checker.toml",
        "--set",
        "prompts.count=8",
        "--set",
        "actors.checker.settings.command=[\"python3\", \"tests/data/picky_checker.py\"]",
        "--set",
        "actors.checker.batch=1",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    let dir = tmp.path().join("external-checker");
    let m = metrics(&dir);
    let (done, failed) = (m["done"].as_u64().unwrap(), m["failed"].as_u64().unwrap());
    assert!(
        done > 0 && failed > 0 && done + failed == 8,
        "some done, some failed: {m}\n{}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(TRAJECTORIES_FAILED), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("{failed} of 8 trajectories failed")),
        "{}",
        stderr(&o)
    );
    assert_eq!(m["complete"], false, "{m}");
    assert_eq!(m["interrupted"], false, "{m}");

    // scores.jsonl says which failed instead of leaving them out.
    let scores = std::fs::read_to_string(dir.join("scores.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = scores
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    let failed_lines: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["outcome"] == "failed").collect();
    assert_eq!(failed_lines.len() as u64, failed);
    let id = failed_lines[0]["id"].as_u64().unwrap();
    assert!(
        failed_lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("refuses yellow")
    );

    // `trajectories show` of a failed one: `failed: <error>`.
    let show = rlrig(&[
        "trajectories",
        "show",
        dir.to_str().unwrap(),
        &id.to_string(),
    ]);
    let out = String::from_utf8_lossy(&show.stdout);
    assert!(
        out.contains("failed: ") && out.contains("refuses yellow"),
        "{out}"
    );
    assert!(!out.contains("Failed {"), "{out}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(!html.contains("Failed {") && html.contains("failed: "));
}

#[test]
fn refused_flows_and_inputs_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = format!("run_dir={}", tmp.path().display());
    for args in [
        vec!["run", "tests/flows/invalid/unknown_kind.toml"],
        vec!["validate", "tests/flows/invalid/unknown_kind.toml"],
        vec!["run", "tests/flows/invalid/syntax_error.toml"],
        vec!["run", "flows/no-such-flow.toml"],
        vec!["run", "flows/infer-baseline.toml", "--set", "no_such_key=1"],
        vec!["run", "flows/infer-baseline.toml", "--no-such-option"],
        vec!["compare", "no/such/run", "no/other/run"],
        vec!["trajectories", "ls", "no/such/run"],
        vec![
            "eval",
            "flows/infer-baseline.toml",
            "--prompts",
            "tests/data/laion_sg_sample.jsonl",
        ],
        vec![
            "run",
            "flows/infer-baseline.toml",
            "--resume",
            "--set",
            &run_dir,
        ],
    ] {
        let o = rlrig(&args);
        assert_eq!(o.status.code(), Some(REFUSED), "{args:?}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o));
    }
    // A run directory that exists is refused without --overwrite.
    let args = [
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=2",
        "--set",
        &run_dir,
    ];
    assert_eq!(rlrig(&args).status.code(), Some(OK));
    let o = rlrig(&args);
    assert_eq!(o.status.code(), Some(REFUSED), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

#[test]
fn eval_json_prints_json_only() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "eval",
        "flows/infer-baseline.toml",
        "--prompts",
        "tests/data/world_prompts.jsonl",
        "--resamples",
        "200",
        "--json",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(OK), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON only ({e}): {}", text(&o)));
    assert_eq!(doc["done"], 6);
    assert_eq!(doc["failed"], 0);
    assert!(doc["final"]["sg_iou"]["mean"].is_f64(), "{doc}");
    // The run's table went to stderr.
    assert!(stderr(&o).contains("6 done, 0 failed"), "{}", stderr(&o));
}

#[test]
fn help_lists_the_exit_codes() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["compare", "--help"],
    ] {
        let o = rlrig(&args);
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(
            h.contains("Exit codes:")
                && h.contains("130")
                && h.contains("some trajectories failed"),
            "{args:?}: {h}"
        );
    }
    let doc = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    assert!(doc.contains("## Exit codes") && doc.contains("| 130"));
}
