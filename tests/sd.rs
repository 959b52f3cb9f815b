//! The Stable Diffusion kinds in a flow: `flows/sd-tiny.toml` (untrained wiring on the tiny
//! parity fixtures) through the real binary.

use std::path::Path;
use std::process::Command;

use rlrig_contract::{Outcome, StepOutput};
use rlrig_store::TrajectoryStore;

/// `rlrig ARGS --set run_dir=RUN_DIR` from the repository root: its exit status and its
/// stdout and stderr together.
fn rlrig(args: &[&str], run_dir: &Path) -> (std::process::ExitStatus, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args(args)
        .args(["--set", &format!("run_dir={}", run_dir.display())])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status, text)
}

#[test]
fn sd_and_instruct_pix2pix_run_the_whole_cycle_on_the_tiny_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, text) = rlrig(
        &["run", "flows/sd-tiny.toml", "--set", "prompts.count=4"],
        tmp.path(),
    );
    assert!(
        status.success() && text.contains("4 done, 0 failed"),
        "{text}"
    );
    let store = TrajectoryStore::open(&tmp.path().join("sd-tiny/store")).unwrap();
    let mut edits = 0;
    for id in 0..4 {
        let t = store.get(id).unwrap().unwrap();
        assert!(matches!(t.outcome, Outcome::Done { .. }));
        for s in &t.steps {
            if let StepOutput::Image(img) = &s.output {
                // 16×16 latents through the tiny VAE (×2).
                assert_eq!((img.width(), img.height()), (32, 32));
                edits += usize::from(s.actor == "editor");
            }
        }
    }
    assert!(edits > 0, "the InstructPix2Pix editor ran");
}

#[test]
fn sd3_runs_the_whole_cycle_on_the_tiny_fixtures_and_a_bad_size_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "flows/sd3-tiny.toml", "--set", "prompts.count=4"];
        args.extend_from_slice(extra);
        rlrig(&args, tmp.path())
    };
    let (status, text) = run(&[]);
    assert!(
        status.success() && text.contains("4 done, 0 failed"),
        "{text}"
    );
    let store = TrajectoryStore::open(&tmp.path().join("sd3-tiny/store")).unwrap();
    for id in 0..4 {
        let t = store.get(id).unwrap().unwrap();
        assert!(matches!(t.outcome, Outcome::Done { .. }));
        let first = t.steps.iter().find(|s| s.actor == "diffuser").unwrap();
        let StepOutput::Image(img) = &first.output else {
            panic!("the diffuser made no image")
        };
        // 12×12 latents (6×6 patches, the whole position grid) through the tiny VAE (×2).
        assert_eq!((img.width(), img.height()), (24, 24));
    }
    drop(store);
    // 32 px would need 8×8 patches of a 6×6 position grid: refused at start, naming `size`.
    let (status, text) = run(&["--set", "actors.diffuser.settings.size=32", "--overwrite"]);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("`size` = 32") && text.contains("up to 24"),
        "{text}"
    );
}

#[test]
fn sd3_trains_lora_adapters_with_flow_grpo_and_a_flow_generates_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run_ok = |args: &[&str]| {
        let (status, text) = rlrig(args, tmp.path());
        assert!(status.success(), "{text}");
        text
    };
    let text = run_ok(&["run", "flows/sd3-train-tiny.toml"]);
    assert!(
        text.contains("3 learner steps, weights version 3"),
        "{text}"
    );
    let run = tmp.path().join("sd3-train-tiny");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 3);
    for s in &steps {
        assert!(s["loss"].as_f64().unwrap().is_finite(), "{s}");
    }
    // The adapters moved away from the base model (KL to it > 0 after the first step).
    assert!(steps[2]["kl"].as_f64().unwrap() > 0.0, "{metrics}");
    // The checkpoint's PEFT directory drives a `diffuser.sd3` actor in another flow.
    let adapter = run.join("checkpoint/learner/adapter");
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let set = format!("actors.diffuser.settings.adapter=\"{}\"", adapter.display());
    let text = run_ok(&[
        "run",
        "flows/sd3-tiny.toml",
        "--set",
        "prompts.count=2",
        "--set",
        &set,
    ]);
    assert!(text.contains("2 done, 0 failed"), "{text}");
}
