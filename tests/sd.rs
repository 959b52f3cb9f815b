//! The Stable Diffusion kinds in a flow: `flows/sd-tiny.toml` (untrained wiring on the tiny
//! parity fixtures) through the real binary.

use std::path::Path;
use std::process::Command;

use rlrig_contract::{Outcome, StepOutput};
use rlrig_store::TrajectoryStore;

#[test]
fn sd_and_instruct_pix2pix_run_the_whole_cycle_on_the_tiny_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args(["run", "flows/sd-tiny.toml", "--set", "prompts.count=4"])
        .args(["--set", &format!("run_dir={}", tmp.path().display())])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && text.contains("4 done, 0 failed"),
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
        let o = Command::new(env!("CARGO_BIN_EXE_rlrig"))
            .args(["run", "flows/sd3-tiny.toml", "--set", "prompts.count=4"])
            .args(["--set", &format!("run_dir={}", tmp.path().display())])
            .args(extra)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status, text)
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
