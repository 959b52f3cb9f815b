//! The oracle parser: recovers the scene graph of any image of the world from its pixels.
//!
//! 1. Each pixel is read as a blend of the background and one palette colour (the model of
//!    blurred edges): it takes the colour whose blend explains it best, if it is at least half
//!    that colour and within [`OracleConfig::max_colour_distance`] of the blend; otherwise it is
//!    background. This tolerates noise, blur and colour drift in generated images.
//! 2. Pixels that are mostly one colour (a ≥ 0.8) form objects by 8-connectivity; edge pixels
//!    (0.5 ≤ a < 0.8) join a neighbouring object of their colour, so that a blurred bridge between
//!    two objects of one colour does not merge them; components smaller than
//!    [`OracleConfig::min_area_fraction`] of an object's area are specks and ignored.
//! 3. Each component's shape comes from moments of its colour mass, which blur barely moves
//!    (vertical skewness: triangles; axis versus diagonal kurtosis: squares versus circles).
//!    The IoU with the chosen shape's template (drawn in the component's box by the
//!    renderer's rule) is reported as a confidence.
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
    /// Largest RGB distance from a background–colour blend at which a pixel still counts as
    /// that colour.
    pub max_colour_distance: f64,
    /// Components with fewer pixels than this share of a full object's area are specks.
    pub min_area_fraction: f64,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig {
            max_colour_distance: 90.0,
            min_area_fraction: 0.2,
        }
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
    let blends: Vec<Option<(Colour, f64)>> = image
        .pixels()
        .chunks_exact(3)
        .map(|p| classify(p, cfg))
        .collect();
    let side = image.width().min(image.height());
    let object_side = if side >= MIN_CANVAS {
        Canvas::new(side)
            .map(|c| c.object_size())
            .unwrap_or(side / 5)
    } else {
        (side / 5).max(1)
    };
    let min_area = ((object_side * object_side) as f64 * cfg.min_area_fraction)
        .ceil()
        .max(2.0) as usize;

    let neighbours = |p: usize| {
        let (x, y) = ((p % w) as isize, (p / w) as isize);
        (-1isize..=1)
            .flat_map(move |dy| (-1isize..=1).map(move |dx| (x + dx, y + dy)))
            .filter(move |&(nx, ny)| {
                (nx, ny) != (x, y) && nx >= 0 && ny >= 0 && nx < w as isize && ny < h as isize
            })
            .map(move |(nx, ny)| ny as usize * w + nx as usize)
    };
    let colour_of = |p: usize| blends[p].map(|(c, _)| c);
    let is_core = |p: usize| blends[p].is_some_and(|(_, a)| a >= CORE_ALPHA);

    // 1. Components of core pixels (mostly object colour): blurred bridges between two objects
    //    of one colour are only part colour, so the objects stay apart.
    let mut owner: Vec<Option<usize>> = vec![None; w * h];
    let mut components: Vec<(Colour, Vec<usize>)> = Vec::new();
    let flood = |seeds: &dyn Fn(usize) -> bool,
                 owner: &mut Vec<Option<usize>>,
                 components: &mut Vec<(Colour, Vec<usize>)>| {
        for start in 0..w * h {
            if owner[start].is_some() || !seeds(start) {
                continue;
            }
            let colour = colour_of(start).expect("seeds have a colour");
            let id = components.len();
            let mut pixels = vec![start];
            owner[start] = Some(id);
            let mut k = 0;
            while k < pixels.len() {
                let p = pixels[k];
                k += 1;
                for q in neighbours(p) {
                    if owner[q].is_none() && seeds(q) && colour_of(q) == Some(colour) {
                        owner[q] = Some(id);
                        pixels.push(q);
                    }
                }
            }
            components.push((colour, pixels));
        }
    };
    flood(&is_core, &mut owner, &mut components);
    // 2. Edge pixels (at least half colour) join a neighbouring core of their colour.
    let mut joins = Vec::new();
    for p in 0..w * h {
        let Some(colour) = colour_of(p) else { continue };
        if owner[p].is_some() {
            continue;
        }
        if let Some(id) =
            neighbours(p).find_map(|q| owner[q].filter(|&id| components[id].0 == colour))
        {
            joins.push((p, id));
        }
    }
    for (p, id) in joins {
        owner[p] = Some(id);
        components[id].1.push(p);
    }
    // 3. Faint objects with no core at all still count, as components of their own.
    flood(&|p| colour_of(p).is_some(), &mut owner, &mut components);

    let mut found: Vec<Detection> = components
        .iter()
        .filter(|(_, px)| px.len() >= min_area)
        .map(|(colour, px)| describe(px, w, *colour, &blends))
        .collect();
    found.sort_by_key(|d| (d.bbox.y0, d.bbox.x0));
    found
}

/// Pixels at least this much object colour seed objects; pixels between 0.5 and this join them.
const CORE_ALPHA: f64 = 0.8;

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
        item.extra
            .insert("bbox".into(), serde_json::json!([b.x0, b.y0, b.x1, b.y1]));
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

