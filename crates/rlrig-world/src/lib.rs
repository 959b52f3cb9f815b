//! rlrig's built-in world of spatial scenes: a canvas with 2–4 coloured shapes and the
//! relations between them.
//!
//! It replaces downloaded data and weights: everything rlrig trains and evaluates out of the box
//! lives here. [`vocab`] fixes the words (shapes, colours, relations) and reads LAION-SG records
//! in them; [`sample()`] draws seeded satisfiable scene graphs with their images;
//! [`Canvas::render`] draws any satisfiable graph so that every relation holds by GenEval's rule
//! ([`geometry`]); [`oracle`] recovers the scene graph of any image of the world, the exact
//! judge for evaluation (never a training reward); [`corrupt`] degrades images the way
//! generators do; [`edit`] is the edit-prompt language of the Policy and Editor roles and applies
//! edits to drawn scenes.

#![warn(missing_docs)]

pub mod canvas;
pub mod corrupt;
pub mod edit;
pub mod geometry;
pub mod oracle;
pub mod reflect;
pub mod sample;
pub mod vocab;

pub use canvas::{Canvas, Placed};
pub use edit::Edit;
pub use oracle::{Detection, Judgement, detect, judge, parse};
pub use sample::{Sample, sample, sample_name};
pub use vocab::{Colour, Object, Rel, Shape, VocabError, WorldGraph};

/// Why a scene graph cannot be drawn in the world.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    /// Words outside the vocabulary.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// The canvas is too small for the grid.
    #[error("a canvas of {size}x{size} is too small: the world needs at least {min}x{min}", min = canvas::MIN_CANVAS)]
    CanvasTooSmall {
        /// The requested side.
        size: u32,
    },
    /// The graph has no items.
    #[error("unsatisfiable scene graph: it has no items")]
    NoItems,
    /// More items than the grid takes.
    #[error("unsatisfiable scene graph: {items} items, the world draws at most {max}", max = canvas::MAX_ITEMS)]
    TooManyItems {
        /// How many the graph has.
        items: usize,
    },
    /// Two items with the same colour and shape.
    #[error(
        "unsatisfiable scene graph: items[{first}] and items[{second}] are both a {object}; no two items of a scene may share colour and shape"
    )]
    DuplicateObject {
        /// Index of the first.
        first: usize,
        /// Index of the second.
        second: usize,
        /// The shared colour and shape.
        object: Object,
    },
    /// A relation from an item to itself.
    #[error(
        "unsatisfiable scene graph: relations[{relation}] asks the {object} to be {rel} itself"
    )]
    SelfRelation {
        /// Index of the relation.
        relation: usize,
        /// The item.
        object: Object,
        /// The relation.
        rel: Rel,
    },
    /// The relations order some items in a circle on one axis.
    #[error("unsatisfiable scene graph: the {axis} relations form a cycle: {}", .objects.join(" → "))]
    Cycle {
        /// `left-right` or `above-below`.
        axis: &'static str,
        /// The items on the cycle, in order.
        objects: Vec<String>,
    },
    /// No grid placement satisfies all relations.
    #[error(
        "unsatisfiable scene graph: no placement of its {items} items on the 4x4 grid satisfies every relation"
    )]
    NoPlacement {
        /// How many items.
        items: usize,
    },
}
