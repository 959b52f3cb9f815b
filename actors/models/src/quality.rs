//! Quality measurements of the trained models against the oracle, on held-out prompts
//! (seed [`EVAL_SEED`]), as `rlrig quality` reports them.
//!
//! * **Editor**: for each source image (a clean render, or the Diffuser's image of the same
//!   prompt) one edit of each type in turn (move, recolour, add, remove, swap), chosen among
//!   the objects the oracle finds in the source and feasible by the edit language's semantics
//!   on the grid (`rlrig_world::edit::apply` on the scene read back: e.g. no `left of` an
//!   object in the first column). *Success*: the instructed change is there
//!   (move / add with a place: the relation holds by GenEval's rule; recolour: the new object
//!   is there and the old one gone; remove: it is gone; swap: each object stands where the other
//!   stood, within half a cell). *Context preservation*: the share of the other objects still
//!   found within half a cell of where they were.
//! * **Checker**: agreement with the oracle on generated images
//!   ([`crate::vlm_train::checker_agreement`]).
//! * **Policy**: parse rate and how often the edit prompt addresses a real problem, with the
//!   oracle's reflection and with the Checker's.

use crate::ModelError;
use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{EditRequest, Editor, Image};
use rlrig_world::canvas::GRID;
use rlrig_world::edit::apply;
use rlrig_world::geometry::{BBox, holds};
use rlrig_world::oracle::detect;
use rlrig_world::{Canvas, Colour, Edit, Object, Placed, Rel, reflect, sample};
use serde::{Deserialize, Serialize};

use crate::checker::checker_findings;
use crate::pretrain::EVAL_SEED;
use crate::text::{EOS, Tokenizer};
use crate::training_loop::mix;
use crate::vlm::CheckerNet;
use crate::vlm_data::{Scene, oracle_findings};
use crate::vlm_policy::{Decoding, PolicyNet};
use crate::vlm_train::{addresses_problem, policy_input};

/// The edit types, in the order the evaluation cycles through them.
pub const EDIT_TYPES: [&str; 5] = ["move", "recolour", "add", "remove", "swap"];

/// One edit type's numbers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EditTypeQuality {
    /// Edits made.
    pub edits: usize,
    /// Share whose instructed change happened.
    pub success: f64,
    /// Share of the other objects left in place.
    pub context_preserved: f64,
}

/// The Editor's numbers on one set of source images.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EditorQuality {
    /// Per edit type.
    pub per_type: BTreeMap<String, EditTypeQuality>,
    /// Over all edits.
    pub all: EditTypeQuality,
}

/// The largest detection of each object.
fn scene_of(image: &Image) -> BTreeMap<Object, BBox> {
    let mut out: BTreeMap<Object, (u32, BBox)> = BTreeMap::new();
    for d in detect(image) {
        let e = out.entry(d.object).or_insert((d.area, d.bbox));
        if d.area > e.0 {
            *e = (d.area, d.bbox);
        }
    }
    out.into_iter().map(|(o, (_, b))| (o, b)).collect()
}

fn centre(b: &BBox) -> (f64, f64) {
    (f64::from(b.x0 + b.x1) / 2.0, f64::from(b.y0 + b.y1) / 2.0)
}

fn near(a: &BBox, b: &BBox, tolerance: f64) -> bool {
    let ((ax, ay), (bx, by)) = (centre(a), centre(b));
    (ax - bx).abs() <= tolerance && (ay - by).abs() <= tolerance
}

/// The scene read back onto the grid: each object in the cell of its box's centre (the larger
/// of two in one cell).
fn placed_of(scene: &BTreeMap<Object, BBox>, canvas: &Canvas) -> Vec<Placed> {
    let cell = f64::from(canvas.cell_size());
    let mut by_cell: BTreeMap<(u32, u32), (Object, u32)> = BTreeMap::new();
    for (&object, b) in scene {
        let (x, y) = centre(b);
        let at = (
            ((x / cell) as u32).min(GRID - 1),
            ((y / cell) as u32).min(GRID - 1),
        );
        let area = (b.x1 - b.x0) * (b.y1 - b.y0);
        if by_cell.get(&at).is_none_or(|&(_, a)| area > a) {
            by_cell.insert(at, (object, area));
        }
    }
    by_cell
        .into_iter()
        .map(|((c, r), (object, _))| canvas.place_at(object, c, r))
        .collect()
}

