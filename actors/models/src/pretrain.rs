//! Pre-training the Diffuser and the Editor on data the built-in world generates on the fly,
//! with the shared training loop of [`crate::train`]: `samples/step-NNNNNN.png` with `.json`
//! beside it hold a grid of the held-out evaluation prompts and the oracle's scores of it.
//!
//! Every batch is a pure function of `(seed, step)` — the world's sample index, the noise, the
//! prompt dropout — so a resumed run continues exactly where it stopped.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_contract::Image;
use rlrig_world::edit::{Edit, apply};
use rlrig_world::sample::sample_rng;
use rlrig_world::{Canvas, Colour, Object, Rel, judge, sample};
use serde::{Deserialize, Serialize};

use crate::image::{images_to_tensor, tensor_to_images};
use crate::rectified_flow::{self, SamplerConfig};
use crate::text::{TextBatch, Tokenizer};
use crate::training_loop::{self, LoopSettings, Task, TrainError, io, mix, other};
pub use crate::training_loop::{TrainError as PretrainError, TrainOutcome as PretrainOutcome};
use crate::{Dit, DitConfig};

/// Which model a job trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Text → image.
    Diffuser,
    /// Image + edit prompt → image.
    Editor,
}

/// A pre-training job of the Diffuser or the Editor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainJob {
    /// What is trained.
    pub model: ModelKind,
    /// The architecture.
    pub config: DitConfig,
    /// The Editor's weight on the pixels an edit changes ([`rectified_flow::training_loss_weighted`];
    /// 0: a plain mean).
    #[serde(default)]
    pub edit_weight: f64,
    /// The mean of the logit-normal noise levels ([`rectified_flow::training_loss_weighted`]; 0: the
    /// standard `sigmoid(N(0, 1))`).
    #[serde(default)]
    pub noise_mean: f64,
    /// Steps, batch, learning rate, budget, device, …
    #[serde(flatten)]
    pub train: LoopSettings,
}

/// The oracle's view of a sample grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleEval {
    /// Step of the model.
    pub step: u64,
    /// Mean Entity-IoU of the samples against their prompts.
    pub entity_iou: f64,
    /// Mean relation accuracy.
    pub relation_accuracy: f64,
    /// Mean SG-IoU.
    pub sg_iou: f64,
    /// Prompts (Diffuser) or edit prompts (Editor), in grid order.
    pub prompts: Vec<String>,
}

/// The seed of the held-out evaluation prompts (also `flows/infer.toml`'s): training data
/// never uses it.
pub const EVAL_SEED: u64 = 1000;
/// Evaluation prompts per sample grid.
pub const EVAL_PROMPTS: usize = 32;
/// One Editor training example: a scene, an edit prompt, and the scene after the edit.
#[derive(Clone, Debug)]
pub struct EditExample {
    /// The scene before.
    pub before: Image,
    /// The edit prompt (canonical text).
    pub edit: Edit,
    /// The scene after.
    pub after: Image,
}

/// Editor example `index` of `seed`: a sampled scene and a random applicable edit of a random
/// kind (move, recolour, add, remove, swap with equal odds).
pub fn edit_example(canvas: &Canvas, seed: u64, index: u64) -> EditExample {
    let s = sample(canvas, seed, index);
    let mut rng = sample_rng(mix(seed, 0xED17), index);
    loop {
        let objs: Vec<Object> = s.placed.iter().map(|p| p.object).collect();
        let pick = |rng: &mut ChaCha8Rng| *objs.choose(rng).expect("scenes have objects");
        let absent: Vec<Object> = Object::all().filter(|o| !objs.contains(o)).collect();
        let edit = match rng.random_range(0..5) {
            0 => {
                let mut two = objs.clone();
                two.shuffle(&mut rng);
                Edit::Move {
                    object: two[0],
                    rel: *Rel::ALL.choose(&mut rng).expect("four"),
                    anchor: two[1],
                }
            }
            1 => {
                let object = pick(&mut rng);
                let colours: Vec<Colour> = Colour::ALL
                    .into_iter()
                    .filter(|&c| {
                        c != object.colour
                            && !objs.contains(&Object {
                                colour: c,
                                shape: object.shape,
                            })
                    })
                    .collect();
                match colours.choose(&mut rng) {
                    Some(&colour) => Edit::Recolour { object, colour },
                    None => continue,
                }
            }
            2 => {
                let object = *absent
                    .choose(&mut rng)
                    .expect("a scene has at most 4 of 12 objects");
                let placement = rng
                    .random_bool(0.7)
                    .then(|| (*Rel::ALL.choose(&mut rng).expect("four"), pick(&mut rng)));
                Edit::Add { object, placement }
            }
            3 if objs.len() > 1 => Edit::Remove {
                object: pick(&mut rng),
            },
            4 => {
                let mut two = objs.clone();
                two.shuffle(&mut rng);
                Edit::Swap {
                    a: two[0],
                    b: two[1],
                }
            }
            _ => continue,
        };
        if let Ok(after) = apply(canvas, &s.placed, &edit, &mut rng) {
            return EditExample {
                before: s.image.clone(),
                edit,
                after: canvas.draw(&after),
            };
        }
    }
}

