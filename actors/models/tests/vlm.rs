//! The Checker's and the Policy's VLMs: masks, decoding, scoring, the roles, weights and errors.

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{
    CheckReport, CheckRequest, Checker, EditPolicy, ItemVerdict, ProposeRequest, RelationVerdict,
};
use rlrig_models::checker::questions;
use rlrig_models::pretrain::EVAL_SEED;
use rlrig_models::text::{EOS, Tokenizer};
use rlrig_models::vlm::{CheckerNet, VlmConfig};
use rlrig_models::vlm_data::{Pool, Repairs, problem_scene};
use rlrig_models::vlm_policy::{Decoding, PolicyInput, PolicyNet};
use rlrig_models::vlm_train::policy_example;
use rlrig_models::weights::{self, WeightsError};
use rlrig_models::{CheckerSettings, NeuralChecker, NeuralPolicy, PolicySettings};
use rlrig_world::Canvas;

fn tiny(base: VlmConfig) -> VlmConfig {
    VlmConfig {
        width: 32,
        depth: 2,
        heads: 2,
        ..base
    }
}

fn canvas() -> Canvas {
    Canvas::new(32).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn a_question_is_answered_the_same_alone_or_beside_others() {
    let device = Device::flex();
    device.seed(1);
    let net = CheckerNet::new(&tiny(VlmConfig::checker()), &device).unwrap();
    let scene = problem_scene(&canvas(), 5, 3, &Pool::default(), 0.0);
    let qs: Vec<Vec<u32>> = questions(&scene.graph)
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert!(qs.len() >= 3, "{qs:?}");
    let together = net
        .answer(
            std::slice::from_ref(&scene.image),
            std::slice::from_ref(&qs),
        )
        .unwrap();
    for (k, q) in qs.iter().enumerate() {
        let alone = net
            .answer(std::slice::from_ref(&scene.image), &[vec![q.clone()]])
            .unwrap();
        assert!(close(&alone[0].0, &together[k].0, 1e-5), "question {k}");
        assert!(close(&alone[0].1, &together[k].1, 1e-5), "question {k}");
    }
}

#[test]
fn questions_that_do_not_fit_one_row_go_to_the_next() {
    let device = Device::flex();
    let net = CheckerNet::new(
        &VlmConfig {
            text_len: 10,
            ..tiny(VlmConfig::checker())
        },
        &device,
    )
    .unwrap();
    let tok = Tokenizer::full(64);
    let q = |t: &str| tok.tokens(t).unwrap();
    let asked = vec![
        q("red circle"),
        q("red circle left of blue square"),
        q("blue square"),
    ];
    let (rows, at) = net.pack(&asked).unwrap();
    // `<bos>` + words: 3 + 7 tokens fill the first row; the third question starts another.
    assert_eq!(rows.ids.len(), 2);
    assert_eq!(at, vec![(0, 0), (0, 3), (1, 0)]);
    let two = net
        .pack(&[q("red circle"), q("blue square"), q("green triangle")])
        .unwrap();
    assert_eq!(two.1, vec![(0, 0), (0, 3), (0, 6)]);
    let too_long = q("red circle left of blue square ; green triangle above");
    assert!(net.pack(&[too_long]).is_err());
}

fn policy_inputs(n: u64) -> (Vec<PolicyInput>, Vec<Vec<u32>>) {
    (0..n)
        .map(|i| {
            policy_example(
                &problem_scene(&canvas(), EVAL_SEED, i, &Pool::default(), 0.0),
                Repairs::Rule,
                0,
            )
            .unwrap()
        })
        .unzip()
}

#[test]
fn the_policy_returns_the_log_probs_that_rescoring_gives() {
    let device = Device::flex();
    device.seed(2);
    let net = PolicyNet::new(&tiny(VlmConfig::policy()), &device).unwrap();
    let (inputs, _) = policy_inputs(4);
    for (greedy, temperature, top_k) in [(false, 1.0, 0), (false, 0.7, 5), (true, 1.0, 0)] {
        let decoding = Decoding {
            greedy,
            temperature,
            top_k,
            max_tokens: 8,
            grammar: greedy,
        };
        let mut rngs: Vec<ChaCha8Rng> = (0..4).map(ChaCha8Rng::seed_from_u64).collect();
        let decoded = net.decode(&inputs, &decoding, &mut rngs).unwrap();
        let tokens: Vec<Vec<u32>> = decoded.iter().map(|d| d.tokens.clone()).collect();
        let rescored = net.score(&inputs, &tokens, temperature).unwrap();
        for (d, r) in decoded.iter().zip(&rescored) {
            assert!(!d.tokens.is_empty());
            assert!(d.tokens.len() <= 8);
            assert!(close(&d.logprobs, r, 1e-4), "{:?} vs {r:?}", d.logprobs);
            assert!(d.logprobs.iter().all(|&l| l <= 0.0));
        }
    }
}

#[test]
fn greedy_decoding_is_deterministic_and_causal() {
    let device = Device::flex();
    device.seed(3);
    let net = PolicyNet::new(&tiny(VlmConfig::policy()), &device).unwrap();
    let (inputs, targets) = policy_inputs(3);
    let decode = |seed: u64| {
        let mut rngs: Vec<ChaCha8Rng> = (0..3)
            .map(|i| ChaCha8Rng::seed_from_u64(seed + i))
            .collect();
        net.decode(&inputs, &Decoding::default(), &mut rngs)
            .unwrap()
    };
    assert_eq!(decode(0), decode(100));
    // A token's log-prob does not depend on the tokens after it.
    let full = net.score(&inputs, &targets, 1.0).unwrap();
    let cut: Vec<Vec<u32>> = targets.iter().map(|t| t[..2].to_vec()).collect();
    let short = net.score(&inputs, &cut, 1.0).unwrap();
    for (f, s) in full.iter().zip(&short) {
        assert!(close(&f[..2], s, 1e-5));
    }
    assert!(targets.iter().all(|t| t.last() == Some(&EOS)));
}

#[test]
fn the_neural_roles_load_their_weights_and_keep_their_contracts() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(4);
    let checker_path = dir.path().join("checker.safetensors");
    let policy_path = dir.path().join("policy.safetensors");
    weights::save(
        &CheckerNet::new(&tiny(VlmConfig::checker()), &device).unwrap(),
        &checker_path,
    )
    .unwrap();
    weights::save(
        &PolicyNet::new(&tiny(VlmConfig::policy()), &device).unwrap(),
        &policy_path,
    )
    .unwrap();

    let mut checker = NeuralChecker::new(
        &CheckerSettings {
            weights: checker_path.clone(),
        },
        "cpu",
    )
    .unwrap();
    let scenes: Vec<_> = (0..6)
        .map(|i| problem_scene(&canvas(), 9, i, &Pool::default(), 0.0))
        .collect();
    let requests: Vec<CheckRequest> = scenes
        .iter()
        .map(|s| CheckRequest {
            prompt: s.prompt.clone(),
            image: s.image.clone(),
        })
        .collect();
    let reports: Vec<CheckReport> = checker.check(&requests).unwrap();
    for (r, s) in reports.iter().zip(&scenes) {
        assert_eq!(r.items.len(), s.graph.objects.len());
        assert_eq!(r.relations.len(), s.graph.relations.len());
        let met = r
            .items
            .iter()
            .filter(|&&v| v == ItemVerdict::Present)
            .count()
            + r.relations
                .iter()
                .filter(|&&v| v == RelationVerdict::Holds)
                .count();
        let asked = r.items.len() + r.relations.len();
        assert_eq!(r.score, met as f64 / asked as f64);
        // The reflection is readable by the Policy's tokenizer.
        Tokenizer::full(512).tokens(&r.reflection).unwrap();
    }

    let mut policy = NeuralPolicy::new(
        &PolicySettings {
            weights: policy_path.clone(),
            max_tokens: 6,
            ..PolicySettings::default()
        },
        "cpu",
    )
    .unwrap();
    let proposals: Vec<ProposeRequest> = requests
        .iter()
        .zip(&reports)
        .enumerate()
        .map(|(i, (c, r))| ProposeRequest {
            prompt: c.prompt.clone(),
            image: c.image.clone(),
            report: r.clone(),
            seed: i as u64,
        })
        .collect();
    let out = policy.propose(&proposals).unwrap();
    let tokens: Vec<Vec<u32>> = out.iter().map(|p| p.token_ids.clone()).collect();
    let rescored = policy.score(&proposals, &tokens).unwrap();
    for (p, r) in out.iter().zip(&rescored) {
        assert_eq!(p.token_ids.len(), p.logprobs.len());
        assert!(close(&p.logprobs, r, 1e-4));
    }

    // A Checker's weights are not a Policy's, and the error says what the file lacks.
    let err = NeuralPolicy::new(
        &PolicySettings {
            weights: checker_path.clone(),
            ..PolicySettings::default()
        },
        "cpu",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("rlrig.policy_config") && err.contains("Policy"),
        "{err}"
    );
    let err = weights::load_model::<CheckerNet>(dir.path().join("nope.safetensors"), &device)
        .unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }), "{err:?}");
    let err = NeuralChecker::new(
        &CheckerSettings {
            weights: dir.path().join("nope.safetensors"),
        },
        "cpu",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("does not exist"), "{err}");

    // A prompt outside the world's vocabulary is refused with the offending word.
    let mut bad = requests[0].clone();
    bad.prompt.items[0].label = "hexagon".into();
    let err = checker.check(&[bad]).unwrap_err();
    assert!(err.0.contains("hexagon"), "{}", err.0);
}

