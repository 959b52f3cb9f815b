//! Flow-GRPO for the Editor (phase 2) and the Diffuser: stored chains reproduce their
//! log-probabilities, the KL to the reference starts at zero, a step raises the
//! advantage-weighted objective (with a source image or without), clipping binds where the
//! ratio leaves its range, and the learner's state survives save / restore.

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::{perturb, tiny, values};
use rlrig_contract::{
    CheckReport, DenoisingChain, EditProposal, GroupSample, GrpoGroup, GrpoLearner,
};
use rlrig_models::Dit;
use rlrig_models::flow_grpo::{FlowLearner, FlowLearnerConfig};
use rlrig_models::grpo::{GrpoConfig, group_advantages};
use rlrig_models::image::images_to_tensor;
use rlrig_models::rectified_flow::{self, SamplerConfig};
use rlrig_models::text::Tokenizer;
use rlrig_world::{Canvas, sample};

const PROMPT: &str = "move the red circle to the left of the blue square";

/// A perturbed tiny Editor's weights file. The device's generator (which `Dit::new` draws its
/// initial weights from) is shared by the tests running at once, so two calls with one seed
/// need not agree: a test that needs one network twice loads it twice from these bytes.
fn editor_bytes(seed: u64) -> Vec<u8> {
    let device = Device::flex();
    device.seed(seed);
    let model = perturb(Dit::new(&tiny(8, 6), &device).unwrap(), 0.05, seed);
    rlrig_models::weights::to_bytes(&model).unwrap()
}

/// The Editor of `bytes` on an autodiff device, loaded as the trainer loads its starting
/// weights (so that its parameters are leaves of the graph).
fn load(bytes: &[u8]) -> Dit {
    rlrig_models::weights::from_bytes::<Dit>(
        bytes.to_vec(),
        std::path::Path::new("<test editor>"),
        None,
        &Device::flex().autodiff(),
    )
    .unwrap()
}

fn editor(seed: u64) -> Dit {
    load(&editor_bytes(seed))
}

fn sampler() -> SamplerConfig {
    SamplerConfig {
        steps: 3,
        guidance: 1.0,
        noise_scale: 0.7,
    }
}

/// A group of edits of one world image, sampled by `model` with the SDE sampler, with the
/// given rewards.
fn group(model: &Dit, rewards: &[f64], seed: u64) -> GrpoGroup {
    group_window(model, rewards, seed, sampler().steps)
}

/// [`group`] with SDE noise in the first `window` steps only.
fn group_window(model: &Dit, rewards: &[f64], seed: u64, window: usize) -> GrpoGroup {
    let g = rewards.len();
    let device = model.device();
    let scene = sample(&Canvas::new(32).unwrap(), 3, seed);
    let text = Tokenizer::new(model.config().text_len)
        .batch(&vec![PROMPT; g], &device)
        .unwrap();
    let cond = images_to_tensor(&vec![scene.image.clone(); g], &device).unwrap();
    let seeds: Vec<u64> = (0..g as u64).map(|i| seed * 100 + i).collect();
    let out =
        rectified_flow::sample_sde_window(model, &text, Some(&cond), &sampler(), window, &seeds);
    let samples = (0..g)
        .map(|i| GroupSample {
            proposal: Some(EditProposal {
                edit_prompt: PROMPT.into(),
                token_ids: vec![],
                logprobs: vec![],
                policy_version: 0,
            }),
            chain: Some(
                DenoisingChain::new(
                    0,
                    0.7,
                    1.0,
                    [3, 32, 32],
                    &out.states[i],
                    out.log_probs[i].clone(),
                )
                .and_then(|c| c.within_schedule(sampler().steps))
                .unwrap(),
            ),
            reward: rewards[i],
        })
        .collect();
    GrpoGroup {
        trajectory: seed,
        round: 1,
        prompt: scene.graph,
        image: Some(scene.image),
        report: Some(CheckReport {
            items: vec![],
            relations: vec![],
            score: 0.0,
            reflection: String::new(),
            graph: None,
            estimates: None,
        }),
        samples,
    }
}

