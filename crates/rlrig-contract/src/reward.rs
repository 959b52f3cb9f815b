//! The intrinsic reward: what a Checker's report is worth, for GRPO's advantages and for the
//! cycle's `answer = "best"` ranking alike. Named after TRL's `reward_funcs` and
//! `reward_weights`: a weighted sum of reward functions, each read off the report.

use serde::{Deserialize, Serialize};

use crate::CheckReport;

/// One reward function over a Checker's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RewardFunc {
    /// The share of the prompt's requirements the Checker finds met ([`CheckReport::score`]).
    Score,
    /// The Checker's estimate of the image's SG-IoU: extra triples count against it.
    SgIou,
    /// The Checker's estimate of the image's Entity-IoU.
    EntityIou,
    /// The Checker's estimate of the image's Relation-IoU.
    RelationIou,
}

impl RewardFunc {
    /// The name flows use: `score`, `sg_iou`, `entity_iou`, `relation_iou`.
    pub fn name(self) -> &'static str {
        match self {
            RewardFunc::Score => "score",
            RewardFunc::SgIou => "sg_iou",
            RewardFunc::EntityIou => "entity_iou",
            RewardFunc::RelationIou => "relation_iou",
        }
    }

    /// The function's value on a report; the IoU functions need the Checker's estimates.
    pub fn of(self, report: &CheckReport) -> Result<f64, RewardError> {
        let est = |f: fn(&crate::sg::IouScores) -> f64| {
            report
                .estimates
                .as_ref()
                .map(f)
                .ok_or(RewardError::NoEstimates(self.name()))
        };
        match self {
            RewardFunc::Score => Ok(report.score),
            RewardFunc::SgIou => est(|e| e.sg_iou),
            RewardFunc::EntityIou => est(|e| e.entity_iou),
            RewardFunc::RelationIou => est(|e| e.relation_iou),
        }
    }
}

/// A reward that cannot be computed from a report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewardError {
    /// The reward function reads the Checker's scene-graph estimates and the report has none.
    #[error(
        "reward function `{0}` needs the Checker's scene-graph estimates, and the report has none \
         (use a checker that reports its scene graph, such as `neural.checker` or \
         `baseline.oracle_checker`, or reward `score` alone)"
    )]
    NoEstimates(&'static str),
}

/// The reward: `Σ weights[i] · funcs[i](report)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    /// The reward functions.
    pub funcs: Vec<RewardFunc>,
    /// One weight per function.
    pub weights: Vec<f64>,
}

impl Default for Reward {
    /// The Checker's score alone.
    fn default() -> Self {
        Reward {
            funcs: vec![RewardFunc::Score],
            weights: vec![1.0],
        }
    }
}

impl Reward {
    /// The reward of one report.
    pub fn of(&self, report: &CheckReport) -> Result<f64, RewardError> {
        let mut total = 0.0;
        for (f, w) in self.funcs.iter().zip(&self.weights) {
            total += w * f.of(report)?;
        }
        Ok(total)
    }

    /// Whether any function reads the Checker's scene-graph estimates.
    pub fn needs_estimates(&self) -> bool {
        self.funcs.iter().any(|&f| f != RewardFunc::Score)
    }
}

impl std::fmt::Display for Reward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (func, w)) in self.funcs.iter().zip(&self.weights).enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{w}·{}", func.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sg::{Extraction, IouScores, Triple};
    use crate::{ItemVerdict, RelationVerdict};

    fn prompt() -> crate::SceneGraph {
        crate::sg::read_jsonl(
            concat!(
                r#"{"items":[{"item_id":0,"label":"circle","attributes":["red"]},"#,
                r#"{"item_id":1,"label":"square","attributes":["blue"]},"#,
                r#"{"item_id":2,"label":"triangle","attributes":["green"]}],"#,
                r#""relations":[{"item1":0,"relation":"left of","item2":1}]}"#
            ),
            "t",
        )
        .unwrap()
        .remove(0)
    }

    fn triple(s: &str, p: &str, o: &str) -> Triple {
        Triple {
            subject: s.into(),
            predicate: p.into(),
            object: o.into(),
        }
    }

    /// The prompt's relation holds, and so does one triple the prompt does not name.
    fn report_with_extra() -> CheckReport {
        let graph = Extraction {
            triples: vec![
                triple("red circle", "left of", "blue square"),
                triple("red circle", "left of", "green triangle"),
            ],
            entities: vec![
                "red circle".into(),
                "blue square".into(),
                "green triangle".into(),
            ],
            predicates: vec!["left of".into()],
        };
        CheckReport::new(
            vec![ItemVerdict::Present; 3],
            vec![RelationVerdict::Holds],
            1.0,
            String::new(),
        )
        .with_graph(&prompt(), graph)
    }

    #[test]
    fn the_score_reward_cannot_see_extra_triples_and_sg_iou_can() {
        let r = report_with_extra();
        assert_eq!(
            r.estimates,
            Some(IouScores {
                sg_iou: 0.5,
                entity_iou: 1.0,
                relation_iou: 1.0
            })
        );
        assert_eq!(Reward::default().of(&r), Ok(1.0));
        let sg = Reward {
            funcs: vec![RewardFunc::SgIou],
            weights: vec![1.0],
        };
        assert_eq!(sg.of(&r), Ok(0.5));
        let mix = Reward {
            funcs: vec![RewardFunc::Score, RewardFunc::SgIou],
            weights: vec![0.5, 2.0],
        };
        assert_eq!(mix.of(&r), Ok(1.5));
        assert_eq!(mix.to_string(), "0.5·score + 2·sg_iou");
        let ent = Reward {
            funcs: vec![RewardFunc::EntityIou, RewardFunc::RelationIou],
            weights: vec![1.0, 1.0],
        };
        assert_eq!(ent.of(&r), Ok(2.0));
    }

    #[test]
    fn a_report_without_a_graph_refuses_the_iou_rewards_by_name() {
        let r = CheckReport::new(vec![], vec![], 0.25, String::new());
        assert_eq!(Reward::default().of(&r), Ok(0.25));
        let sg = Reward {
            funcs: vec![RewardFunc::Score, RewardFunc::SgIou],
            weights: vec![1.0, 1.0],
        };
        let e = sg.of(&r).unwrap_err();
        assert_eq!(e, RewardError::NoEstimates("sg_iou"));
        assert!(e.to_string().contains("`sg_iou`"), "{e}");
        assert!(sg.needs_estimates() && !Reward::default().needs_estimates());
    }
}