/// The object colour of a pixel and how much of it the pixel holds, modelling the pixel as a
/// blend `bg + a·(colour − bg)` of the background and one palette colour (blurred and
/// anti-aliased edges are such blends): the colour whose blend line passes nearest the pixel,
/// if the pixel is at least half that colour (`a ≥ 0.5`) and within
/// [`OracleConfig::max_colour_distance`] of the line. `a` is capped at 1.
fn classify(p: &[u8], cfg: &OracleConfig) -> Option<(Colour, f64)> {
    let v: [f64; 3] = std::array::from_fn(|k| p[k] as f64 - BACKGROUND[k] as f64);
    let mut best: Option<(Colour, f64, f64)> = None;
    for c in Colour::ALL {
        let rgb = c.rgb();
        let d: [f64; 3] = std::array::from_fn(|k| rgb[k] as f64 - BACKGROUND[k] as f64);
        let dd: f64 = d.iter().map(|x| x * x).sum();
        let a = (0..3).map(|k| v[k] * d[k]).sum::<f64>() / dd;
        if a < 0.5 {
            continue;
        }
        let a = a.min(1.0);
        let residual = (0..3)
            .map(|k| (v[k] - a * d[k]).powi(2))
            .sum::<f64>()
            .sqrt();
        if residual <= cfg.max_colour_distance && best.is_none_or(|(_, _, r)| residual < r) {
            best = Some((c, a, residual));
        }
    }
    best.map(|(c, a, _)| (c, a))
}

/// The shape of a component from moments of its colour mass (each pixel weighted by how much
/// of the colour it holds), which a blur barely moves:
///
/// * a triangle's mass grows towards its base: the vertical profile is skewed (skewness about
///   −0.65 sharp, −0.4 after a 3×3 blur at 7 px; 0 for discs and squares);
/// * a square's projection is flat along the axes and peaked along the diagonals, a disc's is
///   the same in every direction: the excess of the axis kurtosis over the diagonal kurtosis is
///   about −0.6 for a square (−0.3 blurred at 7 px) and +0.1 to +0.2 for a disc.
fn classify_shape(pixels: &[usize], w: usize, blends: &[Option<(Colour, f64)>]) -> Shape {
    let pts: Vec<(f64, f64, f64)> = pixels
        .iter()
        .map(|&p| {
            (
                (p % w) as f64,
                (p / w) as f64,
                blends[p].map_or(0.0, |(_, a)| a),
            )
        })
        .collect();
    let mass: f64 = pts.iter().map(|p| p.2).sum();
    let mx = pts.iter().map(|p| p.0 * p.2).sum::<f64>() / mass;
    let my = pts.iter().map(|p| p.1 * p.2).sum::<f64>() / mass;
    let moment = |f: &dyn Fn(f64, f64) -> f64, k: i32| -> f64 {
        pts.iter()
            .map(|&(x, y, a)| f(x - mx, y - my).powi(k) * a)
            .sum::<f64>()
            / mass
    };
    let kurtosis = |f: &dyn Fn(f64, f64) -> f64| moment(f, 4) / moment(f, 2).powi(2).max(1e-12);
    let var_y = moment(&|_, y| y, 2).max(1e-12);
    let skew_y = moment(&|_, y| y, 3) / var_y.powf(1.5);
    let r = std::f64::consts::FRAC_1_SQRT_2;
    let axis = (kurtosis(&|x, _| x) + kurtosis(&|_, y| y)) / 2.0;
    let diagonal = (kurtosis(&|x, y| (x + y) * r) + kurtosis(&|x, y| (x - y) * r)) / 2.0;
    if skew_y < TRIANGLE_SKEW {
        Shape::Triangle
    } else if axis - diagonal < SQUARE_KURTOSIS_GAP {
        Shape::Square
    } else {
        Shape::Circle
    }
}

/// Vertical skewness below which a component is a triangle.
const TRIANGLE_SKEW: f64 = -0.2;
/// Axis-minus-diagonal kurtosis below which a symmetric component is a square.
const SQUARE_KURTOSIS_GAP: f64 = -0.1;

fn template_iou(shape: Shape, mask: &[bool], w: usize, h: usize) -> f64 {
    let (mut inter, mut union) = (0u32, 0u32);
    for y in 0..h {
        for x in 0..w {
            let t = covers(shape, w as f64, h as f64, x as f64 + 0.5, y as f64 + 0.5);
            let m = mask[y * w + x];
            inter += (t && m) as u32;
            union += (t || m) as u32;
        }
    }
    inter as f64 / union.max(1) as f64
}

fn describe(
    component: &[usize],
    w: usize,
    colour: Colour,
    blends: &[Option<(Colour, f64)>],
) -> Detection {
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
    let shape = classify_shape(component, w, blends);
    let shape_iou = template_iou(shape, &mask, bw, bh);
    Detection {
        object: Object { colour, shape },
        bbox,
        area: component.len() as u32,
        shape_iou,
    }
}
