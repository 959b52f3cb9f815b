//! `rlrig eval FLOW --prompts FILE`: a flow over LAION-SG prompts (JSON or JSONL), judged by
//! the oracle, with 95 % bootstrap confidence intervals of SG-IoU, Entity-IoU and
//! Relation-IoU per round and for the final answers (a table, `eval.json` in the run
//! directory, or JSON on stdout).
//!
//! The oracle judges only the built-in world: every record must be in its vocabulary (shapes,
//! colours, the four relations), else the command refuses before running, listing each record's
//! problems. Malformed records are refused by the LAION-SG reader with their line and field.
//! With `--judge-url`, a VLM behind an OpenAI-compatible endpoint judges instead (crate
//! `rlrig-judge`), each round's image and the answer of every stored trajectory; a trajectory
//! that stops early counts its last image for the later rounds.
//!
//! With `--json`, stdout holds the JSON document only; the run's progress and tables go to
//! stderr. Exit codes are `rlrig run`'s: some failed trajectories give
//! [`crate::cli::exit::TRAJECTORIES_FAILED`] after the report is written.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rlrig_engine::Registry;
use rlrig_world::WorldGraph;

use crate::cli::refused;
use crate::compare_cmd::bootstrap_ci;
use crate::run::{Reporting, RunOptions};

/// Options of `rlrig eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The flow to run, e.g. flows/infer.toml.
    pub flow: PathBuf,
    /// LAION-SG records (`.json` array or `.jsonl`).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Overrides a value of the flow (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Replaces the run directory if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// Print JSON only on stdout (the run's progress and tables go to stderr) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Judge with a VLM at this OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1)
    /// instead of the oracle; prompts may then use any vocabulary the flow's actors take.
    #[arg(long)]
    pub judge_url: Option<String>,
    /// The judge's model name.
    #[arg(long, default_value = "judge", requires = "judge_url")]
    pub judge_model: String,
    /// The environment variable holding the judge's API key.
    #[arg(long, default_value = "OPENAI_API_KEY", requires = "judge_url")]
    pub judge_key_env: String,
}

const METRICS: [&str; 3] = ["sg_iou", "entity_iou", "relation_iou"];

