//! The data the Checker and the Policy learn from: problem scenes (a sampled prompt with an
//! image that gets it partly wrong), the pool of the trained Diffuser's (and Editor's)
//! images, and the oracle's labels. Training itself is in [`crate::vlm_train`].

use crate::ModelError;
use std::path::{Path, PathBuf};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{Diffuser, EditRequest, Editor, GenerateRequest, Image, SceneGraph};
use rlrig_world::canvas::GRID;
use rlrig_world::corrupt;
use rlrig_world::oracle::OracleConfig;
use rlrig_world::reflect::{self, Findings};
use rlrig_world::{Canvas, Colour, Edit, Object, Rel, Shape, WorldGraph, sample};
use serde::{Deserialize, Serialize};

use crate::roles::{NeuralDiffuser, NeuralEditor, NeuralSettings};
use crate::training_loop::{TrainError, io, mix, other};

/// Where a VLM's training images come from besides the procedural ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VlmData {
    /// Images of the trained Diffuser generated into the pool at the start (0: none).
    pub generated: usize,
    /// Share of training examples drawn from the pool, in `[0, 1]`.
    pub generated_fraction: f64,
    /// The Diffuser's weights.
    pub diffuser: PathBuf,
    /// The Editor's weights: when given, half the pool is the Editor's output on a Diffuser
    /// image and a random edit prompt.
    pub editor: Option<PathBuf>,
    /// Guidance of the Diffuser's samples.
    pub guidance: f64,
    /// The Policy only: which edit prompts it imitates.
    pub repairs: Repairs,
}

/// The edit prompts the Policy imitates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repairs {
    /// The repair rule's one edit ([`rlrig_world::reflect::repair`]): add the first missing
    /// item, else move the subject of the first violated relation.
    #[default]
    Rule,
    /// A broad prior for Reflection-GRPO to narrow: as the rule, except that the first violated
    /// relation `a <rel> b` is repaired by one of `move a <rel> b`, `move b <inverse> a` and
    /// `swap a and b`, drawn uniformly per example. Which of them an Editor carries out best
    /// is left for the reward to find.
    Any,
}

impl Default for VlmData {
    fn default() -> Self {
        VlmData {
            generated: 0,
            generated_fraction: 0.3,
            diffuser: PathBuf::from("weights/diffuser.safetensors"),
            editor: None,
            guidance: 3.0,
            repairs: Repairs::Rule,
        }
    }
}

/// A prompt and an image that may get it wrong.
#[derive(Clone, Debug)]
pub struct Scene {
    /// The prompt.
    pub prompt: SceneGraph,
    /// The prompt in the world's terms.
    pub graph: WorldGraph,
    /// The image.
    pub image: Image,
}

/// Generated images with their prompts.
#[derive(Clone, Debug, Default)]
pub struct Pool(Vec<Scene>);

