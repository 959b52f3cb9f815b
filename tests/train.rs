//! Reflection-GRPO phase 1 end to end with the real binary: a tiny training flow (baseline
//! Diffuser, Editor and Checker; the shipped Policy network), a real sled store, processes
//! killed with SIGKILL and resumed, and replay from the store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rlrig_contract::StepOutput;
use rlrig_store::TrajectoryStore;

const FLOW: &str = "tests/flows/valid/train-tiny.toml";
/// The phase-2 flow: the Editor learns.
const FLOW2: &str = "tests/flows/valid/train-editor-tiny.toml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlrig"));
    c.args(args).current_dir(root());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn train_args(run_dir: &Path, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        FLOW.into(),
        "--set".into(),
        format!("run_dir={}", run_dir.display()),
    ];
    a.extend(extra.iter().cloned());
    a
}

/// `rlrig trajectories show RUN ID`'s output.
fn show(run: &Path, id: u64) -> String {
    let id = id.to_string();
    text(
        &command(&["trajectories", "show", run.to_str().unwrap(), &id])
            .output()
            .unwrap(),
    )
}

/// `rlrig replay RUN --flow FLOW` into `out_dir/name`, with `--set` values.
fn replay(run: &Path, flow: &str, out_dir: &Path, name: &str, sets: &[String]) {
    let mut args: Vec<String> = vec![
        "replay".into(),
        run.display().to_string(),
        "--flow".into(),
        flow.into(),
        "--set".into(),
        format!("run_dir={}", out_dir.display()),
        "--set".into(),
        format!("name={name}"),
    ];
    for set in sets {
        args.push("--set".into());
        args.push(set.clone());
    }
    run_ok(&args);
}

fn run_ok(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = command(&args).output().expect("runs");
    assert!(o.status.success(), "rlrig {args:?} failed:\n{}", text(&o));
    o
}

/// Starts `rlrig ARGS` and SIGKILLs it as soon as its run directory `dir` holds a trainer
/// checkpoint (polling every 5 ms); the run must not have finished by then.
fn kill_after_first_checkpoint(args: &[String], dir: &Path) {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.join("checkpoint/trainer.json").is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    assert!(killed, "the run must be killed mid-way");
}

/// The metrics lines: steps 1..=n once each, the store read in one contiguous sweep.
fn check_metrics(dir: &Path, steps: u64) -> Vec<rlrig_train::StepMetrics> {
    let m = rlrig_train::read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let got: Vec<u64> = m.iter().map(|s| s.step).collect();
    assert_eq!(got, (1..=steps).collect::<Vec<_>>(), "{m:#?}");
    let mut next = 0;
    for s in &m {
        assert_eq!(
            s.first_seq, next,
            "step {} must start where the last ended",
            s.step
        );
        assert!(s.last_seq >= s.first_seq);
        assert!(
            s.learn.groups >= 2,
            "a step takes at least groups_per_step informative groups"
        );
        next = s.last_seq + 1;
    }
    m
}

