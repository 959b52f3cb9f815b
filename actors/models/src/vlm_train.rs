//! Pre-training the Checker and the Policy (the paper's Actor) on imperfect images with
//! labels from the world's oracle, with the shared loop of [`crate::train`].
//!
//! **Data.** Example `i` of seed `s` is a sampled prompt with an image that gets it partly
//! wrong ([`problem_scene`]): the exact rendering, a fresh random layout, one object moved,
//! two swapped, one dropped or turned into another object, a distractor added, then perhaps
//! noise, blur or specks — or, with probability `generated_fraction`, an image of the trained
//! Diffuser (and, when an Editor is given, of the Editor editing it) from a pool generated once
//! at the start of the run into `<run>/pool/`. Labels come from the oracle
//! ([`rlrig_world::reflect::oracle_findings`]): the Checker learns its verdicts and where a
//! violated relation's subject actually is; the Policy learns the repair rule's edit prompt
//! ([`rlrig_world::reflect::repair`]) from the image, the prompt and the oracle's reflection.
//!
//! **Evaluation** during training uses procedural held-out scenes (seed [`EVAL_SEED`]); the
//! quality numbers on generated images come from `rlrig quality`.

use crate::ModelError;
use crate::device::seeded;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::sg::{Extraction, Triple};
use rlrig_contract::{Image, ItemVerdict, RelationVerdict};
use rlrig_world::reflect::{self, Findings};
use rlrig_world::{Canvas, Edit, Object, Rel, WorldGraph};
use serde::{Deserialize, Serialize};

use crate::checker::{Question, checker_findings, checker_graphs, questions};
use crate::pretrain::EVAL_SEED;
use crate::text::{EOS, Tokenizer};
use crate::training_loop::{self, LoopSettings, Task, TrainError, TrainOutcome, io, mix, other};
use crate::vlm::{CheckerNet, VlmConfig};
use crate::vlm_data::{
    POOL_STREAM, Pool, Repairs, Scene, VlmData, generate_pool, load_pool, oracle_findings,
    problem_scene, save_pool,
};
use crate::vlm_policy::{PolicyInput, PolicyNet};

/// Which VLM a job trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VlmRole {
    /// Image + prompt → verdicts, score, reflection.
    Checker,
    /// Image + prompt + reflection → edit prompt (the paper's Actor).
    Policy,
}

/// A pre-training job of the Checker or the Policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VlmJob {
    /// What is trained.
    pub model: VlmRole,
    /// The architecture.
    pub config: VlmConfig,
    /// Generated images.
    pub data: VlmData,
    /// Steps, batch, learning rate, budget, device, …
    #[serde(flatten)]
    pub train: LoopSettings,
}

/// The verdict class of a label: 0 yes, 1 no, 2 cannot tell.
fn class_of(q: &Question, f: &Findings) -> usize {
    match *q {
        Question::Item(i) => usize::from(f.items[i] == ItemVerdict::Missing),
        Question::Relation(i) => match f.relations[i] {
            RelationVerdict::Holds => 0,
            RelationVerdict::Violated => 1,
            RelationVerdict::CannotTell => 2,
        },
    }
}

/// The four position bits of a violated relation's actual placement, if the label has one.
fn position_of(q: &Question, f: &Findings) -> Option<[f32; 4]> {
    match *q {
        Question::Relation(i) if f.relations[i] == RelationVerdict::Violated => {
            Some(std::array::from_fn(|k| {
                f32::from(u8::from(f.actual[i].contains(&Rel::ALL[k])))
            }))
        }
        _ => None,
    }
}

