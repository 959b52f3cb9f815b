//! Boxes and GenEval's relative-position rule.

use serde::{Deserialize, Serialize};

use crate::vocab::Rel;

/// GenEval's `POSITION_THRESHOLD`: the share of the summed box sizes an offset must exceed.
pub const POSITION_THRESHOLD: f64 = 0.1;

/// An axis-aligned pixel box: `x0..x1` × `y0..y1`, ends exclusive (a one-pixel box at `(3, 4)`
/// is `3, 4, 4, 5`), so that `x1 - x0` is the width, as in GenEval's `x2 - x1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge.
    pub x0: u32,
    /// Top edge.
    pub y0: u32,
    /// Right edge (exclusive).
    pub x1: u32,
    /// Bottom edge (exclusive).
    pub y1: u32,
}

impl BBox {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }

    fn centre(&self) -> (f64, f64) {
        (
            (self.x0 + self.x1) as f64 / 2.0,
            (self.y0 + self.y1) as f64 / 2.0,
        )
    }
}

/// The relations that hold for A relative to B, by GenEval's rule
/// (djghosh13/geneval, `evaluation/evaluate_images.py`, `relative_position`):
///
/// `offset = centre_A − centre_B`;
/// `revised = max(|offset| − 0.1·(dim_A + dim_B), 0)·sign(offset)` per axis;
/// no relation when both revised components are below 1e-3;
/// `(dx, dy) = revised / ‖offset‖`; `left of` if dx < −0.5, `right of` if dx > 0.5,
/// `above` if dy < −0.5, `below` if dy > 0.5 (image y grows downwards).
pub fn relative_position(a: &BBox, b: &BBox) -> Vec<Rel> {
    let (ca, cb) = (a.centre(), b.centre());
    let offset = [ca.0 - cb.0, ca.1 - cb.1];
    let dims = [
        (a.width() + b.width()) as f64,
        (a.height() + b.height()) as f64,
    ];
    let revised: Vec<f64> = (0..2)
        .map(|k| (offset[k].abs() - POSITION_THRESHOLD * dims[k]).max(0.0) * sign(offset[k]))
        .collect();
    if revised.iter().all(|r| r.abs() < 1e-3) {
        return Vec::new();
    }
    let norm = offset[0].hypot(offset[1]);
    let (dx, dy) = (revised[0] / norm, revised[1] / norm);
    let mut out = Vec::with_capacity(2);
    if dx < -0.5 {
        out.push(Rel::LeftOf);
    }
    if dx > 0.5 {
        out.push(Rel::RightOf);
    }
    if dy < -0.5 {
        out.push(Rel::Above);
    }
    if dy > 0.5 {
        out.push(Rel::Below);
    }
    out
}

/// Whether `rel` holds for A relative to B by GenEval's rule.
pub fn holds(a: &BBox, rel: Rel, b: &BBox) -> bool {
    relative_position(a, b).contains(&rel)
}

/// numpy's `sign`: 0 at 0.
fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(x: u32, y: u32, w: u32, h: u32) -> BBox {
        BBox {
            x0: x,
            y0: y,
            x1: x + w,
            y1: y + h,
        }
    }

    #[test]
    fn geneval_cases_by_hand() {
        // Same row, 10 px apart, 7 px boxes: revised dx = 10 - 1.4 = 8.6, norm 10 → 0.86.
        assert_eq!(
            relative_position(&bx(0, 0, 7, 7), &bx(10, 0, 7, 7)),
            vec![Rel::LeftOf]
        );
        assert_eq!(
            relative_position(&bx(10, 0, 7, 7), &bx(0, 0, 7, 7)),
            vec![Rel::RightOf]
        );
        // Exact diagonal: (8.6, 8.6) / 14.14 = 0.61 on both axes → two relations.
        assert_eq!(
            relative_position(&bx(0, 0, 7, 7), &bx(10, 10, 7, 7)),
            vec![Rel::LeftOf, Rel::Above]
        );
        // Offset (8, 16): dx = 6.6 / 17.9 = 0.37 (no), dy = 14.6 / 17.9 = 0.82 (below).
        assert_eq!(
            relative_position(&bx(8, 16, 7, 7), &bx(0, 0, 7, 7)),
            vec![Rel::Below]
        );
        // Overlapping centres closer than the threshold: nothing.
        assert!(relative_position(&bx(0, 0, 7, 7), &bx(1, 1, 7, 7)).is_empty());
        // Identical boxes: nothing (and no division by zero).
        assert!(relative_position(&bx(3, 3, 7, 7), &bx(3, 3, 7, 7)).is_empty());
    }
}
