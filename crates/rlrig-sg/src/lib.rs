//! Scene graphs in LAION-SG's record shape, and LAION-SG's metrics.
//!
//! This crate is what every other part of rlrig uses to speak about *what an image should
//! contain*: the [`SceneGraph`] record (read and written as JSON or JSONL exactly in the shape
//! LAION-SG publishes, unknown fields kept), the prompt text built from it the way LAION-SG's
//! loader builds it ([`SceneGraph::prompt`]), and the official IoU metrics of LAION-SG's
//! `test/test_iou.py` ([`metrics`]). It knows nothing of images, models or the engine.

#![warn(missing_docs)]

pub mod io;
pub mod metrics;
mod record;

pub use io::{ReadError, read_json, read_jsonl, read_records, write_json, write_jsonl};
pub use metrics::{Extraction, IouScores, MeanScores, ScoreSums, iou, relation_accuracy, score};
pub use record::{Item, Relation, SceneGraph, Triple, ValidationError};