/// How well the Checker agrees with the oracle on a set of scenes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckerAgreement {
    /// Scenes.
    pub scenes: usize,
    /// Item verdicts equal to the oracle's.
    pub item_accuracy: f64,
    /// Relation verdicts equal to the oracle's.
    pub relation_accuracy: f64,
    /// Relation verdicts on relations the oracle finds violated.
    pub violated_recall: f64,
    /// Reflections word for word equal to the oracle's.
    pub reflection_exact: f64,
    /// Pearson correlation of the Checker's score with the oracle's relation accuracy (scenes
    /// with relations).
    pub score_correlation: f64,
    /// Pearson correlation of the Checker's score with the oracle's score (the same fraction
    /// of requirements met, by the oracle's verdicts).
    pub score_oracle_correlation: f64,
    /// Mean absolute difference between the Checker's score and the oracle's.
    pub score_mae: f64,
    /// Triples of the Checker's scene graph ([`checker_graphs`]) that the oracle's graph, as
    /// a LAION-SG judge would see it, holds too.
    #[serde(default)]
    pub triple_precision: f64,
    /// Triples of the oracle's graph that the Checker's graph holds too.
    #[serde(default)]
    pub triple_recall: f64,
    /// Mean absolute difference between the Checker's SG-IoU estimate and the oracle's SG-IoU.
    #[serde(default)]
    pub sg_iou_mae: f64,
    /// Pearson correlation of the Checker's SG-IoU estimate with the oracle's SG-IoU.
    #[serde(default)]
    pub sg_iou_correlation: f64,
    /// Mean of the Checker's SG-IoU estimates, and of the oracle's, over the scenes.
    #[serde(default)]
    pub sg_iou_mean: (f64, f64),
}

