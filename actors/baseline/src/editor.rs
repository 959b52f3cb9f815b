//! [`SceneEditor`]: reads the scene, applies the edit prompt exactly, redraws.

use rand::Rng;
use rand::seq::IndexedRandom;
use rlrig_contract::{EditRequest, Editor, Image, RoleError};
use rlrig_world::canvas::GRID;
use rlrig_world::edit::apply;
use rlrig_world::sample::sample_rng;
use rlrig_world::{Canvas, Edit, Object, Placed, detect};
use serde::{Deserialize, Serialize};

use crate::{ConfigError, probability, stream};

const ROLE: &str = "SceneEditor";

/// Config of [`SceneEditor`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneEditorConfig {
    /// Probability, per object the edit does not name, that the editor loses it from context
    /// and redraws it in a random free cell, in `[0, 1]`. Default 0.05.
    pub context_loss: f64,
    /// Simulated compute per batch, in milliseconds (default 0): stands in for a generative
    /// editor's cost in benchmarks and distribution tests. The result does not depend on it.
    pub latency_ms: u64,
}

impl Default for SceneEditorConfig {
    fn default() -> Self {
        SceneEditorConfig {
            context_loss: 0.05,
            latency_ms: 0,
        }
    }
}

/// A baseline Editor (the paper's *Inverse Diffuser*) and test instrument, not a learned
/// editor: it reads the image's scene with the world's oracle, applies the edit prompt with
/// [`rlrig_world::edit::apply`], and redraws the scene.
///
/// * **Reading**: each detected object is put in the grid cell of its box centre
///   (`column = centre_x / cell size`, clamped to the grid; rows alike) on the canvas of the
///   image's size. Redrawing therefore also snaps off-grid objects onto the grid.
/// * **Context loss**: after the edit, each object the edit does not name is, with probability
///   `context_loss`, moved to a random free cell — the way generative editors disturb what
///   they were not asked to touch.
/// * **No refusal**: an edit prompt that does not parse, or that cannot be applied to the
///   scene (an object not there, no free cell), leaves the image unchanged, as a real editor
///   that misunderstands an instruction would; the reason is logged at `debug` level. Only an
///   image that is not a square canvas of the world (at least 24 px) fails the batch.
///
/// Deterministic: the result depends only on the image, the edit prompt and the seed.
#[derive(Clone, Debug)]
pub struct SceneEditor {
    config: SceneEditorConfig,
}

impl SceneEditor {
    /// An editor with this config, checked: `context_loss` a probability.
    pub fn new(config: SceneEditorConfig) -> Result<Self, ConfigError> {
        probability(ROLE, "context_loss", config.context_loss)?;
        Ok(SceneEditor { config })
    }

    /// The config it runs with.
    pub fn config(&self) -> &SceneEditorConfig {
        &self.config
    }

    /// Edits one image.
    fn edit_one(&self, request: &EditRequest) -> Result<Image, String> {
        let image = &request.image;
        let (w, h) = (image.width(), image.height());
        if w != h {
            return Err(format!(
                "the image is {w}x{h}; the world redraws square canvases only"
            ));
        }
        let canvas = Canvas::new(w).map_err(|e| e.to_string())?;
        let edit = match Edit::parse(&request.edit_prompt) {
            Ok(edit) => edit,
            Err(e) => {
                tracing::debug!("SceneEditor leaves the image unchanged: {e}");
                return Ok(image.clone());
            }
        };
        let scene = read_scene(&canvas, image);
        let mut rng = sample_rng(request.seed, stream::EDITOR);
        let mut after = match apply(&canvas, &scene, &edit, &mut rng) {
            Ok(after) => after,
            Err(e) => {
                tracing::debug!(
                    "SceneEditor leaves the image unchanged: cannot apply {:?}: {e}",
                    request.edit_prompt
                );
                return Ok(image.clone());
            }
        };
        if self.config.context_loss > 0.0 {
            let named = named_objects(&edit);
            for i in 0..after.len() {
                if named.contains(&after[i].object) || !rng.random_bool(self.config.context_loss) {
                    continue;
                }
                let free: Vec<(u32, u32)> = (0..GRID)
                    .flat_map(|r| (0..GRID).map(move |c| (c, r)))
                    .filter(|cell| after.iter().all(|p| p.cell != *cell))
                    .collect();
                if let Some(&(c, r)) = free.choose(&mut rng) {
                    after[i] = canvas.place_at(after[i].object, c, r);
                }
            }
        }
        Ok(canvas.draw(&after))
    }
}

/// The objects an edit names, before and after it (a recoloured object under both colours).
fn named_objects(edit: &Edit) -> Vec<Object> {
    let mut named = edit.objects();
    if let Edit::Recolour { object, colour } = *edit {
        named.push(Object { colour, ..object });
    }
    named
}

/// The scene of an image: every detected object, in the cell of its box centre.
fn read_scene(canvas: &Canvas, image: &Image) -> Vec<Placed> {
    let cell = canvas.cell_size() as f64;
    let index = |centre: f64| ((centre / cell).floor().max(0.0) as u32).min(GRID - 1);
    detect(image)
        .iter()
        .map(|d| {
            let b = d.bbox;
            let col = index((b.x0 + b.x1) as f64 / 2.0);
            let row = index((b.y0 + b.y1) as f64 / 2.0);
            canvas.place_at(d.object, col, row)
        })
        .collect()
}

impl Editor for SceneEditor {
    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        if self.config.latency_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.config.latency_ms));
        }
        batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                self.edit_one(r)
                    .map_err(|e| RoleError(format!("SceneEditor: request {i}: {e}")))
            })
            .collect()
    }
}