/// The largest absolute difference between two safetensors files' f32 tensors.
fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let floats = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    a.tensors()
        .iter()
        .flat_map(|(name, t)| {
            let (x, y) = (floats(t.data()), floats(b.tensor(name).unwrap().data()));
            x.into_iter()
                .zip(y)
                .map(|(x, y)| (x - y).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0, f32::max)
}

#[test]
fn a_tiny_training_run_commits_trajectories_steps_and_publishes_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_ok(&train_args(tmp.path(), &[]));
    let dir = tmp.path().join("train-tiny");
    assert!(text(&o).contains("3 learner steps"), "{}", text(&o));
    let m = check_metrics(&dir, 3);
    // With `max_staleness = 0` a step learns only from proposals of the current version, so
    // three steps prove that versions 1 and 2 reached the Policy actors by message.
    let version = m.last().unwrap().learn.version;
    assert_eq!(version, 3, "every step changed the weights: {m:#?}");

    // The store holds branched rounds: four proposals per round, one branch kept.
    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    let all = store.committed_after(None, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, store.next_seq().unwrap());
    let groups: usize = all
        .iter()
        .map(|(_, t)| {
            t.grpo_groups(&rlrig_contract::Reward::default())
                .unwrap()
                .len()
        })
        .sum();
    assert!(groups >= m.iter().map(|s| s.learn.groups).sum::<usize>());
    let mut versions = Vec::new();
    for (_, t) in &all {
        for s in &t.steps {
            if let (StepOutput::Edit(e), Some(b)) = (&s.output, s.branch) {
                assert!(b.index < 4);
                versions.push(e.policy_version);
            }
        }
        for round in 1..=2 {
            let kept: Vec<_> = t
                .steps
                .iter()
                .filter(|s| s.round == round && s.branch.is_some_and(|b| b.kept))
                .map(|s| s.branch.unwrap().index)
                .collect();
            assert!(
                kept.windows(2).all(|w| w[0] == w[1]),
                "one kept branch per round"
            );
        }
    }
    assert!(!versions.is_empty());
    assert!(
        versions.iter().any(|&v| v >= 1),
        "new weights reached the Policy actors by message"
    );

    let branched = all
        .iter()
        .find(|(_, t)| t.steps.iter().any(|s| s.branch.is_some()))
        .map(|(_, t)| t.id)
        .unwrap();
    drop(store); // sled locks the database: the commands below open it.
    let shown = show(&dir, branched);
    assert!(
        shown.contains("[branch 0") && shown.contains(", kept]"),
        "{shown}"
    );

    // The published weights are the trained ones, not the shipped ones.
    let trained = dir.join("policy.safetensors");
    assert!(max_difference(&trained, &root().join("weights/policy.safetensors")) > 1e-4);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap();
    assert_eq!(summary["complete"], true);
    assert!(dir.join("metrics.svg").is_file());
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("<h2>Training</h2>") && report.contains("<svg"));
    assert!(dir.join("checkpoint/trainer.json").is_file());

    // The held-out evaluation of version 3, judged by the oracle.
    let eval: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(eval.len(), 1, "{eval:?}");
    assert_eq!(eval[0]["version"], 3);
    assert_eq!(eval[0]["final"]["n"], 12, "{eval:?}");
    assert!(eval[0]["final"]["mean"]["sg_iou"].as_f64().unwrap() > 0.0);

    // Replay from the store only: same seed, same weights; another seed, other weights.
    let replay = |name: &str, seed: u64| -> PathBuf {
        // Every stored group usable whatever its version: which groups the 3-step run stored
        // depends on timing, and with the flow's `max_staleness = 0` a replay could find too
        // few of version 0 to take a step.
        let sets = [
            format!("engine.seed={seed}"),
            "train.steps=4".into(),
            "train.max_staleness=1000".into(),
        ];
        replay(&dir, FLOW, tmp.path(), name, &sets);
        tmp.path().join(name).join("policy.safetensors")
    };
    let (a, b, c) = (
        replay("replay-a", 5),
        replay("replay-b", 5),
        replay("replay-c", 6),
    );
    // Equal up to the summation order of flex's multi-threaded kernels (bit-equal in practice).
    let same = max_difference(&a, &b);
    assert!(
        same <= 1e-6,
        "same store, flow and seed → same weights ({same})"
    );
    let other = max_difference(&a, &c);
    assert!(other > 1e-4, "another seed → another batch order ({other})");
    // Replay trains: a step whose groups all have equal rewards changes nothing, so one seed's
    // order may leave the weights as shipped (the stored groups depend on the run's timing),
    // but not both.
    let shipped = root().join("weights/policy.safetensors");
    let moved = max_difference(&a, &shipped).max(max_difference(&c, &shipped));
    assert!(moved > 1e-4, "replay changed the weights ({moved})");
}

