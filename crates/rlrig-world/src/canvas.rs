//! The canvas: where objects may stand, how they are drawn, and the placement solver that
//! turns a scene graph into a drawing in which every relation holds.
//!
//! Geometry: the canvas (`size`×`size`, at least [`MIN_CANVAS`]) is divided into a
//! [`GRID`]×[`GRID`] grid of cells; every object is one shape of a fixed size
//! ([`Canvas::object_size`]: the cell less a small gap) centred in its own cell. A coarse grid
//! and one object size keep the world learnable by small generators (docs/method.md) while every
//! satisfiable graph of up to [`MAX_ITEMS`] items still has a drawing: a 4×4 grid can realise
//! any order of four objects on each axis. Relations are checked by GenEval's rule on the boxes
//! of the pixels actually drawn.

use rand::Rng;
use rand::seq::SliceRandom;
use rlrig_contract::Image;
use rlrig_sg::SceneGraph;
use serde::{Deserialize, Serialize};

use crate::WorldError;
use crate::geometry::{BBox, holds};
use crate::vocab::{BACKGROUND, Object, Rel, Shape, WorldGraph};

/// Cells per side of the placement grid.
pub const GRID: u32 = 4;
/// The smallest canvas side: objects below 5 px could not be told apart.
pub const MIN_CANVAS: u32 = 24;
/// The most items one scene may hold.
pub const MAX_ITEMS: usize = 6;

/// A square canvas of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canvas {
    size: u32,
}

/// An object standing in a grid cell, with the box of its drawn pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// What is drawn.
    pub object: Object,
    /// `(column, row)` of its cell.
    pub cell: (u32, u32),
    /// The box of its drawn pixels.
    pub bbox: BBox,
}

/// Whether a pixel whose centre is at `(cx, cy)`, relative to the top-left corner of a
/// `w`×`h` box, belongs to `shape` drawn in that box. Every shape reaches all four sides of
/// its box (the triangle's apex is at least one pixel wide).
pub fn covers(shape: Shape, w: f64, h: f64, cx: f64, cy: f64) -> bool {
    match shape {
        Shape::Square => true,
        Shape::Circle => {
            let (rx, ry) = (w / 2.0, h / 2.0);
            ((cx - rx) / rx).powi(2) + ((cy - ry) / ry).powi(2) <= 1.0
        }
        Shape::Triangle => (cx - w / 2.0).abs() <= (cy / h * w / 2.0).max(0.5),
    }
}

impl Canvas {
    /// The default canvas side.
    pub const DEFAULT_SIZE: u32 = 32;

    /// A `size`×`size` canvas; smaller than [`MIN_CANVAS`] is an error.
    pub fn new(size: u32) -> Result<Canvas, WorldError> {
        if size < MIN_CANVAS {
            return Err(WorldError::CanvasTooSmall { size });
        }
        Ok(Canvas { size })
    }

    /// The side in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Side of a grid cell in pixels.
    pub fn cell_size(&self) -> u32 {
        self.size / GRID
    }

    /// Side of every object in pixels: the cell less a gap of an eighth (at least one pixel),
    /// so that objects in neighbouring cells never touch. 7 px at 32×32, 14 px at 64×64.
    pub fn object_size(&self) -> u32 {
        let cell = self.cell_size();
        cell - (cell / 8).max(1)
    }

    /// The box an object occupies in cell `(col, row)`.
    pub fn cell_box(&self, col: u32, row: u32) -> BBox {
        let (cell, d) = (self.cell_size(), self.object_size());
        let margin = (self.size - GRID * cell) / 2 + (cell - d) / 2;
        let (x0, y0) = (margin + col * cell, margin + row * cell);
        BBox {
            x0,
            y0,
            x1: x0 + d,
            y1: y0 + d,
        }
    }

    /// An object placed in a cell.
    pub fn place_at(&self, object: Object, col: u32, row: u32) -> Placed {
        Placed {
            object,
            cell: (col, row),
            bbox: self.cell_box(col, row),
        }
    }

    /// Draws placed objects on the background.
    pub fn draw(&self, objects: &[Placed]) -> Image {
        let mut img = Image::filled(self.size, self.size, BACKGROUND);
        for p in objects {
            let (w, h) = (p.bbox.width() as f64, p.bbox.height() as f64);
            for y in p.bbox.y0..p.bbox.y1 {
                for x in p.bbox.x0..p.bbox.x1 {
                    let (cx, cy) = ((x - p.bbox.x0) as f64 + 0.5, (y - p.bbox.y0) as f64 + 0.5);
                    if covers(p.object.shape, w, h, cx, cy) {
                        img.put(x, y, p.object.colour.rgb());
                    }
                }
            }
        }
        img
    }

