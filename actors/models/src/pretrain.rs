//! Pre-training the Diffuser and the Editor on data the built-in world generates on the fly.
//!
//! A run directory holds `checkpoint/` (the model and optimiser in burn's burnpack format, which
//! keeps parameter identities so the optimiser state lines up on resume, and `state.json`),
//! `loss.jsonl` (one line per step), `samples/step-NNNNNN.png` with `.json` beside it (a grid of
//! the held-out evaluation prompts and the oracle's scores of it), and, at the end of every
//! invocation (finished or stopped by its time budget), `model.safetensors` — the exponential
//! moving average of the weights ([`EMA_DECAY`]) — also written to the job's `export` path
//! when given.
//!
//! Every batch is a pure function of `(seed, step)` — the world's sample index, the noise, the
//! prompt dropout — so a resumed run continues exactly where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Tensor};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_contract::Image;
use rlrig_world::edit::{Edit, apply};
use rlrig_world::sample::sample_rng;
use rlrig_world::{Canvas, Colour, Object, Rel, Shape, judge, sample};
use serde::{Deserialize, Serialize};

use crate::flow::{self, SamplerConfig};
use crate::image::{images_to_tensor, tensor_to_images};
use crate::text::{TextBatch, Tokenizer};
use crate::{Dit, DitConfig, weights};

/// Which model a job trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Text → image.
    Diffuser,
    /// Image + edit prompt → image.
    Editor,
}

/// A pre-training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainJob {
    /// What is trained.
    pub model: ModelKind,
    /// The architecture.
    pub config: DitConfig,
    /// Optimiser steps in all.
    pub steps: u64,
    /// Examples per step.
    pub batch: usize,
    /// AdamW learning rate (after warm-up).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Seed of data and noise.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Steps between sample grids.
    pub sample_every: u64,
    /// Wall-clock budget in minutes for this invocation; stops with a checkpoint.
    pub max_minutes: Option<f64>,
    /// Where to copy the final weights.
    pub export: Option<PathBuf>,
    /// Weights to start a fresh run from (ignored on resume).
    #[serde(default)]
    pub init: Option<PathBuf>,
}

/// Why pre-training failed.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint does not belong to this job, or is damaged.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Weights could not be saved or loaded.
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PretrainError + '_ {
    move |source| PretrainError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CheckpointState {
    job: PretrainJob,
    step: u64,
    seconds: f64,
}

/// One line of `loss.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossLine {
    /// Step just taken (1-based).
    pub step: u64,
    /// The batch's loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Training seconds so far, over all invocations.
    pub seconds: f64,
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

/// How an invocation ended.
#[derive(Clone, Debug)]
pub struct PretrainOutcome {
    /// The step reached.
    pub step: u64,
    /// Whether all steps are done (else the time budget ran out).
    pub finished: bool,
    /// Mean loss of the last 100 steps of this invocation.
    pub recent_loss: f64,
    /// The last evaluation, if any ran.
    pub last_eval: Option<SampleEval>,
}

/// The seed of the held-out evaluation prompts (also `flows/infer.toml`'s): training data
/// never uses it.
pub const EVAL_SEED: u64 = 1000;
/// Evaluation prompts per sample grid.
pub const EVAL_PROMPTS: usize = 32;

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The decay of the weights' exponential moving average (DESIGN.md §9: 0.999), reached after
/// a warm-up ([`ema_decay`]). Evaluation
/// grids and the exported weights use the average, which samples far cleaner than the raw
/// weights of the last step.
pub const EMA_DECAY: f64 = 0.999;

/// The average's decay after `step` steps: `min(EMA_DECAY, (1 + step) / (10 + step))`, so that
/// the average follows the fast early changes instead of lagging behind the initial weights
/// for thousands of steps.
pub fn ema_decay(step: u64) -> f64 {
    EMA_DECAY.min((1.0 + step as f64) / (10.0 + step as f64))
}

/// Collects a module's float parameters, flattened, by parameter id.
struct Collect(std::collections::HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.insert(param.id, t.reshape([n]));
    }
}

/// `ema ← decay·ema + (1 − decay)·current`, parameter by parameter (ids match: the average
/// starts as a copy of the model).
struct Blend {
    current: std::collections::HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(cur) = self.current.remove(&param.id) else {
            return param;
        };
        let decay = self.decay;
        param.map(|e| {
            let shape = e.shape();
            e.mul_scalar(decay) + cur.reshape(shape).mul_scalar(1.0 - decay)
        })
    }
}