#[test]
fn sigkill_at_random_points_then_resume_uses_every_trajectory_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train-tiny");
    let extra = ["--set".to_string(), "train.steps=6".into()];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let mut kills = 0;
    for attempt in 0..4 {
        let mut args = train_args(tmp.path(), &extra);
        if dir.join("flow.toml").is_file() {
            args.push("--resume".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(800..4000)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let status = child.wait().unwrap();
        eprintln!("attempt {attempt}: {status}");
    }
    assert!(
        kills >= 2,
        "the test must really kill training ({kills} kills)"
    );
    // The last resume names the run directory, which stands for the flow as it ran.
    run_ok(&["run".into(), dir.display().to_string(), "--resume".into()]);

    check_metrics(&dir, 6);
    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    let all = store.committed_after(None, usize::MAX).unwrap();
    assert_eq!(
        all.len(),
        store.len(),
        "one log entry per stored trajectory"
    );
    let mut ids: Vec<u64> = all.iter().map(|(_, t)| t.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "every trajectory stored once");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap();
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["steps"], 6);
}

/// `rlrig run FLOW` into `run_dir` under a file-size limit of `limit_kib` (a full disk, as the
/// process sees it), with a deadline: a run that hangs fails the test.
fn run_with_file_limit(run_dir: &Path, limit_kib: u64, sets: &[&str]) -> Output {
    let mut args = vec![
        "-c".to_string(),
        format!(r#"ulimit -f {limit_kib}; exec "$0" "$@""#),
        env!("CARGO_BIN_EXE_rlrig").into(),
        "run".into(),
        FLOW.into(),
        "--set".into(),
        format!("run_dir={}", run_dir.display()),
        "--set".into(),
        "train.steps=6".into(),
        "--set".into(),
        "train.eval_every=0".into(),
    ];
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let child = Command::new("bash")
        .args(&args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(240)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("training on a full disk did not stop: it hangs");
        }
    }
}

#[test]
fn a_full_disk_stops_training_with_the_path_and_cause_and_resume_finishes_it() {
    // The store fills up first (no checkpoint until the end), or the first checkpoint does.
    for (case, limit_kib, sets, names) in [
        ("store", 64, &["train.checkpoint_every=1000"][..], "store"),
        ("checkpoint", 1024, &[][..], "checkpoint"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("train-tiny");
        let o = run_with_file_limit(tmp.path(), limit_kib, sets);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{case}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ")
                && last.contains(&dir.join(names).display().to_string())
                && last.contains("File too large"),
            "{case}: the last line names the path and the cause: {err}"
        );
        assert!(
            err.lines().filter(|l| l.contains("ERROR")).count() < 20,
            "{case}: one failure, not one per trajectory: {err}"
        );
        // With room again, --resume finishes the run: every step once, every trajectory
        // stored once, none failed.
        run_ok(&["run".into(), dir.display().to_string(), "--resume".into()]);
        check_metrics(&dir, 6);
        let store = TrajectoryStore::open(&dir.join("store")).unwrap();
        let all = store.committed_after(None, usize::MAX).unwrap();
        assert_eq!(all.len(), store.len(), "{case}");
        let mut ids: Vec<u64> = all.iter().map(|(_, t)| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "{case}: every trajectory stored once");
        assert!(
            all.iter()
                .all(|(_, t)| matches!(t.outcome, rlrig_contract::Outcome::Done { .. })),
            "{case}: the rollouts cancelled by the stop are not stored as failures"
        );
    }
}

#[test]
fn resume_refuses_a_changed_flow() {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&train_args(
        tmp.path(),
        &["--set".into(), "train.steps=1".into()],
    ));
    let mut args = train_args(tmp.path(), &["--set".into(), "train.steps=2".into()]);
    args.push("--resume".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = command(&args).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("differs from the one"), "{}", text(&o));
}

