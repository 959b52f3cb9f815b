//! [`MistakenRenderer`]: the world's exact renderer with seeded spatial mistakes.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rlrig_contract::{Diffuser, GenerateRequest, Image, RoleError};
use rlrig_world::canvas::{GRID, MIN_CANVAS};
use rlrig_world::sample::sample_rng;
use rlrig_world::{Canvas, Colour, Object, Placed, WorldGraph};
use serde::{Deserialize, Serialize};

use crate::{ConfigError, probability, stream};

const ROLE: &str = "MistakenRenderer";

/// Config of [`MistakenRenderer`].
///
/// The four mistake weights are relative: a mistake is one of the kinds that can be made in
/// the scene at hand, chosen with probability proportional to its weight.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MistakenRendererConfig {
    /// Canvas side in pixels, at least 24. Default 32.
    pub size: u32,
    /// Probability that an image gets one mistake, in `[0, 1]`. Default 0.5.
    pub mistake_rate: f64,
    /// Weight of swapping the cells of the two objects of a prompt relation. Default 0.4.
    pub swap: f64,
    /// Weight of moving one object to a random free cell. Default 0.4.
    pub misplace: f64,
    /// Weight of recolouring one object (never into another object of the scene). Default 0.1.
    pub recolour: f64,
    /// Weight of leaving one object out. Default 0.1.
    pub drop: f64,
}

impl Default for MistakenRendererConfig {
    fn default() -> Self {
        MistakenRendererConfig {
            size: Canvas::DEFAULT_SIZE,
            mistake_rate: 0.5,
            swap: 0.4,
            misplace: 0.4,
            recolour: 0.1,
            drop: 0.1,
        }
    }
}

/// A baseline Diffuser and test instrument, not a generative model: it draws the prompt's
/// scene graph exactly with the world's solver ([`Canvas::solve`]) and then, with probability
/// `mistake_rate`, makes one spatial mistake — the kind of error the reflect-edit cycle exists
/// to repair.
///
/// Mistakes: **swap** the cells of the two objects of one prompt relation (which turns that
/// relation round), **misplace** one object into a random free cell, **recolour** one object
/// (to a colour that no object of its shape has), **drop** one object.
///
/// Deterministic: the layout and the mistake depend only on the request's seed. A prompt
/// outside the world's vocabulary, or one no grid layout satisfies, fails the batch with the
/// world's explanation.
#[derive(Clone, Debug)]
pub struct MistakenRenderer {
    config: MistakenRendererConfig,
    canvas: Canvas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mistake {
    Swap,
    Misplace,
    Recolour,
    Drop,
}

impl MistakenRenderer {
    /// A renderer with this config, checked: `size` at least 24, `mistake_rate` a probability,
    /// weights finite and non-negative with a positive sum when `mistake_rate` is above 0.
    pub fn new(config: MistakenRendererConfig) -> Result<Self, ConfigError> {
        let canvas = Canvas::new(config.size).map_err(|_| ConfigError {
            role: ROLE,
            key: "size",
            value: config.size.to_string(),
            rule: format!("must be at least {MIN_CANVAS} (pixels per side)"),
        })?;
        probability(ROLE, "mistake_rate", config.mistake_rate)?;
        for (key, w) in config.weights() {
            if !(w.is_finite() && w >= 0.0) {
                return Err(ConfigError {
                    role: ROLE,
                    key,
                    value: w.to_string(),
                    rule: "must be a finite weight of at least 0".into(),
                });
            }
        }
        let total: f64 = config.weights().iter().map(|(_, w)| w).sum();
        if config.mistake_rate > 0.0 && total <= 0.0 {
            return Err(ConfigError {
                role: ROLE,
                key: "swap",
                value: config.swap.to_string(),
                rule: "swap, misplace, recolour and drop are all 0 while mistake_rate is above 0; give at least one a positive weight".into(),
            });
        }
        Ok(MistakenRenderer { config, canvas })
    }

    /// The config it runs with.
    pub fn config(&self) -> &MistakenRendererConfig {
        &self.config
    }

