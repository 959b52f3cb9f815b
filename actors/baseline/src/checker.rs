//! [`OracleChecker`]: the world's oracle parser in a Checker's coat.

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Image, ItemVerdict, RelationVerdict, RoleError, SceneGraph,
};
use rlrig_world::geometry::{BBox, holds, relative_position};
use rlrig_world::oracle::{OracleConfig, detect_with};
use rlrig_world::{Object, Rel, WorldGraph};
use serde::{Deserialize, Serialize};

use crate::{ConfigError, probability};

const ROLE: &str = "OracleChecker";

/// Config of [`OracleChecker`]: the oracle parser's tolerances
/// ([`OracleConfig`]).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OracleCheckerConfig {
    /// Largest RGB distance from a background–colour blend at which a pixel still counts as
    /// that colour; above 0. Default 90.
    pub max_colour_distance: f64,
    /// Components smaller than this share of an object's area are specks, in `[0, 1]`.
    /// Default 0.2.
    pub min_area_fraction: f64,
}

impl Default for OracleCheckerConfig {
    fn default() -> Self {
        let o = OracleConfig::default();
        OracleCheckerConfig {
            max_colour_distance: o.max_colour_distance,
            min_area_fraction: o.min_area_fraction,
        }
    }
}

/// The oracle wearing a checker's coat: a **test instrument and a baseline for inference**,
/// not a learned Checker. It reads the image with the world's exact oracle parser and reports,
/// for the prompt's scene graph:
///
/// * per item: [`Present`](ItemVerdict::Present) if a detected object has its colour and
///   shape, else [`Missing`](ItemVerdict::Missing);
/// * per relation: [`Holds`](RelationVerdict::Holds) or [`Violated`](RelationVerdict::Violated)
///   by GenEval's rule on the detected boxes (the largest detection of each object), or
///   [`CannotTell`](RelationVerdict::CannotTell) when an endpoint is missing;
/// * score = (present items + holding relations) / (items + relations), 1 for an empty prompt;
/// * a reflection of one sentence per problem, missing items first, then violated relations,
///   in prompt order: `the green triangle is missing.`, `the red circle is right of the blue
///   square, not left of it.` (or `the red circle is not clearly left of the blue square.`
///   when no relation holds between the two); `all relations hold.` when there is no problem.
///   A relation that cannot be told gets no sentence of its own: its missing endpoint has one.
///
/// Training flows must not use its score as a reward: the oracle is the evaluation judge, and
/// a policy trained on it would be graded by its own teacher.
#[derive(Clone, Debug)]
pub struct OracleChecker {
    config: OracleCheckerConfig,
    oracle: OracleConfig,
}

impl OracleChecker {
    /// A checker with this config, checked: `max_colour_distance` finite and above 0,
    /// `min_area_fraction` a fraction in `[0, 1]`.
    pub fn new(config: OracleCheckerConfig) -> Result<Self, ConfigError> {
        if !(config.max_colour_distance.is_finite() && config.max_colour_distance > 0.0) {
            return Err(ConfigError {
                role: ROLE,
                key: "max_colour_distance",
                value: config.max_colour_distance.to_string(),
                rule: "must be a finite RGB distance above 0".into(),
            });
        }
        probability(ROLE, "min_area_fraction", config.min_area_fraction)?;
        let oracle = OracleConfig {
            max_colour_distance: config.max_colour_distance,
            min_area_fraction: config.min_area_fraction,
        };
        Ok(OracleChecker { config, oracle })
    }

    /// The config it runs with.
    pub fn config(&self) -> &OracleCheckerConfig {
        &self.config
    }

    /// Judges one image against one prompt.
    fn judge(&self, prompt: &SceneGraph, image: &Image) -> Result<CheckReport, String> {
        let graph = WorldGraph::from_scene_graph(prompt).map_err(|e| e.to_string())?;
        let found = detect_with(image, &self.oracle);
        let box_of = |o: Object| {
            found
                .iter()
                .filter(|d| d.object == o)
                .max_by_key(|d| d.area)
                .map(|d| d.bbox)
        };
        let boxes: Vec<Option<BBox>> = graph.objects.iter().map(|&o| box_of(o)).collect();
        let items: Vec<ItemVerdict> = boxes
            .iter()
            .map(|b| match b {
                Some(_) => ItemVerdict::Present,
                None => ItemVerdict::Missing,
            })
            .collect();
        let mut sentences: Vec<String> = graph
            .objects
            .iter()
            .zip(&boxes)
            .filter(|(_, b)| b.is_none())
            .map(|(o, _)| format!("the {o} is missing."))
            .collect();
        let mut relations = Vec::with_capacity(graph.relations.len());
        for &(a, rel, b) in &graph.relations {
            let verdict = match (boxes[a], boxes[b]) {
                (Some(ba), Some(bb)) if holds(&ba, rel, &bb) => RelationVerdict::Holds,
                (Some(ba), Some(bb)) => {
                    sentences.push(violation(graph.objects[a], rel, graph.objects[b], &ba, &bb));
                    RelationVerdict::Violated
                }
                _ => RelationVerdict::CannotTell,
            };
            relations.push(verdict);
        }
        let asked = items.len() + relations.len();
        let met = items.iter().filter(|&&v| v == ItemVerdict::Present).count()
            + relations
                .iter()
                .filter(|&&v| v == RelationVerdict::Holds)
                .count();
        let score = if asked == 0 {
            1.0
        } else {
            met as f64 / asked as f64
        };
        let reflection = if sentences.is_empty() {
            "all relations hold.".to_owned()
        } else {
            sentences.join(" ")
        };
        Ok(CheckReport {
            items,
            relations,
            score,
            reflection,
        })
    }
}

/// The sentence for a violated relation: where the subject actually is.
fn violation(subject: Object, rel: Rel, object: Object, sb: &BBox, ob: &BBox) -> String {
    let actual = relative_position(sb, ob);
    if actual.is_empty() {
        format!("the {subject} is not clearly {rel} the {object}.")
    } else {
        let words: Vec<&str> = actual.iter().map(|r| r.word()).collect();
        format!(
            "the {subject} is {} the {object}, not {rel} it.",
            words.join(" and ")
        )
    }
}

impl Checker for OracleChecker {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                self.judge(&r.prompt, &r.image).map_err(|e| {
                    RoleError(format!(
                        "OracleChecker: request {i} (prompt {:?}): {e}",
                        r.prompt.prompt()
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlrig_world::{Colour, Shape};

    #[test]
    fn a_violation_with_no_relation_at_all_is_not_clearly_anything() {
        let red = Object {
            colour: Colour::Red,
            shape: Shape::Circle,
        };
        let blue = Object {
            colour: Colour::Blue,
            shape: Shape::Square,
        };
        // Centres 1 px apart: within GenEval's threshold, so no relation holds either way.
        let a = BBox {
            x0: 0,
            y0: 0,
            x1: 7,
            y1: 7,
        };
        let b = BBox {
            x0: 1,
            y0: 0,
            x1: 8,
            y1: 7,
        };
        assert_eq!(
            violation(red, Rel::LeftOf, blue, &a, &b),
            "the red circle is not clearly left of the blue square."
        );
        let far = BBox {
            x0: 20,
            y0: 0,
            x1: 27,
            y1: 7,
        };
        assert_eq!(
            violation(red, Rel::Above, blue, &a, &far),
            "the red circle is left of the blue square, not above it."
        );
    }
}