#[test]
fn ctrl_c_keeps_every_step_taken_for_the_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train-tiny");
    let extra = [
        "--set".to_string(),
        "train.steps=1000".into(),
        "--set".into(),
        "train.checkpoint_every=1000".into(),
        "--set".into(),
        "train.eval_every=0".into(),
    ];
    let args = train_args(tmp.path(), &extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let steps = || rlrig_train::read_metrics(&dir.join("metrics.jsonl")).map_or(0, |m| m.len());
    let t0 = std::time::Instant::now();
    while steps() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(240), "no learner steps");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "an interrupted run is incomplete");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("continue with --resume"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let taken = steps() as u64;
    let trainer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoint/trainer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        trainer["step"], taken,
        "the last step taken is checkpointed"
    );
    assert!(dir.join("policy.safetensors").is_file());
}

/// Phase 2 end to end: the Editor network samples four SDE edits per round, the store keeps
/// their denoising chains, Flow-GRPO steps reach the Editor by message, and replay learns from
/// the stored chains alone.
#[test]
fn phase_two_trains_the_editor_from_stored_denoising_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_ok(&[
        "run".to_string(),
        FLOW2.into(),
        "--set".into(),
        format!("run_dir={}", tmp.path().display()),
    ]);
    let dir = tmp.path().join("train-editor-tiny");
    assert!(text(&o).contains("3 learner steps"), "{}", text(&o));
    let m = check_metrics(&dir, 3);
    assert_eq!(m.last().unwrap().learn.version, 3, "{m:#?}");
    assert!(
        m[0].learn.kl.abs() < 1e-9,
        "the first step starts at the reference"
    );
    assert!(m.iter().skip(1).any(|s| s.learn.kl > 0.0));

    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    let all = store.committed_after(None, usize::MAX).unwrap();
    let mut versions = std::collections::BTreeSet::new();
    let mut groups = 0;
    for (_, t) in &all {
        for g in t.grpo_groups(&rlrig_contract::Reward::default()).unwrap() {
            groups += 1;
            assert_eq!(g.samples.len(), 4);
            let prompt = &g.samples[0].proposal.as_ref().unwrap().edit_prompt;
            for s in &g.samples {
                assert_eq!(
                    &s.proposal.as_ref().unwrap().edit_prompt,
                    prompt,
                    "one edit prompt per group"
                );
                let c = s.chain.as_ref().expect("every sample has its chain");
                assert_eq!((c.steps(), c.shape), (2, [3, 32, 32]));
                versions.insert(c.version);
            }
        }
        // The Policy is not sampled in phase 2: its steps stay on the line.
        assert!(
            t.steps
                .iter()
                .all(|s| !matches!(s.output, StepOutput::Edit(_)) || s.branch.is_none())
        );
    }
    assert!(groups >= 6);
    // With `max_staleness = 0` three steps need chains of versions 0, 1 and 2.
    assert!(
        [0, 1, 2].iter().all(|v| versions.contains(v)),
        "new Editor weights reached the Editor actors: {versions:?}"
    );
    let chained = all
        .iter()
        .find(|(_, t)| t.steps.iter().any(|s| s.chain.is_some()))
        .map(|(_, t)| t.id)
        .unwrap();
    drop(store);
    let shown = show(&dir, chained);
    assert!(
        shown.contains("(SDE chain: 2 steps") && shown.contains("[branch 3"),
        "{shown}"
    );

    let trained = dir.join("editor.safetensors");
    assert!(max_difference(&trained, &root().join("weights/editor.safetensors")) > 1e-6);
    assert!(!dir.join("policy.safetensors").exists());
    let eval = std::fs::read_to_string(dir.join("eval.jsonl")).unwrap();
    assert!(eval.contains("\"version\":3"), "{eval}");
    assert!(dir.join("eval/editor-v3.safetensors").is_file());

    replay(
        &dir,
        FLOW2,
        tmp.path(),
        "replay2",
        &["train.steps=2".into()],
    );
    let replayed = tmp.path().join("replay2/editor.safetensors");
    assert!(max_difference(&replayed, &root().join("weights/editor.safetensors")) > 1e-6);
}