#[test]
fn a_grpo_step_makes_the_rewarded_edit_prompt_likelier() {
    use burn::optim::GradientsParams;
    use rlrig_models::grpo::{self, GrpoConfig};

    let device = Device::flex().autodiff();
    device.seed(5);
    let net = PolicyNet::new(&tiny(VlmConfig::policy()), &device).unwrap();
    let (inputs, _) = policy_inputs(1);
    let group: Vec<PolicyInput> = std::iter::repeat_n(inputs[0].clone(), 4).collect();
    let decoding = Decoding {
        greedy: false,
        max_tokens: 6,
        ..Decoding::default()
    };
    let mut rngs: Vec<ChaCha8Rng> = (0..4).map(ChaCha8Rng::seed_from_u64).collect();
    let valid = burn::module::Module::valid(&net);
    let sampled = valid.decode(&group, &decoding, &mut rngs).unwrap();
    let tokens: Vec<Vec<u32>> = sampled.iter().map(|d| d.tokens.clone()).collect();
    assert_ne!(tokens[0], tokens[1], "sampling should differ across seeds");
    let before = valid.score(&group, &tokens, 1.0).unwrap();

    let advantages = grpo::group_advantages(&[1.0, 0.0, 0.0, 0.0], true).unwrap();
    let (logp, mask) = net.target_logprobs(&group, &tokens, 1.0).unwrap();
    let old = logp.clone().detach();
    let out = grpo::loss(logp, old, None, &advantages, mask, &GrpoConfig::default());
    let grads = GradientsParams::from_grads(out.loss.backward(), &net);
    let mut optim = rlrig_models::rectified_flow::adamw().init();
    let net = optim.step(1e-3, net, grads);
    let after = burn::module::Module::valid(&net)
        .score(&group, &tokens, 1.0)
        .unwrap();
    // The step climbs GRPO's objective: at ratio 1 its gradient is that of
    // Σ_i A_i · Σ_t log p_i,t (over the tokens), which therefore rises for a small step.
    let objective = |scores: &[Vec<f32>]| {
        scores
            .iter()
            .zip(&advantages)
            .map(|(s, a)| a * s.iter().map(|&l| f64::from(l)).sum::<f64>())
            .sum::<f64>()
    };
    assert!(
        objective(&after) > objective(&before),
        "{before:?} → {after:?}"
    );
}

