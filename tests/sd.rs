//! The Stable Diffusion kinds in a flow: `flows/sd-tiny.toml` (untrained wiring on the tiny
//! parity fixtures) through the real binary.

mod common;

use common::{learner_metrics, rlrig_in};
use rlrig_contract::{Outcome, StepOutput};
use rlrig_store::TrajectoryStore;

#[test]
fn sd_and_instruct_pix2pix_run_the_whole_cycle_on_the_tiny_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, text) = rlrig_in(
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
        rlrig_in(&args, tmp.path())
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
        let (status, text) = rlrig_in(args, tmp.path());
        assert!(status.success(), "{text}");
        text
    };
    let text = run_ok(&["run", "flows/sd3-train-tiny.toml"]);
    assert!(
        text.contains("3 learner steps, weights version 3"),
        "{text}"
    );
    let run = tmp.path().join("sd3-train-tiny");
    let steps = learner_metrics(&run);
    assert_eq!(steps.len(), 3);
    // The adapters moved away from the base model (KL to it > 0 after the first step).
    assert!(steps[2]["kl"].as_f64().unwrap() > 0.0, "{steps:?}");
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
