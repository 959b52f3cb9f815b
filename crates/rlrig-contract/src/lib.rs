//! The contract between rlrig's engine and the crates that implement its roles.
//!
//! The engine (which runs roles as ractor actors, batches and routes their messages) and the
//! role crates (which hold models) both depend on this crate and on nothing of each other.
//! It holds:
//!
//! * domain types: [`Image`], and the scene graphs of [`rlrig_sg`] (re-exported as [`sg`]);
//! * the messages that travel between roles ([`GenerateRequest`], [`CheckRequest`],
//!   [`CheckReport`], [`ProposeRequest`], [`EditProposal`], [`EditRequest`], [`SampledImage`]
//!   with its [`DenoisingChain`]), all
//!   serde-serialisable so that they can cross process and node boundaries;
//! * what GRPO learns from ([`GrpoGroup`], read back from a [`Trajectory`]), the
//!   learner's interface ([`GrpoLearner`]) and the weights message ([`WeightsUpdate`]);
//! * one trait per role ([`Diffuser`], [`Checker`], [`EditPolicy`], [`Editor`]), each taking a
//!   whole batch so that the engine can batch requests dynamically.
//!
//! **Naming.** The paper's *Actor* — the VLM that writes edit prompts — is the
//! [`EditPolicy`] role here (flow files call it `role = "policy"`), so that it is never
//! confused with a ractor actor. "Actor" alone in rlrig's code means a ractor actor.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

pub use rlrig_sg as sg;
pub use rlrig_sg::SceneGraph;

mod chain;
mod image;
mod learn;
mod reward;
mod trajectory;
pub use chain::{ChainError, DenoisingChain, SampledImage, round_f16};
pub use image::{Image, ImageError, PngError};
pub use learn::{GroupSample, GrpoGroup, GrpoLearner, LearnStats, WeightsUpdate};
pub use reward::{Reward, RewardError, RewardFunc};
pub use trajectory::{Branch, Outcome, Step, StepOutput, Trajectory};

/// The roles of the reflect-edit cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Text → image.
    Diffuser,
    /// Image + prompt → verdicts, score, reflection.
    Checker,
    /// The paper's *Actor*: image + prompt + reflection → edit prompt.
    Policy,
    /// The paper's *Inverse Diffuser*: image + edit prompt → image.
    Editor,
    /// The GRPO learner.
    Trainer,
}

impl Role {
    /// The role's name in flow files and protocols: `diffuser`, `checker`, `policy`, …
    pub fn name(self) -> &'static str {
        match self {
            Role::Diffuser => "diffuser",
            Role::Checker => "checker",
            Role::Policy => "policy",
            Role::Editor => "editor",
            Role::Trainer => "trainer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Asks a [`Diffuser`] for an image of `prompt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The scene graph to draw; its [`SceneGraph::prompt`] is the text prompt.
    pub prompt: SceneGraph,
    /// Seed of the sampling noise, so that a run is reproducible.
    pub seed: u64,
    /// Flow-GRPO on the Diffuser: sample with the Diffuser's stochastic sampler and answer the
    /// denoising chain GRPO learns from ([`Diffuser::generate_explore`]) instead of the image
    /// alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explore: bool,
}

/// Asks a [`Checker`] to reflect on `image` against `prompt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The prompt's scene graph.
    pub prompt: SceneGraph,
    /// The image to judge.
    pub image: Image,
}

/// Whether a prompt item is in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemVerdict {
    /// The item is drawn.
    Present,
    /// The item is not drawn.
    Missing,
}

/// Whether a prompt relation holds in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationVerdict {
    /// The relation holds.
    Holds,
    /// The relation is violated.
    Violated,
    /// It cannot be told (e.g. an endpoint is missing).
    CannotTell,
}

/// A [`Checker`]'s reflection on one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// One verdict per prompt item, in the prompt's item order.
    pub items: Vec<ItemVerdict>,
    /// One verdict per prompt relation, in the prompt's relation order.
    pub relations: Vec<RelationVerdict>,
    /// Fraction of the prompt's requirements satisfied, in `[0, 1]`: the default intrinsic
    /// reward ([`Reward`] chooses).
    pub score: f64,
    /// The reflection in words, e.g. `the red circle is right of the blue square, not left of it`.
    pub reflection: String,
    /// The scene graph the Checker sees, under LAION-SG's protocol: the prompt's items are the
    /// candidate entities and its predicates the candidate relations, and every ordered pair of
    /// present items is asked about every candidate predicate. `None` from checkers that do
    /// not report one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<sg::Extraction>,
    /// SG-IoU, Entity-IoU and Relation-IoU of [`CheckReport::graph`] against the prompt: the
    /// Checker's estimate of what a LAION-SG judge would score ([`sg::score`]). An intrinsic
    /// signal: no oracle takes part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimates: Option<sg::IouScores>,
}