/// An edit of type `kind` on the objects of `scene` that the edit language can carry out on
/// the grid, if the scene allows one.
fn edit_of(
    kind: &str,
    scene: &BTreeMap<Object, BBox>,
    canvas: &Canvas,
    rng: &mut ChaCha8Rng,
) -> Option<Edit> {
    let placed = placed_of(scene, canvas);
    (0..8).find_map(|_| {
        let edit = random_edit_of(kind, scene, rng)?;
        apply(canvas, &placed, &edit, rng).ok().map(|_| edit)
    })
}

/// A random edit of type `kind` on the objects of `scene`.
fn random_edit_of(
    kind: &str,
    scene: &BTreeMap<Object, BBox>,
    rng: &mut ChaCha8Rng,
) -> Option<Edit> {
    let objs: Vec<Object> = scene.keys().copied().collect();
    let two = |rng: &mut ChaCha8Rng| -> Option<(Object, Object)> {
        let a = *objs.choose(rng)?;
        let others: Vec<Object> = objs.iter().copied().filter(|&o| o != a).collect();
        Some((a, *others.choose(rng)?))
    };
    let absent: Vec<Object> = Object::all().filter(|o| !scene.contains_key(o)).collect();
    match kind {
        "move" => {
            let (object, anchor) = two(rng)?;
            let rels: Vec<Rel> = Rel::ALL
                .into_iter()
                .filter(|&r| !holds(&scene[&object], r, &scene[&anchor]))
                .collect();
            Some(Edit::Move {
                object,
                rel: *rels.choose(rng)?,
                anchor,
            })
        }
        "recolour" => {
            let object = *objs.choose(rng)?;
            let colours: Vec<Colour> = Colour::ALL
                .into_iter()
                .filter(|&c| {
                    !scene.contains_key(&Object {
                        colour: c,
                        shape: object.shape,
                    })
                })
                .collect();
            Some(Edit::Recolour {
                object,
                colour: *colours.choose(rng)?,
            })
        }
        "add" => {
            let object = *absent.choose(rng)?;
            let placement = objs
                .choose(rng)
                .map(|&anchor| (*Rel::ALL.choose(rng).expect("four"), anchor));
            Some(Edit::Add { object, placement })
        }
        "remove" if objs.len() > 1 => Some(Edit::Remove {
            object: *objs.choose(rng)?,
        }),
        "swap" => {
            let (a, b) = two(rng)?;
            Some(Edit::Swap { a, b })
        }
        _ => None,
    }
}

/// Whether the instructed change is in `after`, and the share of the other objects kept.
fn judge_edit(
    edit: &Edit,
    before: &BTreeMap<Object, BBox>,
    after: &BTreeMap<Object, BBox>,
    half_cell: f64,
) -> (bool, Option<f64>) {
    let success = match *edit {
        Edit::Move {
            object,
            rel,
            anchor,
        } => {
            matches!((after.get(&object), after.get(&anchor)), (Some(a), Some(b)) if holds(a, rel, b))
        }
        Edit::Recolour { object, colour } => {
            after.contains_key(&Object {
                colour,
                shape: object.shape,
            }) && !after.contains_key(&object)
        }
        Edit::Add { object, placement } => match (after.get(&object), placement) {
            (Some(_), None) => true,
            (Some(a), Some((rel, anchor))) => after.get(&anchor).is_some_and(|b| holds(a, rel, b)),
            (None, _) => false,
        },
        Edit::Remove { object } => !after.contains_key(&object),
        Edit::Swap { a, b } => match (after.get(&a), after.get(&b)) {
            (Some(na), Some(nb)) => {
                near(na, &before[&b], half_cell) && near(nb, &before[&a], half_cell)
            }
            _ => false,
        },
    };
    let named = edit.objects();
    let others: Vec<(&Object, &BBox)> = before.iter().filter(|(o, _)| !named.contains(o)).collect();
    let kept = others
        .iter()
        .filter(|(o, b)| after.get(o).is_some_and(|a| near(a, b, half_cell)))
        .count();
    let context = (!others.is_empty()).then(|| kept as f64 / others.len() as f64);
    (success, context)
}

