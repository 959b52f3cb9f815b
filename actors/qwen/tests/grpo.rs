//! The Qwen2.5-VL roles and their GRPO learner on the tiny random-weight fixture: the Policy's
//! reported log-probs are exactly what the learner computes; a step moves the adapters alone; a
//! restored learner takes exactly the original's next step; the Checker reads or refuses an
//! answer as configured.

use std::path::{Path, PathBuf};

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, EditPolicy, GroupSample, GrpoGroup, GrpoLearner, Image,
    ProposeRequest, SceneGraph,
};
use rlrig_models::grpo::LearnerConfig;
use rlrig_qwen::burn::tensor::Device;
use rlrig_qwen::kinds::{CheckerSettings, PolicySettings, QwenChecker, QwenPolicy, Unreadable};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_5_vl")
}

fn scene() -> SceneGraph {
    rlrig_contract::sg::read_jsonl(
        r#"{"items":[{"item_id":0,"label":"circle","attributes":["red"]},{"item_id":1,"label":"square","attributes":["blue"]}],"relations":[{"triple_id":0,"item1":0,"relation":"left of","item2":1}]}"#,
        "t",
    )
    .unwrap()
    .remove(0)
}

fn image() -> Image {
    Image::from_png(&std::fs::read(root().join("image_a.png")).unwrap()).unwrap()
}

fn policy_settings() -> PolicySettings {
    serde_json::from_value(serde_json::json!({
        "path": "tiny", "max_new_tokens": 5, "lora_rank": 2, "lora_alpha": 4.0
    }))
    .unwrap()
}

fn learner_config() -> LearnerConfig {
    let mut c = LearnerConfig {
        lr: 1e-2,
        ..LearnerConfig::default()
    };
    c.grpo.beta = 0.05;
    c
}

/// A group of the policy's proposals for one input, with rewards 0, 1, 0.5, 0.25.
fn group(policy: &mut QwenPolicy) -> GrpoGroup {
    let report = CheckReport::new(
        vec![],
        vec![],
        0.5,
        "the red circle is right of the blue square, not left of it.".into(),
    );
    let requests: Vec<ProposeRequest> = (0..4)
        .map(|seed| ProposeRequest {
            prompt: scene(),
            image: image(),
            report: report.clone(),
            seed,
        })
        .collect();
    let proposals = policy.propose(&requests).unwrap();
    GrpoGroup {
        trajectory: 1,
        round: 0,
        prompt: scene(),
        image: Some(image()),
        report: Some(report),
        samples: proposals
            .into_iter()
            .zip([0.0, 1.0, 0.5, 0.25])
            .map(|(p, reward)| GroupSample {
                proposal: Some(p),
                chain: None,
                reward,
            })
            .collect(),
    }
}