impl CheckReport {
    /// A report without a scene graph: verdicts, score and reflection only.
    pub fn new(
        items: Vec<ItemVerdict>,
        relations: Vec<RelationVerdict>,
        score: f64,
        reflection: String,
    ) -> Self {
        CheckReport {
            items,
            relations,
            score,
            reflection,
            graph: None,
            estimates: None,
        }
    }

    /// Adds the scene graph the Checker sees and its IoU estimates against `prompt`.
    pub fn with_graph(mut self, prompt: &SceneGraph, graph: sg::Extraction) -> Self {
        self.estimates = Some(sg::score(prompt, &graph));
        self.graph = Some(graph);
        self
    }
}

/// Asks the [`EditPolicy`] (the paper's Actor) for an edit prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposeRequest {
    /// The prompt's scene graph.
    pub prompt: SceneGraph,
    /// The current image.
    pub image: Image,
    /// The checker's reflection on it.
    pub report: CheckReport,
    /// Seed for sampling the edit prompt.
    pub seed: u64,
}

/// An edit prompt written by the [`EditPolicy`], with what GRPO needs to learn from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditProposal {
    /// The edit prompt, e.g. `move the red circle to the left of the blue square`.
    pub edit_prompt: String,
    /// Token ids of the edit prompt (empty for policies without tokens).
    pub token_ids: Vec<u32>,
    /// Log-probability of each token under the sampling policy (same length as `token_ids`).
    pub logprobs: Vec<f32>,
    /// Version of the policy weights that wrote it.
    pub policy_version: u64,
}

/// Asks an [`Editor`] to apply an edit prompt to an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    /// The image to edit.
    pub image: Image,
    /// The edit prompt.
    pub edit_prompt: String,
    /// Seed of the sampling noise.
    pub seed: u64,
    /// Phase 2: sample with the Editor's stochastic sampler and answer the denoising chain
    /// GRPO learns from ([`Editor::edit_explore`]) instead of the image alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explore: bool,
}

/// A role implementation failed on a batch. The engine retries or records it; it never drops it.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct RoleError(pub String);

/// Text → image. Implementations answer one image per request, in order.
pub trait Diffuser: Send {
    /// Generates one image per request.
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError>;

    /// Flow-GRPO: generates each image with a stochastic sampler and answers the denoising
    /// chain with each step's log-probability. Diffusers that cannot refuse.
    fn generate_explore(
        &mut self,
        batch: &[GenerateRequest],
    ) -> Result<Vec<SampledImage>, RoleError> {
        Err(RoleError(format!(
            "this diffuser cannot sample denoising chains with log-probabilities \
             ({} requests); training it needs one that can, such as `neural.diffuser`",
            batch.len()
        )))
    }

    /// Takes new weights from the trainer; later chains carry `update.version`. Diffusers that
    /// cannot learn refuse.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        Err(RoleError(format!(
            "this diffuser cannot take new weights (version {})",
            update.version
        )))
    }
}

/// Image + prompt → a [`CheckReport`] per request, in order.
pub trait Checker: Send {
    /// Reflects on each image.
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError>;
}

/// The paper's *Actor*: writes an edit prompt for each request, in order.
pub trait EditPolicy: Send {
    /// Proposes one edit per request.
    fn propose(&mut self, batch: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError>;

    /// Takes new weights from the trainer; later proposals carry `update.version`. Policies
    /// that cannot learn refuse.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        Err(RoleError(format!(
            "this policy cannot take new weights (version {})",
            update.version
        )))
    }
}

/// The paper's *Inverse Diffuser*: applies an edit prompt, one image per request, in order.
pub trait Editor: Send {
    /// Edits each image.
    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError>;

    /// Phase 2 (Flow-GRPO): edits each image with a stochastic sampler and answers the
    /// denoising chain with each step's log-probability. Editors that cannot refuse.
    fn edit_explore(&mut self, batch: &[EditRequest]) -> Result<Vec<SampledImage>, RoleError> {
        Err(RoleError(format!(
            "this editor cannot sample denoising chains with log-probabilities \
             ({} requests); phase 2 needs one that can, such as `neural.editor`",
            batch.len()
        )))
    }

    /// Takes new weights from the trainer (phase 2); later chains carry `update.version`.
    /// Editors that cannot learn refuse.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        Err(RoleError(format!(
            "this editor cannot take new weights (version {})",
            update.version
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_json() {
        let req = CheckRequest {
            prompt: sg::read_jsonl(
                r#"{"items":[{"item_id":0,"label":"circle","attributes":["red"]}]}"#,
                "t",
            )
            .unwrap()
            .remove(0),
            image: Image::filled(3, 2, [1, 2, 3]),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<CheckRequest>(&text).unwrap(), req);
        assert_eq!(serde_json::to_string(&Role::Policy).unwrap(), "\"policy\"");
    }
}
