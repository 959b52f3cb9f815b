//! The seeded sampler of satisfiable scene graphs.
//!
//! A sample is drawn layout-first: 2–4 distinct objects are put in random cells of the grid,
//! then 1–4 relations are chosen among those that hold there by GenEval's rule (at most one
//! per pair of objects, in a random direction). Every sampled graph is therefore satisfiable,
//! and the layout it came from is a drawing of it.
//!
//! Sample `i` of seed `s` depends on `(s, i)` only (its own ChaCha stream), so samples can be
//! drawn in any order or in parallel and stay reproducible.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_contract::Image;
use rlrig_sg::SceneGraph;

use crate::canvas::{Canvas, GRID, Placed};
use crate::geometry::relative_position;
use crate::vocab::{Object, WorldGraph};

/// One sampled scene: its graph, the drawing and where each object stands.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The scene graph as a LAION-SG record (`img_id` and `name` set from seed and index).
    pub graph: SceneGraph,
    /// The graph in the world's terms.
    pub world: WorldGraph,
    /// The rendered image; every relation of `graph` holds in it.
    pub image: Image,
    /// The objects as drawn, in item order.
    pub placed: Vec<Placed>,
}

/// The random stream of sample `index` of `seed`.
pub fn sample_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// The file name the sampler gives sample `index`: `000042.png`.
pub fn sample_name(index: u64) -> String {
    format!("{index:06}.png")
}

/// Draws sample `index` of `seed` on `canvas`.
pub fn sample(canvas: &Canvas, seed: u64, index: u64) -> Sample {
    let mut rng = sample_rng(seed, index);
    let n_items = rng.random_range(2..=4);
    let mut all: Vec<Object> = Object::all().collect();
    all.shuffle(&mut rng);
    let objects: Vec<Object> = all[..n_items].to_vec();

    let mut cells: Vec<(u32, u32)> = (0..GRID)
        .flat_map(|r| (0..GRID).map(move |c| (c, r)))
        .collect();
    cells.shuffle(&mut rng);
    let placed: Vec<Placed> = objects
        .iter()
        .zip(&cells)
        .map(|(&o, &(c, r))| canvas.place_at(o, c, r))
        .collect();

    // Candidate relations, one list per unordered pair: every relation that holds, either way.
    let mut pairs = Vec::new();
    for a in 0..n_items {
        for b in a + 1..n_items {
            let mut options: Vec<(usize, _, usize)> =
                relative_position(&placed[a].bbox, &placed[b].bbox)
                    .into_iter()
                    .map(|r| (a, r, b))
                    .collect();
            options.extend(
                relative_position(&placed[b].bbox, &placed[a].bbox)
                    .into_iter()
                    .map(|r| (b, r, a)),
            );
            if !options.is_empty() {
                pairs.push(options);
            }
        }
    }
    pairs.shuffle(&mut rng);
    let n_rel = rng.random_range(1..=4).min(pairs.len());
    let relations = pairs[..n_rel]
        .iter()
        .map(|opts| *opts.choose(&mut rng).expect("non-empty options"))
        .collect();

    let world = WorldGraph { objects, relations };
    let mut graph = world.to_scene_graph();
    graph.img_id = Some(format!("{seed}-{index}"));
    graph.name = Some(sample_name(index));
    Sample {
        image: canvas.draw(&placed),
        graph,
        world,
        placed,
    }
}
