//! A trajectory: one prompt's way through the reflect-edit cycle, step by step.

use serde::{Deserialize, Serialize};

use crate::DenoisingChain;

use crate::{CheckReport, EditProposal, Image, Role, SceneGraph};

/// One prompt's run through the cycle: every step's output, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Identifier within its run (the prompt's index).
    pub id: u64,
    /// The prompt.
    pub prompt: SceneGraph,
    /// The trajectory's seed; each step's seed derives from it.
    pub seed: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Duration, milliseconds.
    pub elapsed_ms: u64,
}

/// One step: an actor's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Round: 0 for the `start` steps, then 1, 2, …
    pub round: u32,
    /// The flow's name of the actor that answered.
    pub actor: String,
    /// Its role.
    pub role: Role,
    /// What it answered.
    pub output: StepOutput,
    /// Attempts it took (1 when the first succeeded).
    pub attempts: u32,
    /// Time from request to answer, milliseconds.
    pub elapsed_ms: u64,
    /// Set on the steps of a round that the trained role (the Policy, or the Editor in
    /// phase 2) sampled `num_generations` ways: which of the group's branches the step belongs
    /// to, and whether the trajectory went on from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<Branch>,
    /// An Editor's image sampled for phase 2: the denoising chain it was sampled along.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<DenoisingChain>,
}

/// A step's place in a group of sampled branches (GRPO rollout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// The branch, `0..num_generations`.
    pub index: u32,
    /// Whether the trajectory continued from this branch (the best Checker score; the lowest
    /// index among equals). Exactly one branch of a group is kept.
    pub kept: bool,
}

/// The output of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutput {
    /// A diffuser's or editor's image.
    Image(Image),
    /// A checker's report (its score is the reward).
    Report(CheckReport),
    /// A policy's edit prompt, with token ids, log-probs and policy version.
    Edit(EditProposal),
}

/// How a trajectory ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Outcome {
    /// Completed. `answer` is the index in `steps` of the answer image.
    Done {
        /// Index of the answer image's step.
        answer: usize,
        /// The checkers' score of the answer, when it was checked.
        score: Option<f64>,
    },
    /// Given up: a step failed after its retries, or the run was cancelled.
    Failed {
        /// What went wrong, naming the actor.
        error: String,
    },
}

impl Step {
    /// Whether the step is on the trajectory's line: not part of a branch that was dropped.
    pub fn on_line(&self) -> bool {
        self.branch.is_none_or(|b| b.kept)
    }
}

impl Trajectory {
    /// The images on the trajectory's line (dropped branches left out), with their step index
    /// and round, in order.
    pub fn images(&self) -> impl Iterator<Item = (usize, u32, &Image)> {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.on_line())
            .filter_map(|(i, s)| match &s.output {
                StepOutput::Image(img) => Some((i, s.round, img)),
                _ => None,
            })
    }

    /// The answer image, when the trajectory completed.
    pub fn answer(&self) -> Option<&Image> {
        match self.outcome {
            Outcome::Done { answer, .. } => match &self.steps.get(answer)?.output {
                StepOutput::Image(img) => Some(img),
                _ => None,
            },
            Outcome::Failed { .. } => None,
        }
    }
}
