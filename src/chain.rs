//! One trajectory as files and words, shared by `rlrig run` (the run directory's
//! `trajectories/`), `rlrig trajectories` and the report: its `chain.json` with the PNGs of its
//! images, and its outcome in a line.
//!
//! It imports no other module of the binary, so the command modules that share it form no
//! circle through each other.

use std::path::Path;

use anyhow::{Context, Result};
use rlrig_contract::{Outcome, StepOutput, Trajectory};
use rlrig_flow::StoredImages;

/// Writes one trajectory's images and `chain.json` under `<out>/<id>/`; returns the chain
/// document (also one line of `rlrig trajectories export`'s JSONL).
pub(crate) fn write_chain(
    out: &Path,
    t: &Trajectory,
    images: StoredImages,
) -> Result<serde_json::Value> {
    let dir = out.join(format!("{:06}", t.id));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let answer = match t.outcome {
        Outcome::Done { answer, .. } => Some(answer),
        Outcome::Failed { .. } => None,
    };
    let mut chain = Vec::new();
    for (i, s) in t.steps.iter().enumerate() {
        let entry = match &s.output {
            StepOutput::Image(img) => {
                let file = format!("step{i:02}-round{}-{}.png", s.round, s.actor);
                if images == StoredImages::All || answer == Some(i) {
                    let path = dir.join(&file);
                    std::fs::write(&path, img.to_png()?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                serde_json::json!({"step": i, "round": s.round, "actor": s.actor, "role": s.role, "image": file})
            }
            StepOutput::Report(r) => serde_json::json!({
                "step": i, "round": s.round, "actor": s.actor, "role": s.role,
                "score": r.score, "reflection": r.reflection, "items": r.items, "relations": r.relations,
            }),
            StepOutput::Edit(e) => serde_json::json!({
                "step": i, "round": s.round, "actor": s.actor, "role": s.role,
                "edit_prompt": e.edit_prompt, "token_ids": e.token_ids, "logprobs": e.logprobs,
                "policy_version": e.policy_version,
            }),
        };
        let mut entry = entry;
        if let Some(b) = s.branch {
            entry["branch"] = b.index.into();
            entry["kept"] = b.kept.into();
        }
        chain.push(entry);
    }
    let doc = serde_json::json!({
        "id": t.id, "prompt": t.prompt.prompt(), "scene_graph": t.prompt, "seed": t.seed,
        "outcome": t.outcome, "elapsed_ms": t.elapsed_ms, "steps": chain,
    });
    let path = dir.join("chain.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(doc)
}

/// A trajectory's outcome in words: `done: answer round 2, score 1.00` or `failed: <error>`.
pub(crate) fn outcome_text(t: &Trajectory) -> String {
    match &t.outcome {
        Outcome::Done { answer, score } => {
            let round = t
                .steps
                .get(*answer)
                .map_or("?".to_string(), |s| s.round.to_string());
            match score {
                Some(s) => format!("done: answer round {round}, score {s:.2}"),
                None => format!("done: answer round {round}, unscored"),
            }
        }
        Outcome::Failed { error } => format!("failed: {error}"),
    }
}
