//! `rlrig run` end to end, as a user runs it: the real binary, real flows, a real sled store
//! on disk, real child processes for external actors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rlrig_contract::{Outcome, StepOutput};
use rlrig_store::TrajectoryStore;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_bin(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(root())
        .output()
        .expect("runs")
}

fn rlrig(args: &[&str]) -> Output {
    run_bin(Path::new(env!("CARGO_BIN_EXE_rlrig")), args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn infer_flow_writes_the_run_directory_store_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().to_str().unwrap();
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=30",
        "--set",
        &format!("run_dir={run_dir}"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tmp.path().join("infer-baseline");
    let out = text(&o);
    assert!(
        out.contains("30 done, 0 failed") && out.contains("final"),
        "{out}"
    );

    // Metrics: round 0 .. 3 and final, final better than round 0 with the rule-based policy.
    let m = metrics(&dir);
    assert_eq!(m["done"], 30);
    assert_eq!(m["rounds"].as_array().unwrap().len(), 4);
    let r0 = m["rounds"][0]["mean"]["sg_iou"].as_f64().unwrap();
    let fin = m["final"]["mean"]["sg_iou"].as_f64().unwrap();
    assert!(fin > r0, "final SG-IoU {fin} must beat round 0 {r0}");
    let a0 = m["rounds"][0]["relation_accuracy"].as_f64().unwrap();
    let af = m["final"]["relation_accuracy"].as_f64().unwrap();
    assert!(af > a0 + 0.1, "relation accuracy {a0} → {af}");

    // The store: every trajectory, complete, with its images.
    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    assert_eq!(store.ids().unwrap(), (0..30).collect::<Vec<_>>());
    for id in 0..30 {
        let t = store.get(id).unwrap().unwrap();
        assert!(matches!(t.outcome, Outcome::Done { .. }));
        assert!(matches!(t.steps[0].output, StepOutput::Image(_)));
        assert!(
            t.steps
                .iter()
                .any(|s| matches!(s.output, StepOutput::Report(_)))
        );
        let chain = dir.join(format!("trajectories/{id:06}"));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(chain.join("chain.json")).unwrap())
                .unwrap();
        let pngs = std::fs::read_dir(&chain)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "png")
            })
            .count();
        assert_eq!(
            pngs,
            t.images().count(),
            "one PNG per image of trajectory {id}"
        );
        assert_eq!(doc["steps"].as_array().unwrap().len(), t.steps.len());
    }
    let edits: Vec<String> = (0..30)
        .flat_map(|id| store.get(id).unwrap().unwrap().steps)
        .filter_map(|s| match s.output {
            StepOutput::Edit(e) => Some(e.edit_prompt),
            _ => None,
        })
        .collect();
    assert!(!edits.is_empty());
    for e in &edits {
        rlrig_world::edit::Edit::parse(e).unwrap_or_else(|err| panic!("{err}"));
    }
    assert!(
        std::fs::read_to_string(dir.join("flow.toml"))
            .unwrap()
            .contains("count = 30")
    );
    drop(store);

    // What the store holds, from the command line.
    let ls = rlrig(&["trajectories", "ls", dir.to_str().unwrap()]);
    assert!(ls.status.success(), "{}", text(&ls));
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 31);
    let show = rlrig(&["trajectories", "show", dir.to_str().unwrap(), "7"]);
    assert!(text(&show).contains("trajectory 7:"), "{}", text(&show));
    let export_dir = tmp.path().join("export");
    let ex = rlrig(&[
        "trajectories",
        "export",
        dir.to_str().unwrap(),
        "--out",
        export_dir.to_str().unwrap(),
    ]);
    assert!(ex.status.success(), "{}", text(&ex));
    let jsonl = std::fs::read_to_string(export_dir.join("trajectories.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 30);
    assert!(export_dir.join("000029/chain.json").is_file());
    // A non-empty --out is refused (exit 2), its contents kept; --overwrite replaces it.
    let export = |extra: &[&str]| {
        let mut args = vec![
            "trajectories",
            "export",
            dir.to_str().unwrap(),
            "--out",
            export_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        rlrig(&args)
    };
    std::fs::write(export_dir.join("keep.txt"), "mine").unwrap();
    let refused = export(&[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--overwrite"), "{}", text(&refused));
    assert!(export_dir.join("keep.txt").is_file());
    let replaced = export(&["--overwrite"]);
    assert!(replaced.status.success(), "{}", text(&replaced));
    assert!(!export_dir.join("keep.txt").exists());
    assert!(export_dir.join("000029/chain.json").is_file());
    let missing = rlrig(&["trajectories", "show", dir.to_str().unwrap(), "99"]);
    assert!(!missing.status.success() && text(&missing).contains("no trajectory 99"));

    // Never overwritten silently.
    let again = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        "prompts.count=3",
        "--set",
        &format!("run_dir={run_dir}"),
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let forced = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--overwrite",
        "--set",
        "prompts.count=3",
        "--set",
        &format!("run_dir={run_dir}"),
    ]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert_eq!(metrics(&dir)["done"], 3);
}

#[test]
fn a_checker_in_python_runs_the_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "examples/external-checker.toml",
        "--set",
        "prompts.count=12",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let m = metrics(&tmp.path().join("external-checker"));
    assert_eq!(m["done"], 12);
    let store = TrajectoryStore::open(&tmp.path().join("external-checker/store")).unwrap();
    let t = store.get(0).unwrap().unwrap();
    let checked = t.steps.iter().filter(|s| s.actor == "checker").count();
    assert!(checked >= 1);
}

#[test]
fn a_broken_external_actor_fails_loudly_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rlrig(&[
        "run",
        "examples/external-checker.toml",
        "--set",
        "prompts.count=5",
        "--set",
        "actors.checker.settings.command=[\"python3\", \"examples/external_garbage.py\"]",
        "--set",
        &format!("run_dir={}", tmp.path().display()),
    ]);
    // Every trajectory is recorded as failed with the actor named; the run itself completes,
    // exiting 3 (some trajectories failed) with their count.
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("5 of 5 trajectories failed"),
        "{}",
        text(&o)
    );
    let m = metrics(&tmp.path().join("external-checker"));
    assert_eq!(
        (m["done"].as_u64(), m["failed"].as_u64()),
        (Some(0), Some(5)),
        "{}",
        text(&o)
    );
    let store = TrajectoryStore::open(&tmp.path().join("external-checker/store")).unwrap();
    match store.get(0).unwrap().unwrap().outcome {
        Outcome::Failed { error } => {
            assert!(
                error.contains("external actor \"checker\"")
                    && error.contains("malformed reply line"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// The example binary `custom_checker` (built by `cargo test` with the other examples).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn a_custom_kind_registered_from_rust_runs_through_the_cli() {
    let bin = example("custom_checker");
    assert!(bin.exists(), "{} is built by cargo test", bin.display());
    let kinds = run_bin(&bin, &["kinds"]);
    assert!(text(&kinds).contains("example.strict_checker"));
    // Columns line up: every description starts under the header's WHAT.
    let listing = String::from_utf8_lossy(&kinds.stdout).to_string();
    let header = listing.lines().next().unwrap();
    let at = header.find("WHAT").expect("a header");
    for line in listing.lines().skip(1) {
        let chars: Vec<char> = line.chars().collect();
        assert!(
            chars.len() > at && chars[at - 1] == ' ' && chars[at] != ' ',
            "misaligned: {line:?}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = run_bin(
        &bin,
        &[
            "run",
            "examples/custom-checker.toml",
            "--set",
            "prompts.count=10",
            "--set",
            &format!("run_dir={}", tmp.path().display()),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let store = TrajectoryStore::open(&tmp.path().join("custom-checker/store")).unwrap();
    let t = store.get(0).unwrap().unwrap();
    for s in &t.steps {
        if let StepOutput::Report(r) = &s.output {
            assert!(
                r.score == 0.0 || r.score == 1.0,
                "strict scores are all or nothing"
            );
            assert!(r.reflection.starts_with("[strict]"));
        }
    }
    // The stock binary does not know the kind, and says so.
    let o = rlrig(&["validate", "examples/custom-checker.toml"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown kind \"example.strict_checker\""),
        "{}",
        text(&o)
    );
}

#[test]
fn help_is_complete() {
    let o = rlrig(&["--help"]);
    let h = text(&o);
    for cmd in ["run", "validate", "schema", "kinds", "world"] {
        assert!(h.contains(cmd), "{h}");
    }
    let o = rlrig(&["run", "--help"]);
    assert!(text(&o).contains("--set") && text(&o).contains("--overwrite"));
}

#[test]
fn flows_without_an_editor_and_with_two_checkers_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = format!("run_dir={}", tmp.path().display());
    let o = rlrig(&[
        "run",
        "tests/flows/valid/no_editor.toml",
        "--set",
        &dir,
        "--set",
        "name=solo",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let store = TrajectoryStore::open(&tmp.path().join("solo/store")).unwrap();
    for id in store.ids().unwrap() {
        let t = store.get(id).unwrap().unwrap();
        let roles: Vec<_> = t.steps.iter().map(|s| s.role.to_string()).collect();
        assert_eq!(roles, ["diffuser", "checker"]);
    }
    drop(store);

    let o = rlrig(&[
        "run",
        "tests/flows/valid/two_checkers.toml",
        "--set",
        &dir,
        "--set",
        "name=duo",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let store = TrajectoryStore::open(&tmp.path().join("duo/store")).unwrap();
    for id in store.ids().unwrap() {
        let t = store.get(id).unwrap().unwrap();
        // Every image is judged by both checkers, in order.
        for (i, s) in t.steps.iter().enumerate() {
            if matches!(s.output, StepOutput::Image(_)) {
                assert_eq!(t.steps[i + 1].actor, "checker");
                assert_eq!(t.steps[i + 2].actor, "second_opinion");
            }
        }
        // The answer is the best-scored image (answer = "best").
        if let Outcome::Done { score: Some(s), .. } = t.outcome {
            let best = t
                .steps
                .iter()
                .filter_map(|s| match &s.output {
                    StepOutput::Report(r) => Some(r.score),
                    _ => None,
                })
                .fold(0.0, f64::max);
            assert_eq!(s, best);
        }
    }
}

#[test]
fn ctrl_c_stops_taking_prompts_stores_what_ran_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    // A slow Python checker (50 ms a batch) keeps trajectories in flight long enough to interrupt.
    let child = Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args([
            "run",
            "examples/external-checker.toml",
            "--set",
            "prompts.count=400",
            "--set",
            "actors.checker.settings.env={CHECKER_DELAY_MS = \"50\"}",
            "--set",
            "actors.checker.batch=1",
            "--set",
            "engine.max_in_flight=4",
            "--set",
            &format!("run_dir={}", tmp.path().display()),
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "an interrupted run exits 130 (docs/cli.md): {}",
        text(&o)
    );
    assert!(text(&o).contains("interrupted"), "{}", text(&o));
    let m = metrics(&tmp.path().join("external-checker"));
    let stored = m["done"].as_u64().unwrap() + m["failed"].as_u64().unwrap();
    assert!(stored > 0 && stored < 400, "{m}");
    assert_eq!(m["complete"], false);
    assert_eq!(m["interrupted"], true);
    let store = TrajectoryStore::open(&tmp.path().join("external-checker/store")).unwrap();
    assert_eq!(
        store.len() as u64,
        stored,
        "every trajectory that ran is in the store"
    );
}