/// Moves the average one step towards `model`.
fn update_ema(ema: Dit, model: &Dit, decay: f64) -> Dit {
    let mut collect = Collect(std::collections::HashMap::new());
    Module::valid(model).visit(&mut collect);
    ema.map(&mut Blend {
        current: collect.0,
        decay,
    })
}

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
        let absent: Vec<Object> = Colour::ALL
            .iter()
            .flat_map(|&colour| {
                Shape::ALL
                    .iter()
                    .map(move |&shape| Object { colour, shape })
            })
            .filter(|o| !objs.contains(o))
            .collect();
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
    let other = |e: &dyn std::fmt::Display| PretrainError::Other(e.to_string());
    let base = step * job.batch as u64;
    match job.model {
        ModelKind::Diffuser => {
            let samples: Vec<_> = (0..job.batch as u64)
                .map(|i| sample(canvas, job.seed, base + i))
                .collect();
            let images: Vec<Image> = samples.iter().map(|s| s.image.clone()).collect();
            let prompts: Vec<String> = samples.iter().map(|s| s.graph.prompt()).collect();
            let x0 = images_to_tensor(&images, device).map_err(|e| other(&e))?;
            let text = tok.batch(&prompts, device).map_err(|e| other(&e))?;
            Ok((x0, None, text))
        }
        ModelKind::Editor => {
            let ex: Vec<EditExample> = (0..job.batch as u64)
                .map(|i| edit_example(canvas, job.seed, base + i))
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

/// Runs (or, with `resume`, continues) a job in `dir`; `log` sees every loss line and
/// evaluation as they happen.
pub fn run(
    job: &PretrainJob,
    dir: &Path,
    resume: bool,
    mut log: impl FnMut(&str),
) -> Result<PretrainOutcome, PretrainError> {
    let t_invocation = Instant::now();
    std::fs::create_dir_all(dir.join("samples")).map_err(io(dir))?;
    let device = Device::flex().autodiff();
    let canvas = Canvas::new(job.config.image_size as u32)
        .map_err(|e| PretrainError::Other(e.to_string()))?;
    let tok = Tokenizer::new(job.config.text_len);
    let ckpt = dir.join("checkpoint");
    // Seeded initialisation: a run is a function of its job (a resume loads the weights anyway).
    device.seed(job.seed);
    let mut model =
        Dit::new(&job.config, &device).map_err(|e| PretrainError::Other(e.to_string()))?;
    let mut optim = flow::adamw().init();
    let (mut step, mut seconds) = (0u64, 0.0f64);
    if resume {
        let state_path = ckpt.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| PretrainError::Checkpoint {
                path: ckpt.clone(),
                message: e.to_string(),
            })?;
        if state.job.model != job.model
            || state.job.config != job.config
            || state.job.seed != job.seed
            || state.job.batch != job.batch
        {
            return Err(PretrainError::Checkpoint {
                path: ckpt,
                message:
                    "it was written by a different job (model, architecture, seed or batch differ)"
                        .into(),
            });
        }
        let mut store = BurnpackStore::from_file(ckpt.join("model.bpk"));
        let result = model
            .load_from(&mut store)
            .map_err(|e| PretrainError::Checkpoint {
                path: ckpt.clone(),
                message: e.to_string(),
            })?;
        if !result.errors.is_empty() || !result.missing.is_empty() {
            return Err(PretrainError::Checkpoint {
                path: ckpt,
                message: format!(
                    "model tensors did not apply: {:?}; missing {:?}",
                    result.errors, result.missing
                ),
            });
        }
        optim = optim
            .load(ckpt.join("optim.bpk"))
            .map_err(|e| PretrainError::Checkpoint {
                path: ckpt.clone(),
                message: format!("optimiser: {e}"),
            })?;
        step = state.step;
        seconds = state.seconds;
        log(&format!("resumed at step {step} ({seconds:.0} s trained)"));
    } else if let Some(init) = job.init.as_ref().filter(|_| !ckpt.exists()) {
        model = weights::load_expecting(init, &job.config, &device)?;
        log(&format!("starting from the weights in {}", init.display()));
    } else if ckpt.exists() {
        return Err(PretrainError::Other(format!(
            "{} already holds a checkpoint: resume it (--resume) or start a new run",
            ckpt.display()
        )));
    }

    // The average: from the checkpoint when it has one (older checkpoints do not: it starts
    // from the current weights then), else a copy of the fresh model.
    let mut ema = Module::valid(&model);
    let ema_path = ckpt.join("ema.bpk");
    if resume && ema_path.exists() {
        let mut store = BurnpackStore::from_file(&ema_path);
        ema.load_from(&mut store)
            .map_err(|e| PretrainError::Checkpoint {
                path: ckpt.clone(),
                message: format!("average: {e}"),
            })?;
    }

    let loss_path = dir.join("loss.jsonl");
    if resume {
        // Steps logged after the checkpoint (a crash or a kill between checkpoints) are run
        // again: drop their lines so that every step appears once.
        if let Ok(text) = std::fs::read_to_string(&loss_path) {
            let kept: String = text
                .lines()
                .filter(|l| serde_json::from_str::<LossLine>(l).is_ok_and(|x| x.step <= step))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&loss_path, kept).map_err(io(&loss_path))?;
        }
    }
    let mut loss_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&loss_path)
        .map_err(io(&loss_path))?;
    let mut recent: Vec<f64> = Vec::new();
    let mut last_eval = None;
    let budget = job.max_minutes.map(|m| m * 60.0);
    let mut since = Instant::now();
    while step < job.steps {
        let lr = if job.warmup > 0 && step < job.warmup {
            job.lr * (step + 1) as f64 / job.warmup as f64
        } else {
            job.lr
        };
        let (x0, cond, text) = batch(job, &canvas, &tok, step, &device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(job.seed ^ 0x5EED, step));
        let loss = flow::training_loss(&model, x0, cond.as_ref(), &text, &mut rng);
        let value = f64::from(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        ema = update_ema(ema, &model, ema_decay(step));
        step += 1;
        seconds += since.elapsed().as_secs_f64();
        since = Instant::now();
        recent.push(value);
        if recent.len() > 100 {
            recent.remove(0);
        }
        let line = LossLine {
            step,
            loss: value,
            lr,
            seconds,
        };
        writeln!(
            loss_file,
            "{}",
            serde_json::to_string(&line).expect("serialises")
        )
        .map_err(io(&loss_path))?;
        let out_of_time = budget.is_some_and(|b| t_invocation.elapsed().as_secs_f64() >= b);
        if step % job.sample_every == 0 || step == job.steps {
            let eval = evaluate(&ema, job, &canvas, &tok, step, dir)?;
            log(&format!(
                "step {step}: loss {:.4} (mean of last {}), eval entity IoU {:.3}, relation acc. {:.3}, SG-IoU {:.3}",
                recent.iter().sum::<f64>() / recent.len() as f64,
                recent.len(),
                eval.entity_iou,
                eval.relation_accuracy,
                eval.sg_iou
            ));
            last_eval = Some(eval);
            since = Instant::now();
        }
        if step % job.checkpoint_every == 0 || step == job.steps || out_of_time {
            loss_file.flush().map_err(io(&loss_path))?;
            checkpoint(&model, &ema, &optim, job, step, seconds, &ckpt)?;
            since = Instant::now();
        }
        if out_of_time && step < job.steps {
            log(&format!(
                "time budget reached at step {step}; continue with --resume"
            ));
            break;
        }
    }
    let finished = step >= job.steps;
    // The latest weights, whether the job finished or its time budget ran out.
    let valid = &ema;
    weights::save(valid, dir.join("model.safetensors"))?;
    if let Some(export) = &job.export {
        if let Some(parent) = export.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        weights::save(valid, export)?;
        log(&format!(
            "exported the step-{step} weights to {}",
            export.display()
        ));
    }
    Ok(PretrainOutcome {
        step,
        finished,
        recent_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        last_eval,
    })
}