/// Flow-GRPO on the Diffuser through the binary: round 0 runs as a group of SDE images, their
/// chains (without a source image or edit prompt) are stored, learner steps reach the Diffuser
/// by message, and the trained weights are written as `diffuser.safetensors`.
#[test]
fn the_diffuser_trains_from_its_stored_denoising_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_ok(&[
        "run".to_string(),
        "tests/flows/valid/train-diffuser-tiny.toml".into(),
        "--set".into(),
        format!("run_dir={}", tmp.path().display()),
    ]);
    let dir = tmp.path().join("train-diffuser-tiny");
    assert!(text(&o).contains("3 learner steps"), "{}", text(&o));
    let m = check_metrics(&dir, 3);
    assert_eq!(m.last().unwrap().learn.version, 3, "{m:#?}");
    assert!(m.iter().skip(1).any(|s| s.learn.kl > 0.0));

    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    let all = store.committed_after(None, usize::MAX).unwrap();
    let mut versions = std::collections::BTreeSet::new();
    let mut groups = 0;
    for (_, t) in &all {
        assert!(
            t.steps.iter().all(|s| s.round == 0),
            "no edits: max_rounds = 0"
        );
        for g in t.grpo_groups(&rlrig_contract::Reward::default()).unwrap() {
            groups += 1;
            assert_eq!((g.round, g.samples.len()), (0, 4));
            assert!(g.image.is_none() && g.report.is_none());
            for s in &g.samples {
                assert!(s.proposal.is_none());
                let c = s.chain.as_ref().expect("every sample has its chain");
                assert_eq!(
                    (c.steps(), c.schedule_steps(), c.shape),
                    (2, 3, [3, 32, 32])
                );
                versions.insert(c.version);
            }
        }
    }
    assert!(groups >= 6);
    assert!(
        [0, 1, 2].iter().all(|v| versions.contains(v)),
        "new Diffuser weights reached the Diffuser actors: {versions:?}"
    );
    drop(store);
    let trained = dir.join("diffuser.safetensors");
    assert!(max_difference(&trained, &root().join("weights/diffuser.safetensors")) > 1e-6);
    let eval = std::fs::read_to_string(dir.join("eval.jsonl")).unwrap();
    assert!(eval.contains("\"version\":3"), "{eval}");
}

/// Phase 2 resumes like phase 1: killed (SIGKILL) once its first checkpoint is written, the run
/// continues from it, and the steps and the store's log stay exactly-once.
#[test]
fn phase_two_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train-editor-tiny");
    let args = [
        "run".to_string(),
        FLOW2.into(),
        "--set".into(),
        format!("run_dir={}", tmp.path().display()),
        "--set".into(),
        "train.eval_every=0".into(),
    ];
    kill_after_first_checkpoint(&args, &dir);
    run_ok(&["run".into(), dir.display().to_string(), "--resume".into()]);
    check_metrics(&dir, 3);
    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    let all = store.committed_after(None, usize::MAX).unwrap();
    assert_eq!(
        all.len(),
        store.len(),
        "one log entry per stored trajectory"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["complete"].as_bool(), summary["steps"].as_u64()),
        (Some(true), Some(3))
    );
}

