//! The Qwen2.5-VL kinds in flows, through the real binary: `flows/qwen-tiny.toml` (Checker and
//! Policy in the whole cycle, untrained wiring on the tiny parity fixture) and
//! `flows/qwen-train-tiny.toml` (Reflection-GRPO's phase 1 through LoRA), whose adapters then
//! drive the Policy of another run.

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
fn qwen_checks_and_proposes_in_the_whole_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, text) = rlrig(&["run", "flows/qwen-tiny.toml"], tmp.path());
    assert!(
        status.success() && text.contains("4 done, 0 failed"),
        "{text}"
    );
    let store = TrajectoryStore::open(&tmp.path().join("qwen-tiny/store")).unwrap();
    let mut proposals = 0;
    for id in 0..4 {
        let t = store.get(id).unwrap().unwrap();
        assert!(matches!(t.outcome, Outcome::Done { .. }));
        for s in &t.steps {
            match &s.output {
                StepOutput::Edit(p) => {
                    // Sampled tokens with one log-prob each, every one a probability.
                    assert!(!p.token_ids.is_empty());
                    assert_eq!(p.token_ids.len(), p.logprobs.len());
                    assert!(p.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
                    proposals += 1;
                }
                StepOutput::Report(r) if s.actor == "checker" => {
                    // The random-weight model's answers are unreadable: nothing seen.
                    assert!(r.reflection.contains("unreadable"), "{}", r.reflection);
                }
                _ => {}
            }
        }
    }
    assert_eq!(proposals, 8, "two rounds of four trajectories");
}

#[test]
fn qwen_policy_trains_lora_adapters_and_a_flow_proposes_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run_ok = |args: &[&str]| {
        let (status, text) = rlrig(args, tmp.path());
        assert!(status.success(), "{text}");
        text
    };
    let text = run_ok(&["run", "flows/qwen-train-tiny.toml"]);
    assert!(
        text.contains("3 learner steps, weights version 3"),
        "{text}"
    );
    let run = tmp.path().join("qwen-train-tiny");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 3);
    for s in &steps {
        assert!(s["loss"].as_f64().unwrap().is_finite(), "{s}");
        assert!(s["sequences"].as_u64().unwrap() > 0, "{s}");
    }
    // The adapters moved away from the base model (KL to it > 0 after the first step).
    assert!(steps[2]["kl"].as_f64().unwrap() > 0.0, "{metrics}");
    // The checkpoint holds the adapters, not a copy of the model, and a PEFT directory …
    let learner = run.join("checkpoint/learner");
    assert!(!learner.join("policy.bpk").exists());
    let adapter = learner.join("adapter");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 4);
    // … which drives a `policy.qwen2-vl` actor in another flow.
    let set = format!("actors.policy.settings.adapter=\"{}\"", adapter.display());
    let text = run_ok(&[
        "run",
        "flows/qwen-tiny.toml",
        "--set",
        "prompts.count=2",
        "--set",
        &set,
    ]);
    assert!(text.contains("2 done, 0 failed"), "{text}");
}
