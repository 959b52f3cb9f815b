//! What GRPO learns from, and how new Policy weights travel: groups of sampled edit prompts
//! read back from stored trajectories, the learner's interface, and the weights message.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{CheckReport, EditProposal, Image, RoleError, SceneGraph, StepOutput, Trajectory};

/// The `G` edit prompts the Policy sampled for one input (one trajectory, one round), each
/// with the reward it earned: the Checker's score after the Editor applied it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyGroup {
    /// The trajectory it comes from.
    pub trajectory: u64,
    /// The round.
    pub round: u32,
    /// The prompt.
    pub prompt: SceneGraph,
    /// The image the Policy looked at.
    pub image: Image,
    /// The Checker's report the Policy read (its reflection).
    pub report: CheckReport,
    /// The samples, in branch order.
    pub samples: Vec<GroupSample>,
}

/// One sampled edit prompt of a [`PolicyGroup`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSample {
    /// The edit prompt with its token ids, sampling log-probs and policy version.
    pub proposal: EditProposal,
    /// The reward: the combined Checker score of the branch's last image.
    pub reward: f64,
}

impl PolicyGroup {
    /// The oldest policy version among the samples.
    pub fn policy_version(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.proposal.policy_version)
            .min()
            .unwrap_or(0)
    }
}

impl Trajectory {
    /// The GRPO groups of the trajectory: one per round whose Policy step was sampled several
    /// ways ([`crate::Branch`]). A branch without a Checker report after its last image has
    /// no reward; a group with fewer than two rewarded samples is left out.
    pub fn policy_groups(&self) -> Vec<PolicyGroup> {
        let mut groups = Vec::new();
        let mut image: Option<&Image> = None;
        let mut reports: Vec<CheckReport> = Vec::new();
        let mut i = 0;
        while i < self.steps.len() {
            let step = &self.steps[i];
            if step.branch.is_none() {
                follow(&mut image, &mut reports, step);
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
                let mut proposal = None;
                let mut branch_reports: Vec<CheckReport> = Vec::new();
                for s in run
                    .iter()
                    .filter(|s| s.branch.is_some_and(|x| x.index == *b))
                {
                    match &s.output {
                        StepOutput::Edit(e) if proposal.is_none() => proposal = Some(e.clone()),
                        StepOutput::Edit(_) => {}
                        StepOutput::Image(_) => branch_reports.clear(),
                        StepOutput::Report(r) => branch_reports.push(r.clone()),
                    }
                }
                if let (Some(proposal), Some(r)) = (proposal, CheckReport::combine(&branch_reports))
                {
                    samples.push(GroupSample {
                        proposal,
                        reward: r.score,
                    });
                }
            }
            if let (Some(img), Some(report)) = (image, CheckReport::combine(&reports))
                && samples.len() >= 2
            {
                groups.push(PolicyGroup {
                    trajectory: self.id,
                    round,
                    prompt: self.prompt.clone(),
                    image: img.clone(),
                    report,
                    samples,
                });
            }
            // The kept branch's state carries the line on.
            for s in run.iter().filter(|s| s.on_line()) {
                follow(&mut image, &mut reports, s);
            }
            i = end;
        }
        groups
    }
}

/// Carries the line's state over one step: the current image and the reports on it.
fn follow<'a>(
    image: &mut Option<&'a Image>,
    reports: &mut Vec<CheckReport>,
    step: &'a crate::Step,
) {
    match &step.output {
        StepOutput::Image(img) => {
            *image = Some(img);
            reports.clear();
        }
        StepOutput::Report(r) => reports.push(r.clone()),
        StepOutput::Edit(_) => {}
    }
}

impl CheckReport {
    /// Several checkers' reports on one image as one: the last one's verdicts, the mean
    /// score, the reflections joined. `None` for no report.
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
        })
    }
}

/// New Policy weights, sent to every replica of the Policy actors by message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    /// The version: proposals written with these weights carry it.
    pub version: u64,
    /// The weights, in the format the Policy's kind loads (safetensors for the built-in one).
    #[serde(with = "serde_bytes")]
    pub weights: Vec<u8>,
}

/// What one learner step saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnStats {
    /// The policy version after the step.
    pub version: u64,
    /// Groups given.
    pub groups: usize,
    /// Groups dropped because their rewards were all equal.
    pub filtered_groups: usize,
    /// Sequences trained on.
    pub sequences: usize,
    /// Mean of the rewards given.
    pub reward_mean: f64,
    /// Standard deviation of the rewards given.
    pub reward_std: f64,
    /// The loss (0 when every group was filtered).
    pub loss: f64,
    /// Mean k3 KL to the reference per token.
    pub kl: f64,
    /// Share of tokens whose ratio was clipped.
    pub clip_fraction: f64,
}

/// A GRPO learner of a Policy, as the trainer drives it: steps on groups, publishes weights,
/// and saves and restores everything a resume needs (weights, optimiser state, version).
pub trait PolicyLearner: Send {
    /// One optimisation step on a batch of groups.
    fn step(&mut self, groups: &[PolicyGroup]) -> Result<LearnStats, RoleError>;
    /// The version of the current weights (0 before the first step).
    fn version(&self) -> u64;
    /// The current weights for the Policy actors.
    fn update(&self) -> Result<PolicyUpdate, RoleError>;
    /// Writes the learner's whole state into the directory `dir` (which exists and is empty).
    fn save(&self, dir: &Path) -> Result<(), RoleError>;
    /// Restores what [`PolicyLearner::save`] wrote.
    fn restore(&mut self, dir: &Path) -> Result<(), RoleError>;
}