/// Flow-GRPO on the tiny SD3 through LoRA, killed after its first checkpoint and resumed: every
/// step is taken once, the store read in one sweep, and the adapters of the finished run load.
#[test]
fn sd3_lora_training_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd3-train-tiny");
    let args = [
        "run".to_string(),
        "flows/sd3-train-tiny.toml".into(),
        "--set".into(),
        format!("run_dir={}", tmp.path().display()),
        "--set".into(),
        "train.steps=6".into(),
    ];
    kill_after_first_checkpoint(&args, &dir);
    run_ok(&["run".into(), dir.display().to_string(), "--resume".into()]);
    let m = check_metrics(&dir, 6);
    assert!(m.iter().all(|s| s.learn.loss.is_finite()), "{m:#?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["complete"].as_bool(), summary["steps"].as_u64()),
        (Some(true), Some(6))
    );
    let learner: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoint/learner/learner.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(learner["version"].as_u64(), Some(6));
}

/// A trained actor whose kind cannot learn is refused before anything runs, naming the key.
#[test]
fn a_trained_actor_that_cannot_learn_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    for (flow, key, kind) in [
        (
            "tests/flows/valid/train-editor-tiny.toml",
            "actors.editor",
            "baseline.editor",
        ),
        (FLOW, "actors.policy", "rules.policy"),
    ] {
        let args = [
            "run",
            flow,
            "--set",
            &format!("run_dir={}", tmp.path().display()),
            "--set",
            &format!("{key}.kind=\"{kind}\""),
            "--set",
            &format!("{key}.settings={{}}"),
        ];
        let o = command(&args).output().unwrap();
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains(&format!("`{key}.kind`")) && t.contains("neural.editor"),
            "{t}"
        );
        assert!(!tmp.path().join("train-editor-tiny/store").exists());
    }
}

#[test]
fn a_truncated_sampler_is_refused_for_training() {
    let tmp = tempfile::tempdir().unwrap();
    let o = command(&[
        "run",
        FLOW,
        "--set",
        &format!("run_dir={}", tmp.path().display()),
        "--set",
        "actors.policy.settings.top_k=5",
    ])
    .output()
    .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("`actors.policy.settings.top_k`") && t.contains("top_k = 0"),
        "{t}"
    );
    assert!(!tmp.path().join("train-tiny/store").exists());
}

/// The reward chosen in the flow is what the learner gets: with `score + sg_iou` every
/// sample's reward is its branch's Checker score plus the SG-IoU estimate of the scene graph the
/// Checker reported, and the metrics log the reward before equal-reward groups are filtered.
#[test]
fn a_tiny_training_run_learns_from_the_reward_the_flow_chooses() {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&train_args(
        tmp.path(),
        &[
            "--set".into(),
            "cycle.reward_funcs=[\"score\", \"sg_iou\"]".into(),
            "--set".into(),
            "cycle.reward_weights=[1.0, 2.0]".into(),
            "--set".into(),
            "train.eval_every=0".into(),
        ],
    ));
    let dir = tmp.path().join("train-tiny");
    let m = check_metrics(&dir, 3);
    for s in &m {
        assert!(
            s.reward_mean_all.is_finite() && s.reward_std_all >= 0.0,
            "{s:?}"
        );
    }
    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    let mix = rlrig_contract::Reward {
        funcs: vec![
            rlrig_contract::RewardFunc::Score,
            rlrig_contract::RewardFunc::SgIou,
        ],
        weights: vec![1.0, 2.0],
    };
    let (mut samples, mut differ) = (0, 0);
    for (_, t) in store.committed_after(None, usize::MAX).unwrap() {
        let by_score = t.grpo_groups(&rlrig_contract::Reward::default()).unwrap();
        for (g, s) in t.grpo_groups(&mix).unwrap().iter().zip(&by_score) {
            for (a, b) in g.samples.iter().zip(&s.samples) {
                samples += 1;
                // sg_iou ∈ [0, 1]: the mixed reward lies within [score, score + 2].
                assert!(a.reward >= b.reward - 1e-12 && a.reward <= b.reward + 2.0 + 1e-12);
                differ += usize::from((a.reward - b.reward).abs() > 1e-9);
            }
        }
    }
    assert!(
        samples > 0 && differ > 0,
        "{differ} of {samples} rewards differ"
    );
}