/// The Checker's agreement with the oracle on `scenes`.
pub fn checker_agreement(
    net: &CheckerNet,
    scenes: &[Scene],
) -> Result<CheckerAgreement, ModelError> {
    let pairs: Vec<(&WorldGraph, &Image)> = scenes.iter().map(|s| (&s.graph, &s.image)).collect();
    let mut mine = Vec::new();
    let mut seen = Vec::new();
    for chunk in pairs.chunks(64) {
        let f = checker_findings(net, chunk)?;
        seen.extend(checker_graphs(net, chunk, &f)?);
        mine.extend(f);
    }
    let (mut found, mut true_found, mut truth) = (0usize, 0usize, 0usize);
    let (mut est, mut actual) = (Vec::new(), Vec::new());
    for (s, g) in scenes.iter().zip(&seen) {
        let oracle = Extraction::from(&rlrig_world::parse(&s.image)).as_judged_against(&s.prompt);
        let o: std::collections::HashSet<&Triple> = oracle.triples.iter().collect();
        let m: std::collections::HashSet<&Triple> = g.triples.iter().collect();
        found += m.len();
        truth += o.len();
        true_found += m.intersection(&o).count();
        est.push(rlrig_contract::sg::score(&s.prompt, g).sg_iou);
        actual.push(rlrig_contract::sg::score(&s.prompt, &oracle).sg_iou);
    }
    let (mut items, mut items_ok, mut rels, mut rels_ok, mut viol, mut viol_ok) =
        (0, 0, 0, 0, 0, 0);
    let (mut exact, mut mae) = (0usize, 0.0f64);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let (mut mine_all, mut oracle_all) = (Vec::new(), Vec::new());
    for (s, f) in scenes.iter().zip(&mine) {
        let o = oracle_findings(s);
        items += o.items.len();
        items_ok += o.items.iter().zip(&f.items).filter(|(a, b)| a == b).count();
        rels += o.relations.len();
        rels_ok += o
            .relations
            .iter()
            .zip(&f.relations)
            .filter(|(a, b)| a == b)
            .count();
        for (a, b) in o.relations.iter().zip(&f.relations) {
            if *a == RelationVerdict::Violated {
                viol += 1;
                viol_ok += usize::from(b == a);
            }
        }
        exact += usize::from(reflect::reflection(&s.graph, &o) == reflect::reflection(&s.graph, f));
        let mine_score = reflect::score(&f.items, &f.relations);
        let oracle_score = reflect::score(&o.items, &o.relations);
        mae += (mine_score - oracle_score).abs();
        mine_all.push(mine_score);
        oracle_all.push(oracle_score);
        if !o.relations.is_empty() {
            let holds = o
                .relations
                .iter()
                .filter(|&&v| v == RelationVerdict::Holds)
                .count();
            xs.push(mine_score);
            ys.push(holds as f64 / o.relations.len() as f64);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(CheckerAgreement {
        scenes: scenes.len(),
        item_accuracy: ratio(items_ok, items),
        relation_accuracy: ratio(rels_ok, rels),
        violated_recall: ratio(viol_ok, viol),
        reflection_exact: ratio(exact, scenes.len()),
        score_correlation: pearson(&xs, &ys),
        score_oracle_correlation: pearson(&mine_all, &oracle_all),
        score_mae: mae / scenes.len().max(1) as f64,
        triple_precision: ratio(true_found, found),
        triple_recall: ratio(true_found, truth),
        sg_iou_mae: est
            .iter()
            .zip(&actual)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / scenes.len().max(1) as f64,
        sg_iou_correlation: pearson(&est, &actual),
        sg_iou_mean: (
            est.iter().sum::<f64>() / scenes.len().max(1) as f64,
            actual.iter().sum::<f64>() / scenes.len().max(1) as f64,
        ),
    })
}

/// Pearson's correlation (0 when either side is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// The Policy's input for a scene and a reflection.
pub fn policy_input(scene: &Scene, reflection: &str) -> Result<PolicyInput, ModelError> {
    PolicyInput::new(scene.image.clone(), &scene.prompt.prompt(), reflection)
}

/// The Policy's imitation example for a scene: its input (with the oracle's reflection) and
/// the edit prompt of `repairs` as tokens, `<eos>` last; `draw` picks among the alternatives of
/// [`Repairs::Any`] (any value for [`Repairs::Rule`]).
pub fn policy_example(
    scene: &Scene,
    repairs: Repairs,
    draw: u64,
) -> Result<(PolicyInput, Vec<u32>), ModelError> {
    let f = oracle_findings(scene);
    let rule = reflect::repair(&scene.graph, &f.items, &f.relations, true)?;
    let edit = match (repairs, rule) {
        (
            Repairs::Any,
            Edit::Move {
                object,
                rel,
                anchor,
            },
        ) if f.relations.contains(&RelationVerdict::Violated) => match draw % 3 {
            0 => rule,
            1 => Edit::Move {
                object: anchor,
                rel: rel.inverse(),
                anchor: object,
            },
            _ => Edit::Swap {
                a: object,
                b: anchor,
            },
        },
        _ => rule,
    };
    let input = policy_input(scene, &reflect::reflection(&scene.graph, &f))?;
    let mut target = Tokenizer::full(usize::MAX).tokens(&edit.to_string())?;
    target.push(EOS);
    Ok((input, target))
}

/// How the Policy's edit prompts fare on a set of scenes (greedy decoding, the oracle's
/// reflections as input).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyAgreement {
    /// Scenes.
    pub scenes: usize,
    /// Edit prompts that parse in the edit-prompt language.
    pub parse_rate: f64,
    /// Edit prompts equal to the repair rule's.
    pub exact_rate: f64,
    /// Among scenes with a problem, edit prompts that address one: add a missing item, or
    /// move (or swap) the two objects of a violated relation.
    pub targets_problem_rate: f64,
}

/// Whether an edit addresses a problem the findings show.
pub fn addresses_problem(edit: &Edit, graph: &WorldGraph, f: &Findings) -> bool {
    let missing: Vec<Object> = graph
        .objects
        .iter()
        .zip(&f.items)
        .filter(|(_, v)| **v == ItemVerdict::Missing)
        .map(|(o, _)| *o)
        .collect();
    let violated: Vec<(Object, Object)> = graph
        .relations
        .iter()
        .zip(&f.relations)
        .filter(|(_, v)| **v == RelationVerdict::Violated)
        .map(|(&(a, _, b), _)| (graph.objects[a], graph.objects[b]))
        .collect();
    match *edit {
        Edit::Add { object, .. } => missing.contains(&object),
        Edit::Move { object, anchor, .. } => violated
            .iter()
            .any(|&(a, b)| (a, b) == (object, anchor) || (b, a) == (object, anchor)),
        Edit::Swap { a, b } => violated
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b)),
        _ => false,
    }
}