#[test]
fn the_learner_steps_filters_equal_groups_and_advances_versions() {
    use rlrig_models::grpo::{Group, Learner, LearnerConfig, Sample};

    let device = Device::flex().autodiff();
    device.seed(6);
    let mut learner = Learner::new(
        PolicyNet::new(&tiny(VlmConfig::policy()), &device).unwrap(),
        LearnerConfig {
            lr: 1e-3,
            ..LearnerConfig::default()
        },
    );
    let (inputs, _) = policy_inputs(2);
    let decoding = Decoding {
        greedy: false,
        max_tokens: 6,
        ..Decoding::default()
    };
    let sample_group = |learner: &Learner, input: &PolicyInput, rewards: [f64; 4]| {
        let group: Vec<PolicyInput> = std::iter::repeat_n(input.clone(), 4).collect();
        let mut rngs: Vec<ChaCha8Rng> = (10..14).map(ChaCha8Rng::seed_from_u64).collect();
        let d = learner
            .policy()
            .decode(&group, &decoding, &mut rngs)
            .unwrap();
        Group {
            input: input.clone(),
            samples: d
                .into_iter()
                .zip(rewards)
                .map(|(d, reward)| Sample {
                    tokens: d.tokens,
                    logprobs: d.logprobs,
                    reward,
                })
                .collect(),
        }
    };
    let rewarded = sample_group(&learner, &inputs[0], [1.0, 0.0, 0.0, 0.0]);
    let flat = sample_group(&learner, &inputs[1], [0.5; 4]);
    // GRPO's objective on the rewarded group (see the test above): it rises with the step.
    let score = |learner: &Learner| {
        let inputs = vec![rewarded.input.clone(); 4];
        let tokens: Vec<Vec<u32>> = rewarded.samples.iter().map(|s| s.tokens.clone()).collect();
        let adv = rlrig_models::grpo::group_advantages(&[1.0, 0.0, 0.0, 0.0], true).unwrap();
        let s = learner.policy().score(&inputs, &tokens, 1.0).unwrap();
        s.iter()
            .zip(adv)
            .map(|(s, a)| a * s.iter().map(|&l| f64::from(l)).sum::<f64>())
            .sum::<f64>()
    };
    let before = score(&learner);
    assert_eq!(learner.version(), 0);
    let stats = learner.step(&[rewarded.clone(), flat.clone()]).unwrap();
    assert_eq!(
        (
            stats.version,
            stats.groups,
            stats.filtered_groups,
            stats.sequences
        ),
        (1, 2, 1, 4)
    );
    // The first step starts at the reference: no KL, and the sampling policy is the current one,
    // so no ratio is clipped.
    assert!(stats.kl.abs() < 1e-5, "{}", stats.kl);
    assert_eq!(stats.clip_fraction, 0.0);
    assert!(score(&learner) > before);
    // Every group filtered: nothing to learn, the version stays.
    let stats = learner.step(&[flat]).unwrap();
    assert_eq!((stats.version, stats.sequences, stats.loss), (1, 0, 0.0));
    // A sample whose log-probs do not match its tokens is refused.
    let mut bad = rewarded;
    bad.samples[0].logprobs.pop();
    assert!(
        learner
            .step(&[bad])
            .unwrap_err()
            .to_string()
            .contains("log-probs")
    );
}

