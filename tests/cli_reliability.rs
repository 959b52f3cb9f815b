//! The command line's reliability, through the real binary: paths in a flow are relative to the
//! flow file (in a run directory's copy of it, to the original's), a start that fails leaves no
//! run directory behind (inference and training flows), each failure is logged once and retries
//! are counted, `rlrig validate` lists every problem and takes a run directory, and
//! `metrics.json` names its keys as `eval.json` does, and a damaged store is named with what is
//! left intact.
//!
//! `RLRIG_BLESS=1 cargo test --test cli_reliability` rewrites the `.expected` files of
//! `tests/flows/invalid/all/` after a deliberate change of wording — review the diff.

mod common;
use common::{rlrig, root, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// `rlrig ARGS…` run from `cwd`, with `RUST_LOG` as given (unset: the default filter).
fn rlrig_in(cwd: &Path, args: &[&str], rust_log: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlrig"));
    c.args(args).current_dir(cwd).env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        c.env("RUST_LOG", filter);
    }
    c.output().expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example_flow() -> PathBuf {
    root().join("examples/external-checker.toml")
}

#[test]
fn the_external_example_runs_from_any_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let flow = example_flow();
    let o = rlrig_in(
        &elsewhere,
        &["run", flow.to_str().unwrap(), "--set", "prompts.count=3"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The run directory is relative to the working directory, as always.
    assert_eq!(metrics(&elsewhere.join("runs/external-checker"))["done"], 3);
}

#[test]
fn a_relative_cwd_and_program_path_resolve_against_the_flow_file() {
    let tmp = tempfile::tempdir().unwrap();
    // A flow in its own directory with its checker beside it, run from the repository root.
    let flows = tmp.path().join("my/flows");
    std::fs::create_dir_all(flows.join("bin")).unwrap();
    std::fs::copy(
        root().join("examples/external_checker.py"),
        flows.join("bin/checker.py"),
    )
    .unwrap();
    let flow = std::fs::read_to_string(example_flow()).unwrap().replace(
        r#"command = ["./external_checker.py"]"#,
        // `python3` is looked up on the PATH; `cwd` is the flow's `bin/`, where the
        // program finds its argument.
        r#"command = ["python3", "checker.py"], cwd = "bin""#,
    );
    assert!(flow.contains(r#"cwd = "bin""#));
    std::fs::write(flows.join("flow.toml"), flow).unwrap();
    let run_dir = format!("run_dir={}", tmp.path().join("runs").display());
    let flow_path = flows.join("flow.toml");
    let o = rlrig(&[
        "run",
        flow_path.to_str().unwrap(),
        "--set",
        "prompts.count=2",
        "--set",
        &run_dir,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        metrics(&tmp.path().join("runs/external-checker"))["done"],
        2
    );
}

/// A run directory's `flow.toml` is a copy: its flow-relative paths (an external program, an
/// actor's `config`) resolve against the original flow file's directory, recorded beside it,
/// from any working directory, when the run directory is validated or run again.
#[test]
fn a_run_directory_resolves_flow_relative_paths_as_its_flow_did() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, other) = (tmp.path().join("first"), tmp.path().join("other"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&other).unwrap();
    let flow = example_flow();
    let o = rlrig_in(
        &first,
        &["run", flow.to_str().unwrap(), "--set", "prompts.count=2"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let run = first.join("runs/external-checker");

    // From another working directory: validated, and run again (the program
    // `./external_checker.py` is found beside the original flow, not in the run directory).
    let v = rlrig_in(&other, &["validate", run.to_str().unwrap()], None);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    let again = rlrig_in(
        &other,
        &["run", run.to_str().unwrap(), "--set", "name=again"],
        None,
    );
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let again = other.join("runs/again");
    assert_eq!(metrics(&again)["done"], 2);
    // Beside each copy, the original flow's directory (a copy of the copy keeps it).
    let recorded = std::fs::read_to_string(run.join("flow.base_dir")).unwrap();
    assert_eq!(Path::new(recorded.trim_end()), root().join("examples"));
    assert_eq!(
        std::fs::read_to_string(again.join("flow.base_dir")).unwrap(),
        recorded
    );

    // An actor's `config` file, read when the flow is checked.
    let run_dir = format!("run_dir={}", tmp.path().join("runs").display());
    let o = rlrig(&[
        "run",
        "tests/flows/valid/config_file.toml",
        "--set",
        &run_dir,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let fixture = tmp.path().join("runs/fixture");
    let v = rlrig_in(&other, &["validate", fixture.to_str().unwrap()], None);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));

    // Without the record, the copy's paths are its own directory's, as any flow file's.
    std::fs::remove_file(fixture.join("flow.base_dir")).unwrap();
    let v = rlrig_in(&other, &["validate", fixture.to_str().unwrap()], None);
    assert_eq!(v.status.code(), Some(2), "{}", text(&v));
    assert!(
        stderr(&v).contains("`actors.editor.config`: cannot read"),
        "{}",
        text(&v)
    );
}

#[test]
fn a_failed_start_leaves_no_run_directory_and_the_rerun_needs_no_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = format!("run_dir={}", tmp.path().display());
    let dir = tmp.path().join("external-checker");
    let flow = example_flow();
    let flow = flow.to_str().unwrap();
    let broken = rlrig(&[
        "run",
        flow,
        "--set",
        "prompts.count=2",
        "--set",
        &run_dir,
        "--set",
        r#"actors.checker.settings.command=["./no-such-checker.py"]"#,
    ]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    let err = stderr(&broken);
    // The program is a path: it was looked for beside the flow file.
    let expected = root().join("examples/no-such-checker.py");
    assert!(
        err.contains(&format!(
            "cannot start \"{}\": no such file",
            expected.display()
        )),
        "{err}"
    );
    assert!(!dir.exists(), "the failed start left {}", dir.display());

    // The corrected rerun, without --overwrite.
    let fixed = rlrig(&["run", flow, "--set", "prompts.count=2", "--set", &run_dir]);
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed));
    assert_eq!(metrics(&dir)["done"], 2);

    // A failed start with --overwrite leaves the earlier run as it was.
    let before = std::fs::read(dir.join("metrics.json")).unwrap();
    let broken = rlrig(&[
        "run",
        flow,
        "--set",
        "prompts.count=3",
        "--set",
        &run_dir,
        "--overwrite",
        "--set",
        r#"actors.checker.settings.command=["rlrig-no-such-program"]"#,
    ]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    assert!(
        stderr(&broken).contains("is it installed and on the PATH?"),
        "{}",
        text(&broken)
    );
    assert_eq!(std::fs::read(dir.join("metrics.json")).unwrap(), before);
}

/// `tests/flows/valid/train-tiny.toml` run into `run_dir` with `sets` (`KEY=VALUE`) and
/// further arguments.
fn train_tiny(run_dir: &Path, sets: &[&str], more: &[&str]) -> Output {
    let mut args = vec![
        "run".to_string(),
        "tests/flows/valid/train-tiny.toml".into(),
        "--set".into(),
        format!("run_dir={}", run_dir.display()),
    ];
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args.extend(more.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    rlrig(&args)
}

#[test]
fn a_training_flow_that_fails_to_start_leaves_no_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let dir = runs.join("train-tiny");
    // A weights file that is there (so the flow validates) but holds no Policy: the learner
    // cannot be built from it.
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let weights = format!("actors.policy.settings.weights={}", garbage.display());
    // A checker whose program is not there: the engine cannot start it.
    let program = [
        r#"actors.checker.kind="external""#,
        r#"actors.checker.settings={ command = ["./no-such-checker.py"] }"#,
    ];
    let missing = root().join("tests/flows/valid/no-such-checker.py");
    let cases: [(&[&str], String); 2] = [
        (&[weights.as_str()], garbage.display().to_string()),
        (
            &program,
            format!("cannot start \"{}\": no such file", missing.display()),
        ),
    ];
    for (sets, says) in cases {
        // The flow is valid: what fails is the start.
        let mut args = vec!["validate", "tests/flows/valid/train-tiny.toml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let v = rlrig(&args);
        assert_eq!(v.status.code(), Some(0), "{sets:?}: {}", text(&v));

        let o = train_tiny(&runs, sets, &[]);
        assert_eq!(o.status.code(), Some(1), "{sets:?}: {}", text(&o));
        assert!(stderr(&o).contains(&says), "{sets:?}: {}", text(&o));
        assert!(
            !dir.exists(),
            "{sets:?}: the failed start left {}",
            dir.display()
        );

        // A run --overwrite would replace stays as it was.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("earlier"), "an earlier run").unwrap();
        let o = train_tiny(&runs, sets, &["--overwrite"]);
        assert_eq!(o.status.code(), Some(1), "{sets:?}: {}", text(&o));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["earlier"], "{sets:?}: {}", text(&o));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A checker that crashes on its first batch once (the marker file remembers), writing a line
/// of stderr as it starts each time; its restart is examples/external_checker.py.
const FLAKY: &str = r#"import os, sys
marker, checker = sys.argv[1], sys.argv[2]
print("flaky checker: loading", file=sys.stderr, flush=True)
if not os.path.exists(marker):
    open(marker, "w").close()
    print('{"protocol": "rlrig-actor/1", "role": "checker"}', flush=True)
    sys.stdin.readline()
    print("flaky checker: crashing on purpose", file=sys.stderr, flush=True)
    sys.exit(7)
os.execvp(sys.executable, [sys.executable, checker])
"#;

fn run_flaky(tmp: &Path, rust_log: Option<&str>) -> Output {
    let script = tmp.join("flaky.py");
    std::fs::write(&script, FLAKY).unwrap();
    let command = serde_json::json!([
        "python3",
        script,
        tmp.join("crashed"),
        root().join("examples/external_checker.py")
    ]);
    let flow = example_flow();
    rlrig_in(
        root(),
        &[
            "run",
            flow.to_str().unwrap(),
            "--set",
            "prompts.count=4",
            "--set",
            "actors.checker.batch=1",
            "--set",
            &format!("actors.checker.settings.command={command}"),
            "--set",
            &format!("run_dir={}", tmp.join("runs").display()),
        ],
        rust_log,
    )
}

#[test]
fn a_failure_is_logged_once_retries_are_counted_and_child_stderr_is_no_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_flaky(tmp.path(), None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = stderr(&o);
    // The crash, logged once (the engine's log line, which quotes the child's stderr).
    assert_eq!(err.matches("exit status: 7").count(), 1, "{err}");
    assert_eq!(err.matches("crashing on purpose").count(), 1, "{err}");
    // What a child writes to stderr is not a warning: not logged by default (the crashed
    // process's lines are quoted in its error, the restarted one's are not shown).
    assert!(!err.contains("rlrig_external::stderr"), "{err}");
    assert_eq!(err.matches("flaky checker: loading").count(), 1, "{err}");

    // Every trajectory done, after one retry and one restart, counted.
    let m = metrics(&tmp.path().join("runs/external-checker"));
    assert_eq!(
        (&m["done"], &m["failed"], &m["retries"], &m["restarts"]),
        (
            &serde_json::json!(4),
            &serde_json::json!(0),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{m}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("4 done, 0 failed") && out.contains("; 1 retry, 1 replica restart\n"),
        "{out}"
    );

    // At INFO the child's stderr is there, each line once per process, at INFO.
    let tmp = tempfile::tempdir().unwrap();
    let o = run_flaky(tmp.path(), Some("warn,rlrig_external::stderr=info"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lines: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.contains("rlrig_external::stderr: flaky checker: loading"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&o));
    assert!(
        lines
            .iter()
            .all(|l| l.contains("INFO") && !l.contains("WARN")),
        "{lines:?}"
    );
}

#[test]
fn a_run_without_failures_counts_no_retries_and_says_nothing_of_them() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=2",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = metrics(&tmp.path().join("infer-baseline"));
    assert_eq!(
        (&m["retries"], &m["restarts"]),
        (&0.into(), &0.into()),
        "{m}"
    );
    assert!(!text(&o).contains("retr"), "{}", text(&o));
}

/// The fixtures of `tests/flows/invalid/all/`: flows with several independent problems.
fn all_problem_fixtures() -> Vec<PathBuf> {
    let dir = root().join("tests/flows/invalid/all");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn validate_lists_every_problem_of_a_flow_in_one_call() {
    let bless = std::env::var_os("RLRIG_BLESS").is_some();
    let all = all_problem_fixtures();
    assert!(all.len() >= 2);
    let mut mismatches = Vec::new();
    for f in all {
        let rel = f.strip_prefix(root()).unwrap().to_str().unwrap().to_owned();
        let o = rlrig(&["validate", &rel]);
        assert_eq!(o.status.code(), Some(2), "{rel}: {}", text(&o));
        let err = stderr(&o);
        let got = err
            .trim_end()
            .strip_prefix("error: ")
            .unwrap_or_else(|| panic!("{rel}: {err}"));
        assert!(got.lines().count() >= 2, "{rel}: one problem only: {got}");
        let expected_path = f.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, format!("{got}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{rel} has no .expected file"));
        if expected.trim_end() != got {
            mismatches.push(format!("{rel}:\n  expected: {expected}\n  got:      {got}"));
        }
        // `rlrig run` refuses it too, before anything starts.
        let tmp = tempfile::tempdir().unwrap();
        let run = rlrig(&[
            "run",
            &rel,
            "--set",
            &format!("run_dir={}", tmp.path().display()),
        ]);
        assert_eq!(run.status.code(), Some(2), "{}", text(&run));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn validate_takes_a_run_directory_as_run_does() {
    // Its help says so.
    let help = rlrig(&["validate", "--help"]);
    assert_eq!(help.status.code(), Some(0), "{}", text(&help));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("a flow file, or a run directory") && help.contains("runs/infer"),
        "{help}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=2",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dir = tmp.path().join("infer-baseline");
    let v = rlrig(&["validate", dir.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        out.starts_with(&format!(
            "{}: ok — 4 actors",
            dir.join("flow.toml").display()
        )),
        "{out}"
    );
    // With its overrides, as run takes them.
    let v = rlrig(&[
        "validate",
        dir.to_str().unwrap(),
        "--set",
        "cycle.stop_score=2",
    ]);
    assert_eq!(v.status.code(), Some(2), "{}", text(&v));
    assert!(
        stderr(&v).contains("--set cycle.stop_score=2: `cycle.stop_score`"),
        "{}",
        text(&v)
    );
    // A directory that is no run directory is refused by both, in the same words.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let v = rlrig(&["validate", empty.to_str().unwrap()]);
    let r = rlrig(&["run", empty.to_str().unwrap()]);
    assert_eq!((v.status.code(), r.status.code()), (Some(2), Some(2)));
    assert_eq!(stderr(&v), stderr(&r));
}

#[test]
fn metrics_json_and_eval_json_name_the_final_answer_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=3",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dir = tmp.path().join("infer-baseline");
    let m = metrics(&dir);
    let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut documented = [
        "prompts",
        "done",
        "failed",
        "interrupted",
        "complete",
        "retries",
        "restarts",
        "rounds",
        "final",
        "mean_rounds",
        "seconds",
    ];
    documented.sort_unstable();
    assert_eq!(keys, documented, "docs/cli.md lists these");
    assert!(m["final"]["mean"]["sg_iou"].is_f64(), "{m}");

    let e = rlrig(&["eval", dir.to_str().unwrap()]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    assert!(eval["final"].is_object(), "{eval}");
    // No file a user reads says `final_`.
    for f in ["metrics.json", "eval.json", "scores.jsonl", "report.html"] {
        let t = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(!t.contains("final_"), "{f} says final_");
    }
}

#[test]
fn a_damaged_store_is_named_and_the_intact_files_are_pointed_at() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=20",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let run = tmp.path().join("infer-baseline");
    let db = run.join("store/db");
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    let o = rlrig(&["trajectories", "ls", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "trajectory store {} is damaged",
            run.join("store").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("\nhint: a damaged store cannot be repaired in place"),
        "{err}"
    );
    assert!(run.join("trajectories/000000/chain.json").is_file());
}

/// The store's file cannot grow past a limit (`ulimit -f`, as a full disk would stop it): the
/// run stops with an error naming the store and the cause, without an error per trajectory,
/// and what the store holds afterwards is whole.
#[test]
fn a_store_that_cannot_grow_stops_the_run_with_its_path_and_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .args([
            "-c",
            r#"ulimit -f 1024; exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_rlrig"),
            "run",
            "flows/infer-baseline.toml",
            "--set",
            "prompts.count=5000",
            "--set",
            &format!("run_dir={}", tmp.path().display()),
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let run = tmp.path().join("infer-baseline");
    let store = run.join("store");
    assert!(
        err.contains(&format!("\nerror: trajectory store {}: ", store.display())),
        "{err}"
    );
    assert!(err.contains("File too large"), "{err}");
    assert!(
        err.lines().filter(|l| l.contains("ERROR")).count() < 20,
        "one failure, not one per trajectory: {err}"
    );
    // Without the limit the store opens; each trajectory it holds reads back whole and has
    // its chain beside the store.
    let o = rlrig(&["trajectories", "ls", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let ids: Vec<u64> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(ids.len() > 10 && ids.len() < 5000, "{} stored", ids.len());
    for id in [ids[0], ids[ids.len() / 2], ids[ids.len() - 1]] {
        let o = rlrig(&[
            "trajectories",
            "show",
            run.to_str().unwrap(),
            &id.to_string(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            run.join(format!("trajectories/{id:06}/chain.json"))
                .is_file()
        );
    }
}