/// A Diffuser's group: images of one world prompt sampled from noise by `model` (no source
/// image, no edit prompt), with the given rewards.
fn generated_group(model: &Dit, rewards: &[f64], seed: u64) -> GrpoGroup {
    let g = rewards.len();
    let device = model.device();
    let scene = sample(&Canvas::new(32).unwrap(), 3, seed);
    let caption = scene.graph.prompt();
    let text = Tokenizer::new(model.config().text_len)
        .batch(&vec![caption.as_str(); g], &device)
        .unwrap();
    let seeds: Vec<u64> = (0..g as u64).map(|i| seed * 100 + i).collect();
    let out = rectified_flow::sample_sde_window(model, &text, None, &sampler(), 2, &seeds);
    let samples = (0..g)
        .map(|i| GroupSample {
            proposal: None,
            chain: Some(
                DenoisingChain::new(
                    0,
                    0.7,
                    1.0,
                    [3, 32, 32],
                    &out.states[i],
                    out.log_probs[i].clone(),
                )
                .and_then(|c| c.within_schedule(sampler().steps))
                .unwrap(),
            ),
            reward: rewards[i],
        })
        .collect();
    GrpoGroup {
        trajectory: seed,
        round: 0,
        prompt: scene.graph,
        image: None,
        report: None,
        samples,
    }
}

/// Per sample, the sum over its chain's steps of its transition's log-probability under
/// `model`: an edit's given its source image and edit prompt, a generated image's given its
/// prompt.
fn chain_log_probs(model: &Dit, g: &GrpoGroup) -> Vec<f64> {
    let device = model.device();
    let n = g.samples.len();
    let caption = g.prompt.prompt();
    let text = if g.image.is_some() {
        PROMPT
    } else {
        caption.as_str()
    };
    let text = Tokenizer::new(model.config().text_len)
        .batch(&vec![text; n], &device)
        .unwrap();
    let cond = g
        .image
        .as_ref()
        .map(|image| images_to_tensor(&vec![image.clone(); n], &device).unwrap());
    let state = |k: usize| {
        let v: Vec<f32> = g
            .samples
            .iter()
            .flat_map(|s| s.chain.as_ref().unwrap().state(k))
            .collect();
        burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(v, [n, 3, 32, 32]),
            &device,
        )
    };
    let mut total = vec![0.0; n];
    for k in 0..g.samples[0].chain.as_ref().unwrap().steps() {
        let lp = rectified_flow::transition_log_prob(
            model,
            state(k),
            state(k + 1),
            k,
            &text,
            cond.as_ref(),
            &sampler(),
        );
        for (t, v) in total.iter_mut().zip(values(lp)) {
            *t += f64::from(v);
        }
    }
    total
}

fn learner(model: Dit, beta: f64, lr: f64) -> FlowLearner {
    FlowLearner::new(
        model,
        FlowLearnerConfig {
            grpo: GrpoConfig {
                beta,
                epsilon: 1e-3,
                epsilon_high: 1e-3,
                ..GrpoConfig::default()
            },
            lr,
            ..FlowLearnerConfig::default()
        },
    )
}

#[test]
fn stored_chains_reproduce_their_log_probs() {
    let model = editor(1).valid();
    let g = group(&model, &[1.0, 0.0, 0.5], 3);
    let recomputed = chain_log_probs(&model, &g);
    for (s, r) in g.samples.iter().zip(recomputed) {
        let chain = s.chain.as_ref().unwrap();
        assert_eq!(chain.steps(), 3);
        let stored: f64 = chain.log_probs.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (stored - r).abs() < 1e-4,
            "stored {stored}, recomputed from the f16 states {r}"
        );
    }
    // Each row has its own noise; one seed gives one chain whatever the batch.
    let a = g.samples[0].chain.as_ref().unwrap();
    let b = g.samples[1].chain.as_ref().unwrap();
    assert_ne!(a.state(0), b.state(0));
    let alone = group(&model, &[1.0], 3);
    assert_eq!(
        alone.samples[0].chain.as_ref().unwrap().state(3),
        a.state(3)
    );
}

#[test]
fn a_step_starts_with_zero_kl_and_raises_the_advantage_weighted_log_prob() {
    let mut l = learner(editor(2), 0.04, 1e-4);
    let g = group(&l.model(), &[1.0, 0.0, 0.0, 0.5], 5);
    let adv = group_advantages(&[1.0, 0.0, 0.0, 0.5], true).unwrap();
    let objective = |m: &Dit| -> f64 {
        chain_log_probs(m, &g)
            .iter()
            .zip(&adv)
            .map(|(lp, a)| lp * a)
            .sum()
    };
    let before = objective(&l.model());
    let stats = l.step(std::slice::from_ref(&g)).unwrap();
    assert_eq!(stats.version, 1);
    assert_eq!(stats.sequences, 4);
    assert!(
        stats.kl.abs() < 1e-9,
        "identical to the reference: KL {}",
        stats.kl
    );
    assert_eq!(stats.clip_fraction, 0.0, "ratios are 1 on the first step");
    let after = objective(&l.model());
    assert!(after > before, "objective {before} → {after}");
    // Now the weights differ from the reference.
    let again = l.step(std::slice::from_ref(&g)).unwrap();
    assert!(again.kl > 0.0, "KL after a step: {}", again.kl);
}