/// The Policy's agreement with the repair rule on `scenes`.
pub fn policy_agreement(net: &PolicyNet, scenes: &[Scene]) -> Result<PolicyAgreement, ModelError> {
    let tok = Tokenizer::full(usize::MAX);
    let (mut parsed, mut exact, mut problems, mut addressed) = (0, 0, 0, 0);
    for chunk in scenes.chunks(64) {
        let examples: Vec<(PolicyInput, Vec<u32>)> = chunk
            .iter()
            .map(|s| policy_example(s, Repairs::Rule, 0))
            .collect::<Result<_, _>>()?;
        let inputs: Vec<PolicyInput> = examples.iter().map(|e| e.0.clone()).collect();
        let mut rngs: Vec<ChaCha8Rng> = (0..inputs.len())
            .map(|i| ChaCha8Rng::seed_from_u64(i as u64))
            .collect();
        let decoded = net.decode(&inputs, &crate::vlm_policy::Decoding::default(), &mut rngs)?;
        for ((s, (_, target)), d) in chunk.iter().zip(&examples).zip(decoded) {
            exact += usize::from(d.tokens == *target);
            let words: Vec<u32> = d.tokens.iter().copied().filter(|&t| t != EOS).collect();
            let text = tok.decode(&words).unwrap_or_default();
            let f = oracle_findings(s);
            let has_problem = f.items.contains(&ItemVerdict::Missing)
                || f.relations.contains(&RelationVerdict::Violated);
            problems += usize::from(has_problem);
            if let Ok(edit) = Edit::parse(&text) {
                parsed += 1;
                if has_problem && addresses_problem(&edit, &s.graph, &f) {
                    addressed += 1;
                }
            }
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(PolicyAgreement {
        scenes: scenes.len(),
        parse_rate: ratio(parsed, scenes.len()),
        exact_rate: ratio(exact, scenes.len()),
        targets_problem_rate: ratio(addressed, problems),
    })
}

/// Held-out scenes for evaluation during training.
fn held_out(canvas: &Canvas, n: usize) -> Vec<Scene> {
    (0..n as u64)
        .map(|i| problem_scene(canvas, EVAL_SEED, i, &Pool::default(), 0.0))
        .collect()
}

/// What both VLM tasks draw from: the job, the world, the generated pool and the held-out
/// evaluation scenes.
struct Examples<'a> {
    job: &'a VlmJob,
    canvas: Canvas,
    pool: Pool,
    eval: Vec<Scene>,
}

impl Examples<'_> {
    /// The scenes of training batch `step`.
    fn scenes(&self, step: u64) -> Vec<Scene> {
        let base = step * self.job.train.batch as u64;
        (0..self.job.train.batch as u64)
            .map(|i| {
                problem_scene(
                    &self.canvas,
                    self.job.train.seed,
                    base + i,
                    &self.pool,
                    self.job.data.generated_fraction,
                )
            })
            .collect()
    }

    /// What must match for a checkpoint to be this job's.
    fn identity(&self) -> serde_json::Value {
        let job = self.job;
        serde_json::json!({
            "model": job.model,
            "config": job.config,
            "data": job.data,
            "seed": job.train.seed,
            "batch": job.train.batch,
        })
    }
}

struct CheckerTask<'a> {
    ex: Examples<'a>,
    device: Device,
}

struct PolicyTask<'a>(Examples<'a>);

impl Task for CheckerTask<'_> {
    type Model = CheckerNet;

    fn settings(&self) -> &LoopSettings {
        &self.ex.job.train
    }

    fn identity(&self) -> serde_json::Value {
        self.ex.identity()
    }

    fn config(&self) -> &VlmConfig {
        &self.ex.job.config
    }

    fn loss(&self, model: &CheckerNet, step: u64) -> Result<Tensor<1>, TrainError> {
        let (mut images, mut rows, mut classes, mut positions, mut weights) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for scene in self.ex.scenes(step) {
            let f = oracle_findings(&scene);
            let qs = questions(&scene.graph);
            for (q, _) in &qs {
                classes.push(class_of(q, &f) as i64);
                let p = position_of(q, &f);
                positions.extend(p.unwrap_or([0.0; 4]));
                weights.push(if p.is_some() { 1.0f32 } else { 0.0 });
            }
            rows.push(qs.into_iter().map(|(_, w)| w).collect::<Vec<_>>());
            images.push(scene.image);
        }
        let n = classes.len();
        let d = &self.device;
        let (v, p) = model.forward(&images, &rows)?;
        let classes = Tensor::<1, Int>::from_data(TensorData::new(classes, [n]), d);
        let logp = burn::tensor::activation::log_softmax(v, 1);
        let ce = logp.gather(1, classes.unsqueeze_dim::<2>(1)).neg().mean();
        let targets = Tensor::<2>::from_data(TensorData::new(positions, [n, 4]), d);
        let w = Tensor::<2>::from_data(TensorData::new(weights.clone(), [n, 1]), d);
        // Binary cross-entropy with logits: softplus(p) − y·p, on violated relations only.
        let softplus = p.clone().exp().add_scalar(1.0).log();
        let bce = (softplus - targets * p) * w;
        let counted = weights.iter().sum::<f32>().max(1.0);
        Ok(ce + bce.sum().div_scalar(counted * 4.0).mul_scalar(0.5))
    }

    fn evaluate(
        &self,
        model: &CheckerNet,
        _step: u64,
        _dir: &Path,
    ) -> Result<(String, serde_json::Value), TrainError> {
        let a = checker_agreement(model, &self.ex.eval)?;
        Ok((
            format!(
                "held-out items {:.3}, relations {:.3}, violated recall {:.3}, reflections exact {:.3}, score corr. {:.3}",
                a.item_accuracy,
                a.relation_accuracy,
                a.violated_recall,
                a.reflection_exact,
                a.score_correlation
            ),
            serde_json::to_value(&a).expect("serialises"),
        ))
    }
}