/// The tensors of training batch `step`: targets, the Editor's source images, prompts.
fn batch(
    job: &PretrainJob,
    canvas: &Canvas,
    tok: &Tokenizer,
    step: u64,
    device: &Device,
) -> Result<(Tensor<4>, Option<Tensor<4>>, TextBatch), PretrainError> {
    let base = step * job.train.batch as u64;
    match job.model {
        ModelKind::Diffuser => {
            let samples: Vec<_> = (0..job.train.batch as u64)
                .map(|i| sample(canvas, job.train.seed, base + i))
                .collect();
            let images: Vec<Image> = samples.iter().map(|s| s.image.clone()).collect();
            let prompts: Vec<String> = samples.iter().map(|s| s.graph.prompt()).collect();
            let x0 = images_to_tensor(&images, device).map_err(|e| other(&e))?;
            let text = tok.batch(&prompts, device).map_err(|e| other(&e))?;
            Ok((x0, None, text))
        }
        ModelKind::Editor => {
            let ex: Vec<EditExample> = (0..job.train.batch as u64)
                .map(|i| edit_example(canvas, job.train.seed, base + i))
                .collect();
            let after: Vec<Image> = ex.iter().map(|e| e.after.clone()).collect();
            let before: Vec<Image> = ex.iter().map(|e| e.before.clone()).collect();
            let prompts: Vec<String> = ex.iter().map(|e| e.edit.to_string()).collect();
            let x0 = images_to_tensor(&after, device).map_err(|e| other(&e))?;
            let cond = images_to_tensor(&before, device).map_err(|e| other(&e))?;
            let text = tok.batch(&prompts, device).map_err(|e| other(&e))?;
            Ok((x0, Some(cond), text))
        }
    }
}

/// The Diffuser's or the Editor's training task.
struct DitTask<'a> {
    job: &'a PretrainJob,
    canvas: Canvas,
    tok: Tokenizer,
    device: Device,
}

impl Task for DitTask<'_> {
    type Model = Dit;

    fn settings(&self) -> &LoopSettings {
        &self.job.train
    }

    fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.job.model,
            "config": self.job.config,
            "seed": self.job.train.seed,
            "batch": self.job.train.batch,
        })
    }

    fn config(&self) -> &DitConfig {
        &self.job.config
    }

    fn loss(&self, model: &Dit, step: u64) -> Result<Tensor<1>, TrainError> {
        let (x0, cond, text) = batch(self.job, &self.canvas, &self.tok, step, &self.device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.job.train.seed ^ 0x5EED, step));
        Ok(rectified_flow::training_loss_weighted(
            model,
            x0,
            cond.as_ref(),
            &text,
            &mut rng,
            self.job.edit_weight,
            self.job.noise_mean,
        ))
    }

    fn evaluate(
        &self,
        model: &Dit,
        step: u64,
        dir: &Path,
    ) -> Result<(String, serde_json::Value), TrainError> {
        let eval = evaluate(model, self.job, &self.canvas, &self.tok, step, dir)?;
        Ok((
            format!(
                "eval entity IoU {:.3}, relation acc. {:.3}, SG-IoU {:.3}",
                eval.entity_iou, eval.relation_accuracy, eval.sg_iou
            ),
            serde_json::to_value(&eval).expect("serialises"),
        ))
    }
}