#[test]
fn a_diffusers_groups_are_learned_from_the_prompt_alone() {
    let device = Device::flex();
    device.seed(21);
    let bytes = rlrig_models::weights::to_bytes(&perturb(
        Dit::new(&tiny(8, 3), &device).unwrap(),
        0.05,
        21,
    ))
    .unwrap();
    let rewards = [0.0, 1.0, 0.25, 0.0];
    let mut l = learner(load(&bytes), 0.04, 1e-4);
    let g = generated_group(&l.model(), &rewards, 23);
    let adv = group_advantages(&rewards, true).unwrap();
    let objective = |m: &Dit| -> f64 {
        chain_log_probs(m, &g)
            .iter()
            .zip(&adv)
            .map(|(lp, a)| lp * a)
            .sum()
    };
    let before = objective(&l.model());
    let stats = l.step(std::slice::from_ref(&g)).unwrap();
    // On-policy: the recomputed log-probs (text of the prompt, no source image) are the
    // stored ones, so no ratio clips.
    assert_eq!((stats.version, stats.sequences), (1, 4));
    assert_eq!(stats.clip_fraction, 0.0, "ratios are 1 on the first step");
    assert!(stats.kl.abs() < 1e-9, "KL {}", stats.kl);
    let after = objective(&l.model());
    assert!(after > before, "objective {before} → {after}");
    // An Editor's learner refuses a Diffuser's group, and the other way round.
    let mut editor_learner = learner(editor(22), 0.0, 1e-4);
    let err = editor_learner
        .step(std::slice::from_ref(&g))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lacks a source image"), "{err}");
    let edits = group(&editor(22).valid(), &rewards, 24);
    let err = l.step(&[edits]).unwrap_err().to_string();
    assert!(err.contains("has a source image"), "{err}");
}

#[test]
fn window_chains_are_trained_with_their_schedules_coefficients() {
    let mut l = learner(editor(6), 0.04, 1e-4);
    let g = group_window(&l.model(), &[1.0, 0.0, 0.0, 0.5], 13, 2);
    let chain = g.samples[0].chain.as_ref().unwrap();
    assert_eq!((chain.steps(), chain.schedule_steps()), (2, 3));
    // On-policy, the recomputed log-probabilities equal the stored ones only when step k is
    // taken with the 3-step schedule's coefficients: a ratio off by more than ε would clip.
    let stats = l.step(std::slice::from_ref(&g)).unwrap();
    assert_eq!(stats.clip_fraction, 0.0, "ratios are 1 on the first step");
    assert_eq!(stats.sequences, 4);
    assert!(stats.kl.abs() < 1e-9, "KL {}", stats.kl);
}

#[test]
fn micro_batches_take_the_same_step_as_one_pass() {
    let bytes = editor_bytes(7);
    let g = group(&load(&bytes).valid(), &[1.0, 0.0, 0.0, 0.5, 0.25], 17);
    // Stored log-probs a little off, so ratios differ from 1 and some clip.
    let mut g = g;
    for (i, s) in g.samples.iter_mut().enumerate() {
        let c = s.chain.as_mut().unwrap();
        c.log_probs
            .iter_mut()
            .for_each(|v| *v += 1e-3 * (i as f32 - 2.0));
    }
    let step = |micro_batch: usize| {
        let mut l = FlowLearner::new(
            load(&bytes),
            FlowLearnerConfig {
                grpo: GrpoConfig {
                    beta: 0.04,
                    epsilon: 1e-3,
                    epsilon_high: 1e-3,
                    ..GrpoConfig::default()
                },
                lr: 1e-3,
                micro_batch,
                ..FlowLearnerConfig::default()
            },
        );
        let stats = l.step(std::slice::from_ref(&g)).unwrap();
        (stats, values_of(&l))
    };
    let (whole, w) = step(64);
    let (chunked, c) = step(2); // chunks of 2, 2 and 1 chains
    // The loss is a mean of terms of size ≈ |A| ≈ 1 that nearly cancel: compare at that scale.
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 + 1e-4 * x.abs().max(y.abs());
    assert!(close(whole.loss, chunked.loss), "{whole:?} vs {chunked:?}");
    assert!(close(whole.kl, chunked.kl), "{whole:?} vs {chunked:?}");
    assert!(close(whole.clip_fraction, chunked.clip_fraction));
    assert!(whole.clip_fraction > 0.0 && whole.clip_fraction < 1.0);
    // The logged loss is the sum of the differentiated chunk terms, so equal losses mean the
    // chunks' gradients are weighed as in one pass. AdamW's first step moves each weight by
    // about ±lr (the sign of its gradient): the same moves.
    let moved_apart = w
        .iter()
        .zip(&c)
        .filter(|(a, b)| (*a - *b).abs() > 5e-4)
        .count();
    assert!(
        moved_apart * 1000 < w.len(),
        "{moved_apart} of {} weights stepped differently",
        w.len()
    );
}