/// Runs the command.
pub fn run(registry: &Registry, args: EvalArgs) -> Result<i32> {
    let records = rlrig_sg::read_records(&args.prompts)?;
    if records.is_empty() {
        return Err(refused(anyhow::anyhow!(
            "{}: no records",
            args.prompts.display()
        )));
    }
    let judge = args
        .judge_url
        .as_ref()
        .map(|url| {
            rlrig_judge::JudgeClient::new(rlrig_judge::JudgeSettings {
                base_url: url.clone(),
                model: args.judge_model.clone(),
                api_key_env: args.judge_key_env.clone(),
                ..rlrig_judge::JudgeSettings::default()
            })
            .map_err(|e| refused(anyhow::anyhow!("--judge-url: {e}")))
        })
        .transpose()?;
    let problems: Vec<String> = records
        .iter()
        .enumerate()
        .filter(|_| judge.is_none())
        .filter_map(|(i, g)| {
            WorldGraph::from_scene_graph(g).err().map(|e| {
                let name = g
                    .img_id
                    .as_deref()
                    .map_or(String::new(), |id| format!(" ({id})"));
                format!("record {}{name}: {e}", i + 1)
            })
        })
        .collect();
    if !problems.is_empty() {
        let shown = problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ");
        let more = problems.len().saturating_sub(20);
        return Err(refused(anyhow::anyhow!(
            "{}: {} of {} records are outside the built-in world's vocabulary, which the oracle judge needs:\n  {shown}{}",
            args.prompts.display(),
            problems.len(),
            records.len(),
            if more > 0 {
                format!("\n  … and {more} more")
            } else {
                String::new()
            }
        )));
    }
    let mut sets = args.sets.clone();
    sets.push("prompts.source=\"file\"".into());
    sets.push(format!(
        "prompts.path={:?}",
        args.prompts.display().to_string()
    ));
    sets.push(format!("prompts.count={}", records.len()));
    let (metrics, dir) = crate::run::run_with(
        registry,
        &RunOptions {
            flow: args.flow.clone(),
            sets,
            overwrite: args.overwrite,
        },
        Reporting {
            table_to_stderr: args.json,
        },
    )?;
    let (lines, rounds) = match &judge {
        None => {
            let path = dir.join("scores.jsonl");
            let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
                .with_context(|| path.display().to_string())?
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?;
            (lines, metrics.rounds.len())
        }
        Some(judge) => {
            let max_rounds = rlrig_flow::load(&args.flow, &args.sets)?
                .flow
                .cycle
                .max_rounds;
            judge_run(judge, &dir, max_rounds)?
        }
    };
    let summarise = |pick: &dyn Fn(&serde_json::Value) -> Option<serde_json::Value>| {
        let mut out = serde_json::Map::new();
        for m in METRICS {
            let v: Vec<f64> = lines
                .iter()
                .filter_map(|l| pick(l).and_then(|s| s[m].as_f64()))
                .collect();
            if v.is_empty() {
                continue;
            }
            let (mean, lo, hi) = bootstrap_ci(&v, args.resamples.max(100), 0);
            out.insert(
                m.into(),
                serde_json::json!({"mean": mean, "ci95": [lo, hi], "n": v.len()}),
            );
        }
        serde_json::Value::Object(out)
    };
    let per_round: Vec<serde_json::Value> = (0..rounds)
        .map(|r| summarise(&|l| l["rounds"].get(r).cloned()))
        .collect();
    let final_ = summarise(&|l| Some(l["final"].clone()).filter(|f| f.is_object()));
    let report = serde_json::json!({
        "flow": args.flow, "prompts": args.prompts, "records": records.len(),
        "judge": args.judge_url.as_ref().map_or("oracle".to_string(), |u| format!("{} at {u}", args.judge_model)),
        "done": metrics.done, "failed": metrics.failed,
        "rounds": per_round, "final": final_,
    });
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let code = crate::cli::all_done(metrics.failed, metrics.done + metrics.failed, &dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return code;
    }
    println!(
        "\n95 % bootstrap confidence intervals ({} resamples over prompts):",
        args.resamples
    );
    println!(
        "{:<8} {:>24} {:>24} {:>24}",
        "round", "SG-IoU", "Entity-IoU", "Relation-IoU"
    );
    let cell = |s: &serde_json::Value, m: &str| {
        let x = &s[m];
        match (
            x["mean"].as_f64(),
            x["ci95"][0].as_f64(),
            x["ci95"][1].as_f64(),
        ) {
            (Some(a), Some(lo), Some(hi)) => format!("{a:.4} [{lo:.4}, {hi:.4}]"),
            _ => "-".into(),
        }
    };
    let rows = per_round
        .iter()
        .enumerate()
        .map(|(r, s)| (r.to_string(), s))
        .chain(std::iter::once(("final".to_string(), &final_)));
    for (label, s) in rows {
        println!(
            "{label:<8} {:>24} {:>24} {:>24}",
            cell(s, "sg_iou"),
            cell(s, "entity_iou"),
            cell(s, "relation_iou")
        );
    }
    code
}

/// Judges every stored trajectory of a run with a VLM: each round's image on the line and the
/// answer; writes `judge_scores.jsonl` (the shape of `scores.jsonl`). Returns the lines and the
/// number of rounds.
fn judge_run(
    judge: &rlrig_judge::JudgeClient,
    dir: &std::path::Path,
    max_rounds: u32,
) -> Result<(Vec<serde_json::Value>, usize)> {
    let store = rlrig_store::TrajectoryStore::open(&dir.join("store"))
        .context("judging needs the run's trajectory store (store.trajectories = true)")?;
    let line = |s: &rlrig_sg::IouScores| serde_json::json!({"sg_iou": s.sg_iou, "entity_iou": s.entity_iou, "relation_iou": s.relation_iou});
    let mut lines = Vec::new();
    for (_, t) in store.committed_after(None, usize::MAX)? {
        let Some(answer) = t.answer() else { continue };
        let images: Vec<_> = t.images().collect();
        // Each distinct image is judged once.
        let mut judged: std::collections::HashMap<usize, rlrig_sg::IouScores> = Default::default();
        let mut per_round = Vec::new();
        for r in 0..=max_rounds {
            if let Some((step, _, img)) = images.iter().rev().find(|(_, round, _)| *round <= r) {
                if !judged.contains_key(step) {
                    judged.insert(*step, judge.score(img, &t.prompt)?);
                }
                per_round.push(line(&judged[step]));
            }
        }
        let final_ = match t.outcome {
            rlrig_contract::Outcome::Done { answer: step, .. } if judged.contains_key(&step) => {
                judged[&step]
            }
            _ => judge.score(answer, &t.prompt)?,
        };
        lines.push(serde_json::json!({"id": t.id, "rounds": per_round, "final": line(&final_)}));
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("judge_scores.jsonl"), text)?;
    Ok((lines, max_rounds as usize + 1))
}