#[test]
fn the_learner_reproduces_the_policys_log_probs_and_moves_only_the_adapters() {
    let device = Device::default();
    let settings = policy_settings();
    let mut policy = QwenPolicy::new(&settings, &root(), &device).unwrap();
    let g = group(&mut policy);
    let mut learner = settings
        .learner(&root(), &device.autodiff(), learner_config())
        .unwrap();
    // Fresh adapters (B = 0) leave the model as the policy has it: the same log-probs, bit for bit.
    let prompt = learner_prompt(&settings, &g);
    for s in &g.samples {
        let p = s.proposal.as_ref().unwrap();
        assert!(!p.token_ids.is_empty());
        let again = learner.score(&prompt, &p.token_ids).unwrap();
        let worst = max_abs_diff(&again, &p.logprobs);
        assert_eq!(worst, 0.0, "{again:?} vs {:?}", p.logprobs);
    }
    // Sampled special tokens (here the image placeholder) are scored as text after the prompt.
    assert_eq!(learner.score(&prompt, &[398, 12, 398]).unwrap().len(), 3);
    let before = learner.adapters().unwrap();
    let stats = GrpoLearner::step(&mut learner, std::slice::from_ref(&g)).unwrap();
    assert_eq!(
        (stats.version, stats.sequences, stats.filtered_groups),
        (1, 4, 0)
    );
    assert!(stats.loss.is_finite() && stats.kl.is_finite());
    let after = learner.adapters().unwrap();
    assert_ne!(before, after, "the adapters moved");
    // The policy takes the update; its proposals now carry the new version.
    let update = GrpoLearner::update(&learner).unwrap();
    EditPolicy::update(&mut policy, &update).unwrap();
    let g2 = group(&mut policy);
    assert!(
        g2.samples
            .iter()
            .all(|s| s.proposal.as_ref().unwrap().policy_version == 1)
    );
    // Its log-probs are the learner's at the new adapters, bit for bit.
    for s in &g2.samples {
        let p = s.proposal.as_ref().unwrap();
        let again = learner.score(&prompt, &p.token_ids).unwrap();
        let worst = max_abs_diff(&again, &p.logprobs);
        assert!(
            worst == 0.0,
            "after the update: {again:?} vs {:?}",
            p.logprobs
        );
    }
    // A second step: the KL to the base (adapters off) is no longer zero.
    let stats = GrpoLearner::step(&mut learner, std::slice::from_ref(&g2)).unwrap();
    assert!(stats.kl > 0.0, "{stats:?}");
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn learner_prompt(settings: &PolicySettings, g: &GrpoGroup) -> rlrig_qwen::model::Prompt {
    let model =
        rlrig_qwen::model::QwenVl::from_dir(&root().join("tiny"), &Device::default()).unwrap();
    let text = settings.text(&g.prompt.prompt(), &g.report.as_ref().unwrap().reflection);
    model.prompt(g.image.as_ref(), &text).unwrap()
}

#[test]
fn a_restored_learner_takes_the_originals_next_step() {
    let device = Device::default();
    let settings = policy_settings();
    let mut policy = QwenPolicy::new(&settings, &root(), &device).unwrap();
    let g = group(&mut policy);
    let ad = device.autodiff();
    let mut a = settings.learner(&root(), &ad, learner_config()).unwrap();
    GrpoLearner::step(&mut a, std::slice::from_ref(&g)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    GrpoLearner::save(&a, dir.path()).unwrap();
    // The checkpoint holds the adapters, not the base weights, and a PEFT directory.
    assert!(
        dir.path()
            .join("adapter/adapter_model.safetensors")
            .is_file()
    );
    let saved = std::fs::metadata(dir.path().join("adapters.bpk"))
        .unwrap()
        .len();
    let base = std::fs::metadata(root().join("tiny/model.safetensors"))
        .unwrap()
        .len();
    assert!(
        saved < base / 4,
        "adapters.bpk is {saved} bytes, the model {base}"
    );
    let mut b = settings.learner(&root(), &ad, learner_config()).unwrap();
    GrpoLearner::restore(&mut b, dir.path()).unwrap();
    assert_eq!(GrpoLearner::version(&b), 1);
    assert_eq!(a.adapters().unwrap(), b.adapters().unwrap());
    GrpoLearner::step(&mut a, std::slice::from_ref(&g)).unwrap();
    GrpoLearner::step(&mut b, std::slice::from_ref(&g)).unwrap();
    assert_eq!(
        a.adapters().unwrap(),
        b.adapters().unwrap(),
        "the same next step"
    );
}

#[test]
fn the_checker_reads_or_refuses_an_unreadable_answer_as_configured() {
    let device = Device::default();
    let request = CheckRequest {
        prompt: scene(),
        image: image(),
    };
    let settings = |unreadable: Unreadable| CheckerSettings {
        path: "tiny".into(),
        template: "{question}".into(),
        max_new_tokens: 6,
        unreadable,
        adapter: None,
    };
    // The random-weight model answers noise: no JSON object in it.
    let mut strict = QwenChecker::new(&settings(Unreadable::Error), &root(), &device).unwrap();
    let e = strict
        .check(std::slice::from_ref(&request))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no JSON object"), "{e}");
    let mut lenient =
        QwenChecker::new(&settings(Unreadable::NothingSeen), &root(), &device).unwrap();
    let r = lenient
        .check(std::slice::from_ref(&request))
        .unwrap()
        .remove(0);
    assert_eq!(r.score, 0.0);
    assert_eq!(r.items.len(), 2);
    assert!(r.reflection.contains("unreadable"), "{}", r.reflection);
    // A bad template is refused by name.
    let mut bad = settings(Unreadable::Error);
    bad.template = "{question} {image}".into();
    assert!(bad.check().unwrap_err().to_string().contains("{image}"));
}
