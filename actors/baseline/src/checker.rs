//! [`OracleChecker`]: the world's oracle parser in a Checker's coat.

use rlrig_contract::sg::Extraction;
use rlrig_contract::{CheckReport, CheckRequest, Checker, Image, RoleError, SceneGraph};
use rlrig_world::WorldGraph;
use rlrig_world::oracle::{self, OracleConfig};
use rlrig_world::reflect;
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
/// * per item: `present` if a detected object has its colour and shape, else `missing`;
/// * per relation: `holds` or `violated` by GenEval's rule on the detected boxes (the largest
///   detection of each object), or `cannot_tell` when an endpoint is missing
///   ([`reflect::oracle_findings`]);
/// * score = (present items + holding relations) / (items + relations), 1 for an empty prompt;
/// * a reflection of one sentence per problem, missing items first, then violated relations,
///   in prompt order: `the green triangle is missing.`, `the red circle is right of the blue
///   square, not left of it.` (or `the red circle is not clearly left of the blue square.`
///   when no relation holds between the two); `all relations hold.` when there is no problem.
///   A relation that cannot be told gets no sentence of its own: its missing endpoint has one
///   ([`reflect::report`], shared with the learned Checker).
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
        let findings = reflect::oracle_findings(&graph, image, &self.oracle);
        // The oracle's own scene graph, narrowed as a LAION-SG judge would see it.
        let seen = Extraction::from(&oracle::graph_of(&oracle::detect_with(image, &self.oracle)))
            .as_judged_against(prompt);
        Ok(reflect::report(&graph, findings).with_graph(prompt, seen))
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