    /// Finds cells for the graph's objects so that every relation holds, choosing among the
    /// solutions at random. Errors say why a graph is unsatisfiable.
    pub fn solve<R: Rng>(
        &self,
        graph: &WorldGraph,
        rng: &mut R,
    ) -> Result<Vec<Placed>, WorldError> {
        check_satisfiable(graph)?;
        let n = graph.objects.len();
        // Place the most constrained objects first: failures surface early.
        let mut order: Vec<usize> = (0..n).collect();
        let degree = |i: usize| {
            graph
                .relations
                .iter()
                .filter(|&&(a, _, b)| a == i || b == i)
                .count()
        };
        order.sort_by_key(|&i| std::cmp::Reverse(degree(i)));
        let mut cells: Vec<(u32, u32)> = (0..GRID)
            .flat_map(|r| (0..GRID).map(move |c| (c, r)))
            .collect();
        let mut boxes: Vec<Option<(u32, u32)>> = vec![None; n];
        let mut shuffles = Vec::with_capacity(n);
        for _ in 0..n {
            cells.shuffle(rng);
            shuffles.push(cells.clone());
        }
        if self.search(graph, &order, 0, &shuffles, &mut boxes) {
            Ok(boxes
                .iter()
                .zip(&graph.objects)
                .map(|(c, &o)| {
                    let (col, row) = c.expect("search placed every object");
                    self.place_at(o, col, row)
                })
                .collect())
        } else {
            Err(WorldError::NoPlacement { items: n })
        }
    }

    fn search(
        &self,
        graph: &WorldGraph,
        order: &[usize],
        depth: usize,
        shuffles: &[Vec<(u32, u32)>],
        cells: &mut Vec<Option<(u32, u32)>>,
    ) -> bool {
        let Some(&i) = order.get(depth) else {
            return true;
        };
        for &cell in &shuffles[depth] {
            if cells.contains(&Some(cell)) {
                continue;
            }
            cells[i] = Some(cell);
            let ok = graph.relations.iter().all(|&(a, rel, b)| {
                if a != i && b != i {
                    return true;
                }
                match (cells[a], cells[b]) {
                    (Some(ca), Some(cb)) => {
                        holds(&self.cell_box(ca.0, ca.1), rel, &self.cell_box(cb.0, cb.1))
                    }
                    _ => true,
                }
            });
            if ok && self.search(graph, order, depth + 1, shuffles, cells) {
                return true;
            }
            cells[i] = None;
        }
        false
    }

    /// Renders a LAION-SG record of the world: checks its vocabulary and satisfiability,
    /// solves a placement (seeded by `rng`) and draws it.
    pub fn render<R: Rng>(
        &self,
        graph: &SceneGraph,
        rng: &mut R,
    ) -> Result<(Image, Vec<Placed>), WorldError> {
        let wg = WorldGraph::from_scene_graph(graph)?;
        let placed = self.solve(&wg, rng)?;
        Ok((self.draw(&placed), placed))
    }
}

/// The checks that explain most unsatisfiable graphs in words: item count, duplicate objects,
/// self-relations, and cycles in the left–right or above–below order.
fn check_satisfiable(graph: &WorldGraph) -> Result<(), WorldError> {
    let n = graph.objects.len();
    if n == 0 {
        return Err(WorldError::NoItems);
    }
    if n > MAX_ITEMS {
        return Err(WorldError::TooManyItems { items: n });
    }
    for (j, o) in graph.objects.iter().enumerate() {
        if let Some(i) = graph.objects[..j].iter().position(|p| p == o) {
            return Err(WorldError::DuplicateObject {
                first: i,
                second: j,
                object: *o,
            });
        }
    }
    for (k, &(a, rel, b)) in graph.relations.iter().enumerate() {
        if a == b {
            return Err(WorldError::SelfRelation {
                relation: k,
                object: graph.objects[a],
                rel,
            });
        }
    }
    for (axis, before) in [("left-right", Rel::LeftOf), ("above-below", Rel::Above)] {
        // Edge a → b: a comes strictly before b on this axis.
        let edges: Vec<(usize, usize)> = graph
            .relations
            .iter()
            .filter_map(|&(a, rel, b)| {
                if rel == before {
                    Some((a, b))
                } else if rel == before.inverse() {
                    Some((b, a))
                } else {
                    None
                }
            })
            .collect();
        if let Some(cycle) = find_cycle(n, &edges) {
            return Err(WorldError::Cycle {
                axis,
                objects: cycle
                    .iter()
                    .map(|&i| graph.objects[i].to_string())
                    .collect(),
            });
        }
    }
    Ok(())
}

/// A cycle in a small directed graph, as the list of its nodes, if there is one.
fn find_cycle(n: usize, edges: &[(usize, usize)]) -> Option<Vec<usize>> {
    fn visit(
        v: usize,
        edges: &[(usize, usize)],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[v] = 1;
        path.push(v);
        for &(a, b) in edges.iter().filter(|e| e.0 == v) {
            debug_assert_eq!(a, v);
            if state[b] == 1 {
                let start = path.iter().position(|&p| p == b).expect("b is on the path");
                return Some(path[start..].to_vec());
            }
            if state[b] == 0
                && let Some(c) = visit(b, edges, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state[v] = 2;
        None
    }
    let mut state = vec![0u8; n];
    (0..n).find_map(|v| {
        if state[v] == 0 {
            visit(v, edges, &mut state, &mut Vec::new())
        } else {
            None
        }
    })
}