    /// Renders one prompt: the exact layout for `seed`, then perhaps one mistake.
    fn render(&self, request: &GenerateRequest) -> Result<Image, String> {
        let graph = WorldGraph::from_scene_graph(&request.prompt).map_err(|e| e.to_string())?;
        let mut rng = sample_rng(request.seed, stream::RENDERER);
        let mut placed = self
            .canvas
            .solve(&graph, &mut rng)
            .map_err(|e| e.to_string())?;
        if rng.random_bool(self.config.mistake_rate) {
            self.mistake(&graph, &mut placed, &mut rng);
        }
        Ok(self.canvas.draw(&placed))
    }

    /// Makes one mistake among those possible in this scene, chosen by weight.
    fn mistake<R: Rng>(&self, graph: &WorldGraph, placed: &mut Vec<Placed>, rng: &mut R) {
        let n = placed.len();
        let possible = |m: Mistake| match m {
            Mistake::Swap => graph.relations.iter().any(|&(a, _, b)| a != b),
            // Sixteen cells, at most six objects: a free cell always exists.
            Mistake::Misplace | Mistake::Drop => n > 0,
            Mistake::Recolour => (0..n).any(|i| !self.recolours(placed, i).is_empty()),
        };
        let options: Vec<(Mistake, f64)> = [
            (Mistake::Swap, self.config.swap),
            (Mistake::Misplace, self.config.misplace),
            (Mistake::Recolour, self.config.recolour),
            (Mistake::Drop, self.config.drop),
        ]
        .into_iter()
        .filter(|&(m, w)| w > 0.0 && possible(m))
        .collect();
        let Ok(&(mistake, _)) = options.choose_weighted(rng, |&(_, w)| w) else {
            return;
        };
        match mistake {
            Mistake::Swap => {
                let related: Vec<(usize, usize)> = graph
                    .relations
                    .iter()
                    .filter(|&&(a, _, b)| a != b)
                    .map(|&(a, _, b)| (a, b))
                    .collect();
                let &(a, b) = related.choose(rng).expect("swap is possible");
                let (ca, cb) = (placed[a].cell, placed[b].cell);
                placed[a] = self.canvas.place_at(placed[a].object, cb.0, cb.1);
                placed[b] = self.canvas.place_at(placed[b].object, ca.0, ca.1);
            }
            Mistake::Misplace => {
                let i = rng.random_range(0..n);
                let mut free: Vec<(u32, u32)> = (0..GRID)
                    .flat_map(|r| (0..GRID).map(move |c| (c, r)))
                    .filter(|cell| placed.iter().all(|p| p.cell != *cell))
                    .collect();
                free.shuffle(rng);
                let (c, r) = free[0];
                placed[i] = self.canvas.place_at(placed[i].object, c, r);
            }
            Mistake::Recolour => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| !self.recolours(placed, i).is_empty())
                    .collect();
                let &i = candidates.choose(rng).expect("recolour is possible");
                let &colour = self.recolours(placed, i).choose(rng).expect("non-empty");
                placed[i].object.colour = colour;
            }
            Mistake::Drop => {
                placed.remove(rng.random_range(0..n));
            }
        }
    }

    /// The colours object `i` can take without becoming another object of the scene.
    fn recolours(&self, placed: &[Placed], i: usize) -> Vec<Colour> {
        let shape = placed[i].object.shape;
        Colour::ALL
            .into_iter()
            .filter(|&colour| placed.iter().all(|p| p.object != Object { colour, shape }))
            .collect()
    }
}

impl MistakenRendererConfig {
    fn weights(&self) -> [(&'static str, f64); 4] {
        [
            ("swap", self.swap),
            ("misplace", self.misplace),
            ("recolour", self.recolour),
            ("drop", self.drop),
        ]
    }
}

impl Diffuser for MistakenRenderer {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        batch
            .iter()
            .enumerate()
            .map(|(i, request)| {
                self.render(request).map_err(|e| {
                    RoleError(format!(
                        "MistakenRenderer: request {i} (prompt {:?}): {e}",
                        request.prompt.prompt()
                    ))
                })
            })
            .collect()
    }
}