impl Pool {
    /// A pool without images (problem scenes are then all rendered and corrupted).
    pub fn empty() -> Pool {
        Pool(Vec::new())
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scenes.
    pub fn scenes(&self) -> &[Scene] {
        &self.0
    }
}

/// One pool line of `pool/index.jsonl`.
#[derive(Serialize, Deserialize)]
struct PoolLine {
    file: String,
    prompt: SceneGraph,
}

pub(crate) const POOL_STREAM: u64 = 0x9001;

/// Generates `n` scenes of the trained Diffuser (and Editor) for prompts of `seed`, on
/// `device`; deterministic for given weights.
pub fn generate_pool(
    data: &VlmData,
    n: usize,
    seed: u64,
    canvas: &Canvas,
    device: &str,
) -> Result<Pool, ModelError> {
    if n == 0 {
        return Ok(Pool::default());
    }
    let mut diffuser = NeuralDiffuser::new(
        &NeuralSettings {
            guidance: data.guidance,
            ..NeuralSettings::with_weights(data.diffuser.clone())
        },
        device,
    )?;
    let mut editor = data
        .editor
        .as_ref()
        .map(|w| {
            NeuralEditor::new(
                &NeuralSettings {
                    ..NeuralSettings::with_weights(w.clone())
                },
                device,
            )
        })
        .transpose()?;
    let mut scenes = Vec::with_capacity(n);
    for start in (0..n).step_by(64) {
        let idx: Vec<u64> = (start..(start + 64).min(n)).map(|i| i as u64).collect();
        let samples: Vec<_> = idx.iter().map(|&i| sample(canvas, seed, i)).collect();
        let requests: Vec<GenerateRequest> = samples
            .iter()
            .zip(&idx)
            .map(|(s, &i)| GenerateRequest {
                prompt: s.graph.clone(),
                seed: mix(seed, i),
                explore: false,
            })
            .collect();
        let mut images = diffuser.generate(&requests).map_err(|e| e.0)?;
        if let Some(editor) = editor.as_mut() {
            // Every other image goes through the Editor with a random edit of its prompt's
            // objects, as the loop's later rounds do.
            let picked: Vec<usize> = (0..images.len()).filter(|k| k % 2 == 1).collect();
            let requests: Vec<EditRequest> = picked
                .iter()
                .map(|&k| {
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ POOL_STREAM, idx[k]));
                    EditRequest {
                        explore: false,
                        image: images[k].clone(),
                        edit_prompt: random_edit(&samples[k].world, &mut rng).to_string(),
                        seed: mix(seed ^ POOL_STREAM, idx[k]),
                    }
                })
                .collect();
            if !requests.is_empty() {
                let edited = editor.edit(&requests).map_err(|e| e.0)?;
                for (&k, image) in picked.iter().zip(edited) {
                    images[k] = image;
                }
            }
        }
        for (s, image) in samples.into_iter().zip(images) {
            scenes.push(Scene {
                prompt: s.graph,
                graph: s.world,
                image,
            });
        }
    }
    Ok(Pool(scenes))
}

/// A random move, swap or recolour among a prompt's objects.
fn random_edit(graph: &WorldGraph, rng: &mut ChaCha8Rng) -> Edit {
    let objs = &graph.objects;
    let a = *objs.choose(rng).expect("prompts have objects");
    let others: Vec<Object> = objs.iter().copied().filter(|&o| o != a).collect();
    match (rng.random_range(0..3), others.choose(rng)) {
        (0, Some(&b)) => Edit::Move {
            object: a,
            rel: *Rel::ALL.choose(rng).expect("four"),
            anchor: b,
        },
        (1, Some(&b)) => Edit::Swap { a, b },
        _ => Edit::Recolour {
            object: a,
            colour: *Colour::ALL.choose(rng).expect("four"),
        },
    }
}

/// Writes a pool to `dir` (PNG files and `index.jsonl`).
pub(crate) fn save_pool(pool: &Pool, dir: &Path) -> Result<(), TrainError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut index = String::new();
    for (i, s) in pool.0.iter().enumerate() {
        let file = format!("{i:05}.png");
        let png = s.image.to_png().map_err(|e| other(&e))?;
        std::fs::write(tmp.join(&file), png).map_err(io(&tmp))?;
        let line = PoolLine {
            file,
            prompt: s.prompt.clone(),
        };
        index.push_str(&serde_json::to_string(&line).expect("serialises"));
        index.push('\n');
    }
    std::fs::write(tmp.join("index.jsonl"), index).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(io(dir))
}

/// Reads a pool written by [`save_pool`].
pub(crate) fn load_pool(dir: &Path) -> Result<Pool, TrainError> {
    let index = dir.join("index.jsonl");
    let text = std::fs::read_to_string(&index).map_err(io(&index))?;
    let mut scenes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |m: String| TrainError::Other(format!("{}:{}: {m}", index.display(), n + 1));
        let l: PoolLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let path = dir.join(&l.file);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let image = Image::from_png(&bytes).map_err(|e| bad(e.to_string()))?;
        let graph = WorldGraph::from_scene_graph(&l.prompt).map_err(|e| bad(e.to_string()))?;
        scenes.push(Scene {
            prompt: l.prompt,
            graph,
            image,
        });
    }
    Ok(Pool(scenes))
}

