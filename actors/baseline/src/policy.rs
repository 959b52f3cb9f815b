//! [`RulePolicy`]: the paper's *Actor* role as three fixed rules.

use rlrig_contract::{CheckReport, EditPolicy, EditProposal, ProposeRequest, RoleError};
use rlrig_world::{Edit, Object, Rel, WorldGraph, reflect};
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Config of [`RulePolicy`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulePolicyConfig {
    /// Whether an `add` edit places the new object relative to a present item, using a prompt
    /// relation that links the two (`add a red circle to the left of the blue square`); if
    /// false, or no such relation exists, it is a bare `add a red circle`. Default true.
    pub place_added: bool,
    /// Whether a violated relation whose reverse holds in the Checker's scene graph (`a left
    /// of b` asked, `b left of a` seen) is repaired by `swap the <a> and the <b>` instead of a
    /// move. Needs a Checker that reports its graph; without one the rule moves. Default false.
    pub swap_reversed: bool,
}

impl Default for RulePolicyConfig {
    fn default() -> Self {
        RulePolicyConfig {
            place_added: true,
            swap_reversed: false,
        }
    }
}

/// A baseline EditPolicy (the paper's *Actor*) and test instrument, not a learned policy: it
/// writes an edit prompt in the edit-prompt language ([`rlrig_world::edit`]) from the prompt
/// and the Checker's verdicts alone, by three rules, first match wins:
///
/// 1. the first **missing** item → `add a <item>`, placed by the first prompt relation that
///    links it to a present item (`add a <item> <where> the <present item>`; the relation is
///    turned round when the missing item is its object), else without a placement;
/// 2. the first **violated** relation → `move the <subject> <where> the <object>` (with
///    `swap_reversed`, `swap the <subject> and the <object>` when the Checker sees it reversed);
/// 3. nothing wrong → re-assert the first relation as a move, which the edit semantics make a
///    no-op (a moved object stays put when the relation already holds); a prompt without
///    relations gets `recolour the <first item> to <its own colour>`, also a no-op.
///
/// It ignores the image, the reflection text and the seed. Its proposals carry no tokens
/// (`token_ids` and `logprobs` empty) and policy version 0. A prompt outside the world's
/// vocabulary, one with no items, or a report whose verdicts do not match the prompt fails the
/// batch.
#[derive(Clone, Debug)]
pub struct RulePolicy {
    config: RulePolicyConfig,
}

impl RulePolicy {
    /// A rule policy with this config. Every config is valid today; the `Result` keeps the
    /// baselines' constructors alike.
    pub fn new(config: RulePolicyConfig) -> Result<Self, ConfigError> {
        Ok(RulePolicy { config })
    }

    /// The config it runs with.
    pub fn config(&self) -> &RulePolicyConfig {
        &self.config
    }

    /// The edit for one request, by the rules above.
    fn decide(&self, request: &ProposeRequest) -> Result<Edit, String> {
        let graph = WorldGraph::from_scene_graph(&request.prompt).map_err(|e| e.to_string())?;
        let r = &request.report;
        let edit = reflect::repair(&graph, &r.items, &r.relations, self.config.place_added)
            .map_err(|e| e.to_string())?;
        Ok(match edit {
            Edit::Move {
                object,
                rel,
                anchor,
            } if self.config.swap_reversed && reversed_seen(r, object, rel, anchor) => Edit::Swap {
                a: object,
                b: anchor,
            },
            other => other,
        })
    }
}

/// Whether the report's scene graph holds `anchor <rel> object`: the asked relation reversed.
fn reversed_seen(report: &CheckReport, object: Object, rel: Rel, anchor: Object) -> bool {
    report.graph.as_ref().is_some_and(|g| {
        g.triples.iter().any(|t| {
            t.subject == anchor.to_string()
                && t.predicate == rel.word()
                && t.object == object.to_string()
        })
    })
}

impl EditPolicy for RulePolicy {
    fn propose(&mut self, batch: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let edit = self.decide(r).map_err(|e| {
                    RoleError(format!(
                        "RulePolicy: request {i} (prompt {:?}): {e}",
                        r.prompt.prompt()
                    ))
                })?;
                Ok(EditProposal {
                    edit_prompt: edit.to_string(),
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                    policy_version: 0,
                })
            })
            .collect()
    }
}