/// Runs (or, with `resume`, continues) a job in `dir`; `log` sees every evaluation and other
/// news as they happen.
pub fn run(
    job: &PretrainJob,
    dir: &Path,
    resume: bool,
    log: impl FnMut(&str),
) -> Result<PretrainOutcome, PretrainError> {
    std::fs::create_dir_all(dir.join("samples")).map_err(io(dir))?;
    let device = training_loop::training_device(&job.train)?;
    let canvas = Canvas::new(job.config.image_size as u32).map_err(|e| other(&e))?;
    // Seeded initialisation: a run is a function of its job (a resume loads the weights anyway).
    let model = crate::device::seeded(&device, job.train.seed, || Dit::new(&job.config, &device))
        .map_err(|e| other(&e))?;
    let task = DitTask {
        job,
        canvas,
        tok: Tokenizer::new(job.config.text_len),
        device,
    };
    training_loop::run(&task, model, dir, resume, log)
}

/// Samples the held-out evaluation prompts, writes the grid and the oracle's scores.
fn evaluate(
    model: &Dit,
    job: &PretrainJob,
    canvas: &Canvas,
    tok: &Tokenizer,
    step: u64,
    dir: &Path,
) -> Result<SampleEval, PretrainError> {
    let device = model.device();
    let sampler = SamplerConfig {
        steps: 20,
        guidance: 1.0,
        ..SamplerConfig::default()
    };
    let (images, prompts, graphs) = match job.model {
        ModelKind::Diffuser => {
            let samples: Vec<_> = (0..EVAL_PROMPTS as u64)
                .map(|i| sample(canvas, EVAL_SEED, i))
                .collect();
            let prompts: Vec<String> = samples.iter().map(|s| s.graph.prompt()).collect();
            let text = tok.batch(&prompts, &device).map_err(|e| other(&e))?;
            let x = rectified_flow::sample_ode(model, &text, None, &sampler, EVAL_SEED);
            let graphs = samples.into_iter().map(|s| s.graph).collect::<Vec<_>>();
            (tensor_to_images(x).map_err(|e| other(&e))?, prompts, graphs)
        }
        ModelKind::Editor => {
            let ex: Vec<EditExample> = (0..EVAL_PROMPTS as u64)
                .map(|i| edit_example(canvas, EVAL_SEED, i))
                .collect();
            let prompts: Vec<String> = ex.iter().map(|e| e.edit.to_string()).collect();
            let text = tok.batch(&prompts, &device).map_err(|e| other(&e))?;
            let before: Vec<Image> = ex.iter().map(|e| e.before.clone()).collect();
            let cond = images_to_tensor(&before, &device).map_err(|e| other(&e))?;
            let x = rectified_flow::sample_ode(model, &text, Some(&cond), &sampler, EVAL_SEED);
            // Judge the edit by the scene it should produce.
            let graphs = ex
                .iter()
                .map(|e| rlrig_world::parse(&e.after))
                .collect::<Vec<_>>();
            (tensor_to_images(x).map_err(|e| other(&e))?, prompts, graphs)
        }
    };
    let (mut ent, mut acc, mut sg, mut n_acc) = (0.0, 0.0, 0.0, 0usize);
    for (img, g) in images.iter().zip(&graphs) {
        if let Ok(j) = judge(g, img) {
            ent += j.scores.entity_iou;
            sg += j.scores.sg_iou;
            if let Some(a) = j.relation_accuracy {
                acc += a;
                n_acc += 1;
            }
        }
    }
    let n = images.len().max(1) as f64;
    let eval = SampleEval {
        step,
        entity_iou: ent / n,
        relation_accuracy: acc / n_acc.max(1) as f64,
        sg_iou: sg / n,
        prompts,
    };
    let grid = grid(&images, 8);
    let png = dir.join(format!("samples/step-{step:06}.png"));
    std::fs::write(&png, grid.to_png().map_err(|e| other(&e))?).map_err(io(&png))?;
    let json = png.with_extension("json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&eval).expect("serialises"),
    )
    .map_err(io(&json))?;
    Ok(eval)
}

/// Images tiled `cols` per row with a 1-pixel grey border.
pub fn grid(images: &[Image], cols: usize) -> Image {
    let (w, h) = images.first().map_or((1, 1), |i| (i.width(), i.height()));
    let rows = images.len().div_ceil(cols.max(1)) as u32;
    let cols = cols as u32;
    let mut out = Image::filled(cols * (w + 1) + 1, rows * (h + 1) + 1, [128, 128, 128]);
    for (k, img) in images.iter().enumerate() {
        let (c, r) = (k as u32 % cols, k as u32 / cols);
        for y in 0..h {
            for x in 0..w {
                out.put(1 + c * (w + 1) + x, 1 + r * (h + 1) + y, img.get(x, y));
            }
        }
    }
    out
}
