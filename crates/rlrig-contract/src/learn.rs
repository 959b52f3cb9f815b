//! What GRPO learns from, and how new weights travel: groups of samples read back from stored
//! trajectories — edit prompts of the Policy (phase 1), denoising chains of the Editor
//! (phase 2) or of the Diffuser (Flow-GRPO on the generator) — the learner's interface, and
//! the weights message.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    CheckReport, DenoisingChain, EditProposal, Image, Reward, RewardError, RoleError, SceneGraph,
    StepOutput, Trajectory,
};

/// The `G` samples drawn for one input (one trajectory, one round), each with the reward it
/// earned from the Checker's report on the branch's last image. In phase 1 the Policy sampled
/// `G` edit prompts (each then edited and re-checked); in phase 2 the Editor sampled `G` edits
/// of one edit prompt, each with its denoising chain; a trained Diffuser sampled `G` images of
/// the prompt (round 0), each with its denoising chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpoGroup {
    /// The trajectory it comes from.
    pub trajectory: u64,
    /// The round.
    pub round: u32,
    /// The prompt.
    pub prompt: SceneGraph,
    /// The image the sampled role looked at: the Policy's input, or the Editor's source image.
    /// `None` for the Diffuser's groups, which start from noise.
    pub image: Option<Image>,
    /// The Checker's report on `image` (the reflection the Policy read); `None` with `image`.
    pub report: Option<CheckReport>,
    /// The samples, in branch order.
    pub samples: Vec<GroupSample>,
}

/// One sample of a [`GrpoGroup`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSample {
    /// The edit prompt: sampled by the Policy (phase 1, with its token ids, sampling log-probs
    /// and version), or the one the Editor applied (phase 2, the same in every sample). `None`
    /// for the Diffuser's samples.
    pub proposal: Option<EditProposal>,
    /// The Editor's (phase 2) or the Diffuser's sampled denoising chain, with its log-probs
    /// and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<DenoisingChain>,
    /// The reward ([`Reward`]) of the combined Checker report on the branch's last image.
    pub reward: f64,
}

impl GroupSample {
    /// The version of the weights that drew the sample: the chain's (phase 2, Diffuser) or
    /// the proposal's (phase 1).
    pub fn version(&self) -> u64 {
        match (&self.chain, &self.proposal) {
            (Some(c), _) => c.version,
            (None, Some(p)) => p.policy_version,
            (None, None) => 0,
        }
    }
}

impl GrpoGroup {
    /// The oldest weights version among the samples.
    pub fn version(&self) -> u64 {
        self.samples
            .iter()
            .map(GroupSample::version)
            .min()
            .unwrap_or(0)
    }
}

/// The line's state as [`Trajectory::grpo_groups`] walks it.
#[derive(Default)]
struct Line<'a> {
    image: Option<&'a Image>,
    reports: Vec<CheckReport>,
    proposal: Option<&'a EditProposal>,
}

impl Trajectory {
    /// The GRPO groups of the trajectory: one per round whose steps ran as a group of
    /// branches ([`crate::Branch`]) — from the Policy step (phase 1), the Editor step (phase 2)
    /// or the Diffuser step (round 0) to the end of the round. A branch without a Checker
    /// report after its last image has no reward, an Editor's or Policy's branch without an
    /// edit prompt none either; a group with fewer than two rewarded samples is left out.
    ///
    /// Each sample's reward is `reward` of the branch's combined report; a report the reward
    /// cannot be computed from is an error.
    pub fn grpo_groups(&self, reward: &Reward) -> Result<Vec<GrpoGroup>, RewardError> {
        let mut groups = Vec::new();
        let mut line = Line::default();
        let mut i = 0;
        while i < self.steps.len() {
            let step = &self.steps[i];
            if step.branch.is_none() {
                line.follow(step);
                i += 1;
                continue;
            }
            // A run of branched steps: one group.
            let round = step.round;
            let end = self.steps[i..]
                .iter()
                .position(|s| s.branch.is_none() || s.round != round)
                .map_or(self.steps.len(), |n| i + n);
            let run = &self.steps[i..end];
            let mut branches: Vec<u32> = run
                .iter()
                .filter_map(|s| s.branch.map(|b| b.index))
                .collect();
            branches.dedup();
            let mut samples = Vec::new();
            for b in &branches {
                // A branch that starts at the Editor applies the line's edit prompt.
                let mut proposal = None;
                let mut chain = None;
                let mut branch_reports: Vec<CheckReport> = Vec::new();
                for s in run
                    .iter()
                    .filter(|s| s.branch.is_some_and(|x| x.index == *b))
                {
                    match &s.output {
                        StepOutput::Edit(e) if proposal.is_none() => proposal = Some(e.clone()),
                        StepOutput::Edit(_) => {}
                        StepOutput::Image(_) => {
                            if chain.is_none() {
                                chain = s.chain.clone();
                            }
                            branch_reports.clear();
                        }
                        StepOutput::Report(r) => branch_reports.push(r.clone()),
                    }
                }
                let proposal = proposal.or_else(|| line.proposal.cloned());
                // Only a Diffuser's branch (round 0: no image before it) has no edit prompt.
                let learnable = proposal.is_some() || (line.image.is_none() && chain.is_some());
                if let (true, Some(r)) = (learnable, CheckReport::combine(&branch_reports)) {
                    samples.push(GroupSample {
                        proposal,
                        chain,
                        reward: reward.of(&r)?,
                    });
                }
            }
            let report = CheckReport::combine(&line.reports);
            // A group after an image needs the report on it (the reflection the Policy read).
            if samples.len() >= 2 && (line.image.is_none() || report.is_some()) {
                groups.push(GrpoGroup {
                    trajectory: self.id,
                    round,
                    prompt: self.prompt.clone(),
                    image: line.image.cloned(),
                    report,
                    samples,
                });
            }
            // The kept branch's state carries the line on.
            for s in run.iter().filter(|s| s.on_line()) {
                line.follow(s);
            }
            i = end;
        }
        Ok(groups)
    }
}