impl Task for PolicyTask<'_> {
    type Model = PolicyNet;

    fn settings(&self) -> &LoopSettings {
        &self.0.job.train
    }

    fn identity(&self) -> serde_json::Value {
        self.0.identity()
    }

    fn config(&self) -> &VlmConfig {
        &self.0.job.config
    }

    fn loss(&self, model: &PolicyNet, step: u64) -> Result<Tensor<1>, TrainError> {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let repairs = self.0.job.data.repairs;
        let base = step * self.0.job.train.batch as u64;
        for (i, scene) in self.0.scenes(step).iter().enumerate() {
            let draw = mix(self.0.job.train.seed ^ 0x5EA1, base + i as u64);
            let (input, target) = policy_example(scene, repairs, draw)?;
            inputs.push(input);
            targets.push(target);
        }
        let (logp, w) = model.target_logprobs(&inputs, &targets, 1.0)?;
        // Token-mean negative log-likelihood.
        Ok(logp.sum().neg() / w.sum())
    }

    fn evaluate(
        &self,
        model: &PolicyNet,
        _step: u64,
        _dir: &Path,
    ) -> Result<(String, serde_json::Value), TrainError> {
        let a = policy_agreement(model, &self.0.eval)?;
        Ok((
            format!(
                "held-out parse {:.3}, exact {:.3}, targets a problem {:.3}",
                a.parse_rate, a.exact_rate, a.targets_problem_rate
            ),
            serde_json::to_value(&a).expect("serialises"),
        ))
    }
}

/// Runs (or, with `resume`, continues) a VLM job in `dir`.
pub fn run(
    job: &VlmJob,
    dir: &Path,
    resume: bool,
    mut log: impl FnMut(&str),
) -> Result<TrainOutcome, TrainError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let device = training_loop::training_device(&job.train)?;
    let canvas = Canvas::new(job.config.image_size as u32).map_err(|e| other(&e))?;
    let pool_dir = dir.join("pool");
    let pool = if job.data.generated == 0 {
        Pool::default()
    } else if pool_dir.join("index.jsonl").exists() {
        load_pool(&pool_dir)?
    } else {
        log(&format!(
            "generating {} images with {} for the pool…",
            job.data.generated,
            job.data.diffuser.display()
        ));
        let pool = generate_pool(
            &job.data,
            job.data.generated,
            mix(job.train.seed, POOL_STREAM),
            &canvas,
            &job.train.device,
        )?;
        save_pool(&pool, &pool_dir)?;
        pool
    };
    let seed = job.train.seed;
    match job.model {
        VlmRole::Checker => {
            let model = seeded(&device, seed, || CheckerNet::new(&job.config, &device))?;
            let task = CheckerTask {
                ex: Examples {
                    job,
                    canvas,
                    pool,
                    eval: held_out(&canvas, 256),
                },
                device,
            };
            training_loop::run(&task, model, dir, resume, log)
        }
        VlmRole::Policy => {
            let model = seeded(&device, seed, || PolicyNet::new(&job.config, &device))?;
            let task = PolicyTask(Examples {
                job,
                canvas,
                pool,
                eval: held_out(&canvas, 128),
            });
            training_loop::run(&task, model, dir, resume, log)
        }
    }
}