/// The Editor's quality on `sources`: one edit per image, cycling through the edit types.
pub fn editor_quality(
    editor: &mut dyn Editor,
    sources: &[Image],
    canvas: &Canvas,
) -> Result<EditorQuality, ModelError> {
    let half_cell = f64::from(canvas.cell_size()) / 2.0;
    let mut cases = Vec::new();
    for (i, image) in sources.iter().enumerate() {
        let before = scene_of(image);
        let mut rng = ChaCha8Rng::seed_from_u64(mix(EVAL_SEED ^ 0xED17, i as u64));
        let start = i % EDIT_TYPES.len();
        let picked = (0..EDIT_TYPES.len())
            .map(|k| EDIT_TYPES[(start + k) % EDIT_TYPES.len()])
            .find_map(|kind| edit_of(kind, &before, canvas, &mut rng).map(|e| (kind, e)));
        if let Some((kind, edit)) = picked {
            cases.push((kind, edit, before, image.clone(), mix(EVAL_SEED, i as u64)));
        }
    }
    let mut tallies: BTreeMap<&str, (usize, usize, f64, usize)> = BTreeMap::new();
    for chunk in cases.chunks(32) {
        let requests: Vec<EditRequest> = chunk
            .iter()
            .map(|(_, edit, _, image, seed)| EditRequest {
                explore: false,
                image: image.clone(),
                edit_prompt: edit.to_string(),
                seed: *seed,
            })
            .collect();
        let outputs = editor.edit(&requests).map_err(|e| e.0)?;
        for ((kind, edit, before, _, _), out) in chunk.iter().zip(outputs) {
            let (ok, context) = judge_edit(edit, before, &scene_of(&out), half_cell);
            let t = tallies.entry(kind).or_default();
            t.0 += 1;
            t.1 += usize::from(ok);
            if let Some(c) = context {
                t.2 += c;
                t.3 += 1;
            }
        }
    }
    let quality = |t: &(usize, usize, f64, usize)| EditTypeQuality {
        edits: t.0,
        success: t.1 as f64 / t.0.max(1) as f64,
        context_preserved: t.2 / t.3.max(1) as f64,
    };
    let total = tallies.values().fold((0, 0, 0.0, 0), |a, t| {
        (a.0 + t.0, a.1 + t.1, a.2 + t.2, a.3 + t.3)
    });
    Ok(EditorQuality {
        per_type: tallies
            .iter()
            .map(|(k, t)| (k.to_string(), quality(t)))
            .collect(),
        all: quality(&total),
    })
}

/// Clean renders of the first `n` held-out prompts.
pub fn clean_renders(canvas: &Canvas, n: usize) -> Vec<Image> {
    (0..n as u64)
        .map(|i| sample(canvas, EVAL_SEED, i).image)
        .collect()
}

/// The Policy's numbers on a set of scenes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyQuality {
    /// Scenes.
    pub scenes: usize,
    /// Scenes where the oracle finds a problem.
    pub with_problem: usize,
    /// Edit prompts that parse.
    pub parse_rate: f64,
    /// Among scenes with a problem, edit prompts that address one (add a missing item, or
    /// move / swap the objects of a violated relation).
    pub targets_problem_rate: f64,
    /// Scenes with every item present and a violated relation.
    pub with_violation_only: usize,
    /// Among those, edit prompts that move or swap the objects of a violated relation (with a
    /// missing item the repair rule adds it first, so those scenes are not counted here).
    pub targets_violated_relation_rate: f64,
}