#[test]
fn clipping_binds_where_the_ratio_leaves_the_range() {
    let bytes = editor_bytes(3);
    let base = group(&load(&bytes).valid(), &[1.0, 0.0, 0.0, 0.0], 7);
    for (shift, expected) in [(1.0f32, 0.75), (-1.0, 0.25)] {
        // Stored log-probs one nat off: ρ = e^∓1 on every step. With ρ < 1 − ε the clip binds
        // for negative advantages (3 of 4 samples); with ρ > 1 + ε for positive ones (1 of 4).
        let mut g = base.clone();
        for s in &mut g.samples {
            let c = s.chain.as_mut().unwrap();
            c.log_probs.iter_mut().for_each(|v| *v += shift);
        }
        let mut l = learner(load(&bytes), 0.0, 1e-4);
        let stats = l.step(&[g]).unwrap();
        assert!(
            (stats.clip_fraction - expected).abs() < 1e-6,
            "shift {shift}: clip fraction {}",
            stats.clip_fraction
        );
    }
}

#[test]
fn equal_rewards_are_filtered_and_chainless_samples_refused() {
    let mut l = learner(editor(4), 0.0, 1e-4);
    let model = l.model();
    let flat = group(&model, &[0.5, 0.5], 9);
    let stats = l.step(&[flat]).unwrap();
    assert_eq!(
        (stats.filtered_groups, stats.sequences, stats.version),
        (1, 0, 0)
    );
    let mut g = group(&model, &[1.0, 0.0], 9);
    g.samples[1].chain = None;
    let err = l.step(&[g]).unwrap_err().to_string();
    assert!(err.contains("no denoising chain"), "{err}");
}

#[test]
fn the_learner_saves_and_restores_weights_optimiser_and_version() {
    let bytes = editor_bytes(5);
    let mut a = learner(load(&bytes), 0.04, 1e-3);
    let g = group(&a.model(), &[1.0, 0.0, 0.25], 11);
    a.step(std::slice::from_ref(&g)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    GrpoLearner::save(&a, dir.path()).unwrap();
    let mut b = learner(load(&bytes), 0.04, 1e-3);
    GrpoLearner::restore(&mut b, dir.path()).unwrap();
    assert_eq!(GrpoLearner::version(&b), 1);
    let max_diff = |a: &FlowLearner, b: &FlowLearner| {
        values_of(a)
            .iter()
            .zip(&values_of(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    let fresh = learner(load(&bytes), 0.04, 1e-3);
    assert!(max_diff(&a, &fresh) > 1e-5, "the step changed the weights");
    assert_eq!(max_diff(&a, &b), 0.0, "restored weights are the saved ones");
    // The next steps agree too (AdamW's moments came back: without them the next update of
    // each weight would be a first step's, ≈ lr = 1e-3, not a second one's). flex's kernels
    // are not bit-reproducible, hence the tolerances.
    let sa = a.step(std::slice::from_ref(&g)).unwrap();
    let sb = b.step(std::slice::from_ref(&g)).unwrap();
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1e-9);
    assert!(
        close(sa.loss, sb.loss) && close(sa.kl, sb.kl),
        "{sa:?} vs {sb:?}"
    );
    let diff = max_diff(&a, &b);
    assert!(diff < 1e-5, "weights after one more step differ by {diff}");
}

fn values_of(l: &FlowLearner) -> Vec<f32> {
    let m = l.model();
    let mut out = Vec::new();
    struct Collect<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.extend(values(param.val()));
        }
    }
    m.visit(&mut Collect(&mut out));
    out
}