/// Writes the checkpoint to a scratch directory and renames it into place, so a crash leaves
/// the previous checkpoint whole.
fn checkpoint(
    model: &Dit,
    ema: &Dit,
    optim: &burn::optim::ModuleOptimizer,
    job: &PretrainJob,
    step: u64,
    seconds: f64,
    ckpt: &Path,
) -> Result<(), PretrainError> {
    let tmp = ckpt.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let bad = |m: String| PretrainError::Checkpoint {
        path: tmp.clone(),
        message: m,
    };
    let mut store = BurnpackStore::from_file(tmp.join("model.bpk")).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| bad(e.to_string()))?;
    optim
        .save(tmp.join("optim.bpk"))
        .map_err(|e| bad(format!("optimiser: {e}")))?;
    let mut store = BurnpackStore::from_file(tmp.join("ema.bpk")).overwrite(true);
    ema.save_into(&mut store)
        .map_err(|e| bad(format!("average: {e}")))?;
    let state = CheckpointState {
        job: job.clone(),
        step,
        seconds,
    };
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_string_pretty(&state).expect("serialises"),
    )
    .map_err(io(&tmp))?;
    let old = ckpt.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if ckpt.exists() {
        std::fs::rename(ckpt, &old).map_err(io(ckpt))?;
    }
    std::fs::rename(&tmp, ckpt).map_err(io(ckpt))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
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
    let other = |e: &dyn std::fmt::Display| PretrainError::Other(e.to_string());
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
            let x = flow::sample_ode(model, &text, None, &sampler, EVAL_SEED);
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
            let x = flow::sample_ode(model, &text, Some(&cond), &sampler, EVAL_SEED);
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