/// Example `index` of `seed`: a sampled prompt and an image that may get it wrong (see the
/// module docs); from `pool` with probability `pool_fraction` when it has images.
pub fn problem_scene(
    canvas: &Canvas,
    seed: u64,
    index: u64,
    pool: &Pool,
    pool_fraction: f64,
) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0xC4EC, index));
    if !pool.is_empty() && rng.random_bool(pool_fraction.clamp(0.0, 1.0)) {
        return pool.0[rng.random_range(0..pool.len())].clone();
    }
    let s = sample(canvas, seed, index);
    let mut placed = s.placed.clone();
    let free = |placed: &[rlrig_world::Placed], rng: &mut ChaCha8Rng| {
        let mut cells: Vec<(u32, u32)> = (0..GRID)
            .flat_map(|r| (0..GRID).map(move |c| (c, r)))
            .filter(|cell| placed.iter().all(|p| p.cell != *cell))
            .collect();
        cells.shuffle(rng);
        cells
    };
    let n = placed.len();
    match rng.random_range(0..10) {
        0 | 1 => {}
        2..=4 => {
            // A fresh random layout: each relation holds or not by chance.
            let mut cells: Vec<(u32, u32)> = (0..GRID)
                .flat_map(|r| (0..GRID).map(move |c| (c, r)))
                .collect();
            cells.shuffle(&mut rng);
            for (p, &(c, r)) in placed.iter_mut().zip(&cells) {
                *p = canvas.place_at(p.object, c, r);
            }
        }
        5 => {
            let i = rng.random_range(0..n);
            let (c, r) = free(&placed, &mut rng)[0];
            placed[i] = canvas.place_at(placed[i].object, c, r);
        }
        6 if n > 1 => {
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            let (ca, cb) = (placed[a].cell, placed[b].cell);
            placed[a] = canvas.place_at(placed[a].object, cb.0, cb.1);
            placed[b] = canvas.place_at(placed[b].object, ca.0, ca.1);
        }
        7 => {
            placed.remove(rng.random_range(0..n));
        }
        _ => {
            // One object becomes another (a wrong colour or shape).
            let i = rng.random_range(0..n);
            let o = placed[i].object;
            let other = Object {
                colour: *Colour::ALL.choose(&mut rng).expect("four"),
                shape: if rng.random_bool(0.5) {
                    o.shape
                } else {
                    *Shape::ALL.choose(&mut rng).expect("three")
                },
            };
            placed[i].object = other;
        }
    }
    if rng.random_bool(0.1) && placed.len() < 6 {
        let object = Object {
            colour: *Colour::ALL.choose(&mut rng).expect("four"),
            shape: *Shape::ALL.choose(&mut rng).expect("three"),
        };
        let (c, r) = free(&placed, &mut rng)[0];
        placed.push(canvas.place_at(object, c, r));
    }
    let mut image = canvas.draw(&placed);
    match rng.random_range(0..10) {
        0 => corrupt::gaussian_noise(&mut image, rng.random_range(5.0..25.0), &mut rng),
        1 => corrupt::box_blur(&mut image, 1),
        2 => corrupt::specks(&mut image, rng.random_range(1..4), &mut rng),
        _ => {}
    }
    Scene {
        prompt: s.graph,
        graph: s.world,
        image,
    }
}

/// The oracle's findings on a scene (the labels).
pub fn oracle_findings(scene: &Scene) -> Findings {
    reflect::oracle_findings(&scene.graph, &scene.image, &OracleConfig::default())
}
