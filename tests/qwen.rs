//! The Qwen2.5-VL kinds in flows, through the real binary: `flows/qwen-tiny.toml` (Checker and
//! Policy in the whole cycle, untrained wiring on the tiny parity fixture) and
//! `flows/qwen-train-tiny.toml` (Reflection-GRPO's phase 1 through LoRA), whose adapters then
//! drive the Policy of another run.

mod common;

use common::{learner_metrics, rlrig_in};
use rlrig_contract::{Outcome, StepOutput};
use rlrig_store::TrajectoryStore;

#[test]
fn qwen_checks_and_proposes_in_the_whole_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, text) = rlrig_in(&["run", "flows/qwen-tiny.toml"], tmp.path());
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
        let (status, text) = rlrig_in(args, tmp.path());
        assert!(status.success(), "{text}");
        text
    };
    let text = run_ok(&["run", "flows/qwen-train-tiny.toml"]);
    assert!(
        text.contains("3 learner steps, weights version 3"),
        "{text}"
    );
    let run = tmp.path().join("qwen-train-tiny");
    let steps = learner_metrics(&run);
    assert_eq!(steps.len(), 3);
    assert!(
        steps.iter().all(|s| s["sequences"].as_u64().unwrap() > 0),
        "{steps:?}"
    );
    // The adapters moved away from the base model (KL to it > 0 after the first step).
    assert!(steps[2]["kl"].as_f64().unwrap() > 0.0, "{steps:?}");
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
