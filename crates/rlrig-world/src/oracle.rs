//! The oracle parser: recovers the scene graph of any image of the world from its pixels.
//!
//! 1. Each pixel takes the nearest of the palette's five colours (background included); a
//!    pixel farther than [`OracleConfig::max_colour_distance`] from every object colour is
//!    background. This tolerates noise and colour drift in generated images.
//! 2. Pixels of one colour form objects by 8-connectivity; components smaller than
//!    [`OracleConfig::min_area_fraction`] of an object's area are specks and ignored.
//! 3. Each component's shape is the template (circle, square, triangle drawn in the
//!    component's own box by the renderer's rule) with the highest IoU against it.
//! 4. Every ordered pair of objects gets every relation that holds by GenEval's rule.
//!
//! It is the exact judge for evaluation in the built-in world. It is never a training reward:
//! rewards come from the Checker.

use rlrig_contract::Image;
use rlrig_sg::{Extraction, IouScores, Relation, SceneGraph, relation_accuracy, score};
use serde::{Deserialize, Serialize};

use crate::canvas::{Canvas, MIN_CANVAS, covers};
use crate::geometry::{BBox, relative_position};
use crate::vocab::{BACKGROUND, Colour, Object, Shape, VocabError, WorldGraph};

/// Tolerances of the oracle parser.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OracleConfig {
    /// Largest RGB distance at which a pixel still counts as an object colour.
    pub max_colour_distance: f64,
    /// Components with fewer pixels than this share of a full object's area are specks.
    pub min_area_fraction: f64,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig { max_colour_distance: 150.0, min_area_fraction: 0.2 }
    }
}

/// One object found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Colour and shape.
    pub object: Object,
    /// Box of its pixels.
    pub bbox: BBox,
    /// Number of its pixels.
    pub area: u32,
    /// IoU of its pixels with the chosen shape's template, in `[0, 1]`.
    pub shape_iou: f64,
}

/// Finds the objects of an image with the default tolerances, top-to-bottom, left-to-right.
pub fn detect(image: &Image) -> Vec<Detection> {
    detect_with(image, &OracleConfig::default())
}

/// Finds the objects of an image, top-to-bottom, left-to-right.
pub fn detect_with(image: &Image, cfg: &OracleConfig) -> Vec<Detection> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let labels: Vec<Option<Colour>> = image.pixels().chunks_exact(3).map(|p| classify(p, cfg)).collect();
    let side = image.width().min(image.height());
    let object_side = match Canvas::new(side.max(MIN_CANVAS)) {
        Ok(c) if side >= MIN_CANVAS => c.object_size(),
        _ => (side / 5).max(1),
    };
    let min_area = ((object_side * object_side) as f64 * cfg.min_area_fraction).ceil().max(2.0) as usize;

    let mut seen = vec![false; w * h];
    let mut found = Vec::new();
    let mut stack = Vec::new();
    let mut component = Vec::new();
    for start in 0..w * h {
        let Some(colour) = labels[start] else { continue };
        if seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        component.clear();
        while let Some(p) = stack.pop() {
            component.push(p);
            let (x, y) = ((p % w) as isize, (p / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if !seen[q] && labels[q] == Some(colour) {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        if component.len() < min_area {
            continue;
        }
        found.push(describe(&component, w, colour));
    }
    found.sort_by_key(|d| (d.bbox.y0, d.bbox.x0));
    found
}

/// Recovers the scene graph of an image: one item per detected object (with its pixel box in
/// the item's extra field `bbox`), and every relation that holds between every ordered pair.
pub fn parse(image: &Image) -> SceneGraph {
    graph_of(&detect(image))
}

/// The scene graph of a list of detections (see [`parse`]).
pub fn graph_of(found: &[Detection]) -> SceneGraph {
    let mut g = SceneGraph::default();
    for (i, d) in found.iter().enumerate() {
        let mut item = d.object.item(i as u64);
        let b = d.bbox;
        item.extra.insert("bbox".into(), serde_json::json!([b.x0, b.y0, b.x1, b.y1]));
        g.items.push(item);
    }
    for (i, a) in found.iter().enumerate() {
        for (j, b) in found.iter().enumerate() {
            if i == j {
                continue;
            }
            for rel in relative_position(&a.bbox, &b.bbox) {
                g.relations.push(Relation {
                    triple_id: Some(g.relations.len() as u64),
                    item1: i as u64,
                    relation: rel.word().into(),
                    item2: j as u64,
                    ..Default::default()
                });
            }
        }
    }
    g
}

/// The oracle's judgement of one image against its prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// SG-IoU, Entity-IoU and Relation-IoU.
    pub scores: IouScores,
    /// Fraction of the prompt's relations that hold (`None` without relations).
    pub relation_accuracy: Option<f64>,
    /// What the oracle recovered.
    pub parsed: SceneGraph,
}

/// Judges an image against its prompt the way LAION-SG's protocol does, with the oracle as the
/// judge: the recovered graph is narrowed to what a judge given the prompt's items and
/// predicates could answer ([`Extraction::as_judged_against`]), then scored. A prompt outside the
/// world's vocabulary is refused.
///
/// Every relation that holds is recovered, in both directions, so an image that satisfies its
/// prompt exactly still scores an SG-IoU below 1 when the inverse triples fall within the
/// prompt's predicates (`a left of b` brings `b right of a` if `right of` is asked about too);
/// relation accuracy is 1 for it.
pub fn judge(prompt: &SceneGraph, image: &Image) -> Result<Judgement, VocabError> {
    WorldGraph::from_scene_graph(prompt)?;
    let parsed = parse(image);
    let found = Extraction::from(&parsed).as_judged_against(prompt);
    Ok(Judgement {
        scores: score(prompt, &found),
        relation_accuracy: relation_accuracy(prompt, &found),
        parsed,
    })
}

fn classify(p: &[u8], cfg: &OracleConfig) -> Option<Colour> {
    let dist = |c: [u8; 3]| -> f64 {
        (0..3).map(|k| (p[k] as f64 - c[k] as f64).powi(2)).sum::<f64>().sqrt()
    };
    let (best, d) = Colour::ALL
        .iter()
        .map(|&c| (c, dist(c.rgb())))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("palette is not empty");
    (d <= cfg.max_colour_distance && d < dist(BACKGROUND)).then_some(best)
}

fn describe(component: &[usize], w: usize, colour: Colour) -> Detection {
    let xs = component.iter().map(|p| (p % w) as u32);
    let ys = component.iter().map(|p| (p / w) as u32);
    let bbox = BBox {
        x0: xs.clone().min().expect("non-empty"),
        x1: xs.max().expect("non-empty") + 1,
        y0: ys.clone().min().expect("non-empty"),
        y1: ys.max().expect("non-empty") + 1,
    };
    let (bw, bh) = (bbox.width() as usize, bbox.height() as usize);
    let mut mask = vec![false; bw * bh];
    for &p in component {
        mask[(p / w - bbox.y0 as usize) * bw + (p % w - bbox.x0 as usize)] = true;
    }
    let (shape, shape_iou) = Shape::ALL
        .iter()
        .map(|&s| {
            let (mut inter, mut union) = (0u32, 0u32);
            for y in 0..bh {
                for x in 0..bw {
                    let t = covers(s, bw as f64, bh as f64, x as f64 + 0.5, y as f64 + 0.5);
                    let m = mask[y * bw + x];
                    inter += (t && m) as u32;
                    union += (t || m) as u32;
                }
            }
            (s, inter as f64 / union.max(1) as f64)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("three shapes");
    Detection { object: Object { colour, shape }, bbox, area: component.len() as u32, shape_iou }
}