#[test]
fn vlm_jobs_train_resume_and_export_loadable_weights() {
    use rlrig_models::training_loop::LoopSettings;
    use rlrig_models::vlm_data::VlmData;
    use rlrig_models::vlm_train::{self, VlmJob, VlmRole};

    let dir = tempfile::tempdir().unwrap();
    for (role, base) in [
        (VlmRole::Checker, VlmConfig::checker()),
        (VlmRole::Policy, VlmConfig::policy()),
    ] {
        let run = dir.path().join(format!("{role:?}"));
        let export = dir.path().join(format!("{role:?}.safetensors"));
        let job = |steps| VlmJob {
            model: role,
            config: VlmConfig {
                depth: 1,
                ..tiny(base.clone())
            },
            data: VlmData::default(),
            train: LoopSettings {
                steps,
                batch: 2,
                lr: 1e-3,
                warmup: 1,
                seed: 4,
                checkpoint_every: 2,
                sample_every: 100,
                max_minutes: None,
                export: Some(export.clone()),
                init: None,
                init_extend: false,
                device: "cpu".into(),
            },
        };
        let first = vlm_train::run(&job(2), &run, false, |_| {}).unwrap();
        assert!(first.finished && first.step == 2);
        // A second job with more steps continues the checkpoint; a different batch is refused.
        let mut other = job(4);
        other.train.batch = 3;
        assert!(vlm_train::run(&other, &run, true, |_| {}).is_err());
        let second = vlm_train::run(&job(4), &run, true, |_| {}).unwrap();
        assert_eq!(second.step, 4);
        let lines = std::fs::read_to_string(run.join("loss.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 4);
        match role {
            VlmRole::Checker => {
                NeuralChecker::new(&CheckerSettings { weights: export }, "cpu").unwrap();
            }
            VlmRole::Policy => {
                NeuralPolicy::new(
                    &PolicySettings {
                        weights: export,
                        ..PolicySettings::default()
                    },
                    "cpu",
                )
                .unwrap();
            }
        }
    }
}

/// The shipped Checker's scene graph (every ordered pair of present items asked about every
/// predicate of the prompt) against the oracle's on fixed rendered scenes: most triples agree,
/// and its SG-IoU estimate tracks the oracle's SG-IoU. The report carries the graph and the
/// estimates computed from it.
#[test]
fn the_shipped_checker_reports_a_scene_graph_that_agrees_with_the_oracle() {
    let weights_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights/checker.safetensors");
    let mut checker = NeuralChecker::new(
        &CheckerSettings {
            weights: weights_path,
        },
        "cpu",
    )
    .unwrap();
    let scenes: Vec<_> = (0..96)
        .map(|i| problem_scene(&canvas(), 77, i, &Pool::default(), 0.0))
        .collect();
    let a = rlrig_models::vlm_train::checker_agreement(checker.net(), &scenes).unwrap();
    assert!(a.triple_precision > 0.85, "{a:#?}");
    assert!(a.triple_recall > 0.85, "{a:#?}");
    assert!(a.sg_iou_correlation > 0.7, "{a:#?}");
    assert!(a.sg_iou_mae < 0.12, "{a:#?}");

    let requests: Vec<CheckRequest> = scenes[..8]
        .iter()
        .map(|s| CheckRequest {
            prompt: s.prompt.clone(),
            image: s.image.clone(),
        })
        .collect();
    for (r, q) in checker.check(&requests).unwrap().iter().zip(&requests) {
        let graph = r
            .graph
            .as_ref()
            .expect("the neural Checker reports its scene graph");
        assert_eq!(
            r.estimates,
            Some(rlrig_contract::sg::score(&q.prompt, graph))
        );
        // Only the prompt's words: LAION-SG's judge is given them as the candidates.
        let entities = q.prompt.entities();
        let predicates = q.prompt.predicates();
        for t in &graph.triples {
            assert!(
                entities.contains(&t.subject) && entities.contains(&t.object),
                "{t:?}"
            );
            assert!(predicates.contains(&t.predicate), "{t:?}");
            assert_ne!(t.subject, t.object);
        }
        // A prompt relation the Checker finds held is a triple of its graph.
        for (t, v) in q.prompt.triples().iter().zip(&r.relations) {
            if *v == RelationVerdict::Holds && t.subject != t.object {
                assert!(
                    graph.triples.contains(t),
                    "{t:?} holds but is not in {graph:?}"
                );
            }
        }
    }
}

/// The learner scores a whole sampled edit prompt, `<eos>` or not, in the text row that
/// decoding had: a target's last token is predicted, never read, so a prompt and reflection
/// that leave room for `<bos>` and all but the last token fit.
#[test]
fn scoring_fits_whatever_decoding_fitted() {
    let device = Device::flex();
    device.seed(3);
    let config = tiny(VlmConfig::policy());
    let net = PolicyNet::new(&config, &device).unwrap();
    let (mut inputs, _) = policy_inputs(1);
    let input = &mut inputs[0];
    let target: Vec<u32> = vec![input.prompt[0]; 6];
    // prompt + reflection + <bos> + 5 tokens read = the whole row.
    let room = config.text_len - 1 - (target.len() - 1) - input.prompt.len();
    input.reflection.resize(room, input.reflection[0]);
    let scored = net
        .score(&inputs, std::slice::from_ref(&target), 1.0)
        .unwrap();
    assert_eq!(scored[0].len(), 6);
    assert!(scored[0].iter().all(|l| l.is_finite() && *l <= 0.0));
    // One token more does not fit.
    let longer = vec![input_token(&inputs); 7];
    assert!(net.score(&inputs, &[longer], 1.0).is_err());
}

fn input_token(inputs: &[PolicyInput]) -> u32 {
    inputs[0].prompt[0]
}

#[test]
fn the_broad_prior_imitates_every_repair_of_a_violated_relation_and_the_rule_elsewhere() {
    use rlrig_models::vlm_data::oracle_findings;
    use rlrig_world::{Edit, reflect};
    let tok = Tokenizer::full(usize::MAX);
    let text = |t: &[u32]| tok.decode(&t[..t.len() - 1]).unwrap();
    let mut kinds = [0usize; 3];
    let mut violated_scenes = 0;
    for i in 0..200 {
        let scene = problem_scene(&canvas(), EVAL_SEED, i, &Pool::default(), 0.0);
        let f = oracle_findings(&scene);
        let rule = reflect::repair(&scene.graph, &f.items, &f.relations, true).unwrap();
        let (_, ruled) = policy_example(&scene, Repairs::Rule, i).unwrap();
        assert_eq!(text(&ruled), rule.to_string());
        let broad: Vec<Edit> = (0..3)
            .map(|draw| {
                let (_, t) = policy_example(&scene, Repairs::Any, draw).unwrap();
                Edit::parse(&text(&t)).unwrap()
            })
            .collect();
        match rule {
            Edit::Move {
                object,
                rel,
                anchor,
            } if f.relations.contains(&RelationVerdict::Violated) => {
                violated_scenes += 1;
                assert_eq!(broad[0], rule);
                assert_eq!(
                    broad[1],
                    Edit::Move {
                        object: anchor,
                        rel: rel.inverse(),
                        anchor: object
                    }
                );
                assert_eq!(
                    broad[2],
                    Edit::Swap {
                        a: object,
                        b: anchor
                    }
                );
                for (k, e) in broad.iter().enumerate() {
                    kinds[k] += usize::from(*e != rule || k == 0);
                }
            }
            _ => assert!(broad.iter().all(|e| *e == rule), "scene {i}: {broad:?}"),
        }
    }
    assert!(
        violated_scenes >= 40,
        "{violated_scenes} scenes with a violated relation"
    );
    assert_eq!(kinds, [violated_scenes; 3]);
}

#[test]
fn the_edit_language_check_accepts_prefixes_of_edit_prompts_only() {
    use rlrig_models::vlm_policy::in_edit_language;
    let tok = Tokenizer::full(usize::MAX);
    let ids = |t: &str| tok.tokens(t).unwrap();
    let word = |w: &str| ids(w)[0];
    // Every prefix of a valid edit prompt may go on with its next word, and it may end.
    let full = ids("move the red circle to the left of the blue square");
    for k in 0..full.len() {
        assert!(in_edit_language(&full[..k], full[k]), "prefix of {k} words");
    }
    assert!(in_edit_language(&full, EOS));
    assert!(
        !in_edit_language(&full[..4], EOS),
        "an unfinished prompt may not end"
    );
    // A word the grammar does not allow there, and a move that names one object twice.
    assert!(!in_edit_language(
        &ids("move the red circle to the left"),
        word("the")
    ));
    assert!(!in_edit_language(&ids("swap the yellow square"), EOS));
    assert!(!in_edit_language(
        &ids("swap the yellow square and the yellow"),
        word("square")
    ));
    // A bare add may end, or go on with a placement.
    assert!(in_edit_language(&ids("add a red circle"), EOS));
    assert!(in_edit_language(&ids("add a red circle"), word("above")));
}