/// The Policy's quality on `scenes`, reading the Checker's reflections when `checker` is
/// given, else the oracle's; problems are always the oracle's.
pub fn policy_quality(
    policy: &PolicyNet,
    checker: Option<&CheckerNet>,
    scenes: &[Scene],
) -> Result<PolicyQuality, ModelError> {
    let tok = Tokenizer::full(usize::MAX);
    let mut q = PolicyQuality {
        scenes: scenes.len(),
        ..PolicyQuality::default()
    };
    let (mut parsed, mut addressed, mut with_violation, mut addressed_violation) = (0, 0, 0, 0);
    for chunk in scenes.chunks(64) {
        let truth: Vec<_> = chunk.iter().map(oracle_findings).collect();
        let reflections: Vec<String> = match checker {
            Some(net) => {
                let pairs: Vec<_> = chunk.iter().map(|s| (&s.graph, &s.image)).collect();
                checker_findings(net, &pairs)?
                    .iter()
                    .zip(chunk)
                    .map(|(f, s)| reflect::reflection(&s.graph, f))
                    .collect()
            }
            None => truth
                .iter()
                .zip(chunk)
                .map(|(f, s)| reflect::reflection(&s.graph, f))
                .collect(),
        };
        let inputs = chunk
            .iter()
            .zip(&reflections)
            .map(|(s, r)| policy_input(s, r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rngs: Vec<ChaCha8Rng> = (0..inputs.len())
            .map(|i| ChaCha8Rng::seed_from_u64(i as u64))
            .collect();
        let decoded = policy.decode(&inputs, &Decoding::default(), &mut rngs)?;
        for ((s, f), d) in chunk.iter().zip(&truth).zip(decoded) {
            let words: Vec<u32> = d.tokens.iter().copied().filter(|&t| t != EOS).collect();
            let edit = Edit::parse(&tok.decode(&words).unwrap_or_default()).ok();
            parsed += usize::from(edit.is_some());
            let problem = f.items.contains(&rlrig_contract::ItemVerdict::Missing)
                || f.relations
                    .contains(&rlrig_contract::RelationVerdict::Violated);
            let violation = f
                .relations
                .contains(&rlrig_contract::RelationVerdict::Violated)
                && !f.items.contains(&rlrig_contract::ItemVerdict::Missing);
            q.with_problem += usize::from(problem);
            with_violation += usize::from(violation);
            if let Some(e) = edit.filter(|e| problem && addresses_problem(e, &s.graph, f)) {
                addressed += 1;
                if violation && matches!(e, Edit::Move { .. } | Edit::Swap { .. }) {
                    addressed_violation += 1;
                }
            }
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    q.parse_rate = ratio(parsed, scenes.len());
    q.targets_problem_rate = ratio(addressed, q.with_problem);
    q.with_violation_only = with_violation;
    q.targets_violated_relation_rate = ratio(addressed_violation, with_violation);
    Ok(q)
}

/// What `rlrig quality` measures with: the weights files, the number of held-out prompts and
/// the device.
#[derive(Clone, Debug)]
pub struct QualityInputs {
    /// Held-out prompts (seed [`EVAL_SEED`]).
    pub n: usize,
    /// `cpu`, `wgpu`, `wgpu:N`.
    pub device: String,
    /// The Diffuser's weights: its images are the generated test set.
    pub diffuser: std::path::PathBuf,
    /// Guidance of the Diffuser's images.
    pub guidance: f64,
    /// The Editor's weights (measured; for the Checker and Policy, it edits half of the test
    /// images when the file exists).
    pub editor: std::path::PathBuf,
    /// The Checker's weights.
    pub checker: std::path::PathBuf,
    /// The Policy's weights.
    pub policy: std::path::PathBuf,
}

/// The Editor on clean renders and on the Diffuser's images of the same prompts.
#[derive(Clone, Debug, Serialize)]
pub struct EditorReport {
    /// On clean renders.
    pub clean: EditorQuality,
    /// On the Diffuser's images.
    pub generated: EditorQuality,
}

/// The Policy with the oracle's reflection and, when the Checker's weights exist, with the
/// Checker's.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    /// With the oracle's reflection.
    pub oracle_reflection: PolicyQuality,
    /// With the Checker's reflection.
    pub checker_reflection: Option<PolicyQuality>,
}

/// Measures the Editor of `inputs.editor` ([`editor_quality`]).
pub fn measure_editor(inputs: &QualityInputs) -> Result<EditorReport, ModelError> {
    use crate::roles::{NeuralDiffuser, NeuralEditor, NeuralSettings};
    use rlrig_contract::{Diffuser, GenerateRequest};
    let canvas = Canvas::new(32).map_err(|e| ModelError::Invalid(e.to_string()))?;
    let mut editor = NeuralEditor::new(
        &NeuralSettings::with_weights(&inputs.editor),
        &inputs.device,
    )?;
    let clean = clean_renders(&canvas, inputs.n);
    let settings = NeuralSettings {
        guidance: inputs.guidance,
        ..NeuralSettings::with_weights(&inputs.diffuser)
    };
    let mut diffuser = NeuralDiffuser::new(&settings, &inputs.device)?;
    let requests: Vec<GenerateRequest> = (0..inputs.n as u64)
        .map(|i| GenerateRequest {
            prompt: sample(&canvas, EVAL_SEED, i).graph,
            seed: i,
            explore: false,
        })
        .collect();
    let mut generated = Vec::new();
    for chunk in requests.chunks(64) {
        generated.extend(diffuser.generate(chunk).map_err(|e| e.0)?);
    }
    Ok(EditorReport {
        clean: editor_quality(&mut editor, &clean, &canvas)?,
        generated: editor_quality(&mut editor, &generated, &canvas)?,
    })
}

/// The generated test images of the Checker and the Policy: the Diffuser's images of the
/// held-out prompts, half of them edited by the Editor when its weights exist.
fn test_images(inputs: &QualityInputs) -> Result<crate::vlm_data::Pool, ModelError> {
    let data = crate::vlm_data::VlmData {
        diffuser: inputs.diffuser.clone(),
        editor: inputs.editor.is_file().then(|| inputs.editor.clone()),
        guidance: inputs.guidance,
        ..crate::vlm_data::VlmData::default()
    };
    let canvas = Canvas::new(32).map_err(|e| ModelError::Invalid(e.to_string()))?;
    crate::vlm_data::generate_pool(&data, inputs.n, EVAL_SEED, &canvas, &inputs.device)
}

fn load<M: crate::weights::Architecture>(
    path: &std::path::Path,
    device: &str,
    what: &str,
) -> Result<M, ModelError> {
    let device = crate::device::select(device)?;
    crate::weights::load_model::<M>(path, &device)
        .map_err(|e| ModelError::Invalid(format!("loading the {what}: {e}")))
}

/// Measures the Checker of `inputs.checker` ([`crate::vlm_train::checker_agreement`]).
pub fn measure_checker(
    inputs: &QualityInputs,
) -> Result<crate::vlm_train::CheckerAgreement, ModelError> {
    let pool = test_images(inputs)?;
    let checker: CheckerNet = load(&inputs.checker, &inputs.device, "Checker")?;
    crate::vlm_train::checker_agreement(&checker, pool.scenes())
}

/// Measures the Policy of `inputs.policy` ([`policy_quality`]).
pub fn measure_policy(inputs: &QualityInputs) -> Result<PolicyReport, ModelError> {
    let pool = test_images(inputs)?;
    let policy: PolicyNet = load(&inputs.policy, &inputs.device, "Policy")?;
    let checker_reflection = if inputs.checker.is_file() {
        let checker: CheckerNet = load(&inputs.checker, &inputs.device, "Checker")?;
        Some(policy_quality(&policy, Some(&checker), pool.scenes())?)
    } else {
        None
    };
    Ok(PolicyReport {
        oracle_reflection: policy_quality(&policy, None, pool.scenes())?,
        checker_reflection,
    })
}
