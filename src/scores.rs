//! The lines of a run's `scores.jsonl` (the oracle's scores, written by `rlrig run`) and of
//! `judge_scores.jsonl` (a VLM judge's, written by `rlrig eval --judge-url`): per trajectory
//! its prompt, its outcome and the scores of each round's image and of the answer. `rlrig
//! compare` and `rlrig eval` read them back as the same type.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rlrig_sg::{IouScores, SceneGraph};
use serde::{Deserialize, Serialize};

/// The metrics of a line, by the names its JSON uses.
pub const METRICS: [&str; 4] = ["sg_iou", "entity_iou", "relation_iou", "relation_accuracy"];

/// One trajectory's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreLine {
    /// The trajectory's id.
    pub id: u64,
    /// The prompt as text (absent in files written before prompts were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The prompt's scene graph (the oracle's lines record it, for `compare` to pair prompts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene_graph: Option<SceneGraph>,
    /// Whether the trajectory reached an answer (files without it: done).
    #[serde(default)]
    pub outcome: LineOutcome,
    /// Why a failed trajectory failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Round k's entry: the scores of the latest image of round k or earlier.
    #[serde(default)]
    pub rounds: Vec<Judgement>,
    /// The answer's scores; `null` for a failed trajectory.
    #[serde(rename = "final", default)]
    pub final_: Option<Judgement>,
}

/// Whether a trajectory reached an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineOutcome {
    /// It did.
    #[default]
    Done,
    /// It failed (the line's `error` says why).
    Failed,
}

/// An image's scores, or why the judge could not give them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Judgement {
    /// The scores.
    Scored(Scores),
    /// The judge gave no usable answer (the oracle never fails).
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl Judgement {
    /// The scores, unless the judgement failed.
    pub fn scores(&self) -> Option<&Scores> {
        match self {
            Judgement::Scored(s) => Some(s),
            Judgement::Failed { .. } => None,
        }
    }
}

/// One image's scores against its prompt.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Scene-graph IoU.
    pub sg_iou: f64,
    /// Entity IoU.
    pub entity_iou: f64,
    /// Relation IoU.
    pub relation_iou: f64,
    /// The share of the prompt's relations that hold; `null` for a prompt without relations
    /// (and absent in files written before it was recorded).
    #[serde(default)]
    pub relation_accuracy: Option<f64>,
}

impl Scores {
    /// Scores from IoUs and a relation accuracy.
    pub fn new(iou: &IouScores, relation_accuracy: Option<f64>) -> Scores {
        Scores {
            sg_iou: iou.sg_iou,
            entity_iou: iou.entity_iou,
            relation_iou: iou.relation_iou,
            relation_accuracy,
        }
    }

    /// The metric named `name` (one of [`METRICS`]), when it has a value.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "sg_iou" => Some(self.sg_iou),
            "entity_iou" => Some(self.entity_iou),
            "relation_iou" => Some(self.relation_iou),
            "relation_accuracy" => self.relation_accuracy,
            _ => None,
        }
    }
}

/// Writes one line (JSON and a newline).
pub fn write_line(out: &mut impl Write, line: &ScoreLine) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// Reads a scores file; an error names the file and the line.
pub fn read(path: &Path) -> Result<Vec<ScoreLine>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_older_files_and_failed_judgements_read_back() {
        let old = r#"{"id": 3, "final": {"sg_iou": 0.5, "entity_iou": 1.0, "relation_iou": 0.25}, "rounds": []}"#;
        let l: ScoreLine = serde_json::from_str(old).unwrap();
        assert_eq!(l.outcome, LineOutcome::Done);
        let s = l.final_.as_ref().and_then(Judgement::scores).unwrap();
        assert_eq!(
            METRICS.map(|m| s.metric(m)),
            [Some(0.5), Some(1.0), Some(0.25), None]
        );
        let judged = r#"{"id": 1, "outcome": "done", "rounds": [{"error": "timed out"}], "final": {"sg_iou": 1, "entity_iou": 1, "relation_iou": 1, "relation_accuracy": 0.5}}"#;
        let l: ScoreLine = serde_json::from_str(judged).unwrap();
        assert_eq!(
            l.rounds,
            [Judgement::Failed {
                error: "timed out".into()
            }]
        );
        assert_eq!(
            l.final_
                .unwrap()
                .scores()
                .unwrap()
                .metric("relation_accuracy"),
            Some(0.5)
        );
        let mut out = Vec::new();
        let failed = ScoreLine {
            id: 7,
            prompt: Some("a red circle".into()),
            scene_graph: None,
            outcome: LineOutcome::Failed,
            error: Some("actor \"checker\" failed".into()),
            rounds: Vec::new(),
            final_: None,
        };
        write_line(&mut out, &failed).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""outcome":"failed""#) && text.contains(r#""final":null"#));
        assert_eq!(serde_json::from_str::<ScoreLine>(&text).unwrap(), failed);
    }
}