impl<'a> Line<'a> {
    /// Carries the line's state over one step: the current image, the reports on it and the
    /// edit prompt waiting for the Editor.
    fn follow(&mut self, step: &'a crate::Step) {
        match &step.output {
            StepOutput::Image(img) => {
                self.image = Some(img);
                self.reports.clear();
                self.proposal = None;
            }
            StepOutput::Report(r) => self.reports.push(r.clone()),
            StepOutput::Edit(e) => self.proposal = Some(e),
        }
    }
}

impl CheckReport {
    /// Several checkers' reports on one image as one: the last one's verdicts, the mean
    /// score, the reflections joined, the last scene graph reported and the mean of the IoU
    /// estimates reported. `None` for no report.
    pub fn combine(reports: &[CheckReport]) -> Option<CheckReport> {
        let last = reports.last()?;
        if reports.len() == 1 {
            return Some(last.clone());
        }
        Some(CheckReport {
            items: last.items.clone(),
            relations: last.relations.clone(),
            score: reports.iter().map(|r| r.score).sum::<f64>() / reports.len() as f64,
            reflection: reports
                .iter()
                .map(|r| r.reflection.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            graph: reports.iter().rev().find_map(|r| r.graph.clone()),
            estimates: mean_estimates(reports),
        })
    }
}

/// The mean of the reports' IoU estimates, over those that have them.
fn mean_estimates(reports: &[CheckReport]) -> Option<crate::sg::IouScores> {
    let have: Vec<&crate::sg::IouScores> = reports
        .iter()
        .filter_map(|r| r.estimates.as_ref())
        .collect();
    if have.is_empty() {
        return None;
    }
    let n = have.len() as f64;
    Some(crate::sg::IouScores {
        sg_iou: have.iter().map(|e| e.sg_iou).sum::<f64>() / n,
        entity_iou: have.iter().map(|e| e.entity_iou).sum::<f64>() / n,
        relation_iou: have.iter().map(|e| e.relation_iou).sum::<f64>() / n,
    })
}

/// New weights of the trained role (the Policy in phase 1, the Editor in phase 2), sent to
/// every replica of its actor by message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsUpdate {
    /// The version: proposals and denoising chains sampled with these weights carry it.
    pub version: u64,
    /// The weights, in the format the role's kind loads (safetensors for the built-in ones).
    #[serde(with = "serde_bytes")]
    pub weights: Vec<u8>,
}

/// What one learner step saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnStats {
    /// The weights version after the step.
    pub version: u64,
    /// Groups given.
    pub groups: usize,
    /// Groups dropped because their rewards were all equal.
    pub filtered_groups: usize,
    /// Samples trained on (edit prompts or denoising chains).
    pub sequences: usize,
    /// Mean of the rewards given.
    pub reward_mean: f64,
    /// Standard deviation of the rewards given.
    pub reward_std: f64,
    /// The loss (0 when every group was filtered).
    pub loss: f64,
    /// Mean KL to the reference per token or per denoising step.
    pub kl: f64,
    /// Share of tokens (or denoising steps) whose ratio was clipped.
    pub clip_fraction: f64,
}

/// A GRPO learner of the trained role (the Policy or the Editor), as the trainer drives it:
/// steps on groups, publishes weights, and saves and restores everything a resume needs
/// (weights, optimiser state, version).
pub trait GrpoLearner: Send {
    /// One optimisation step on a batch of groups.
    fn step(&mut self, groups: &[GrpoGroup]) -> Result<LearnStats, RoleError>;
    /// The version of the current weights (0 before the first step).
    fn version(&self) -> u64;
    /// The current weights for the trained role's actors.
    fn update(&self) -> Result<WeightsUpdate, RoleError>;
    /// Writes the learner's whole state into the directory `dir` (which exists and is empty).
    fn save(&self, dir: &Path) -> Result<(), RoleError>;
    /// Restores what [`GrpoLearner::save`] wrote.
    fn restore(&mut self, dir: &Path) -> Result<(), RoleError>;
}
