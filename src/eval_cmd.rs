//! `rlrig eval FLOW --prompts FILE`: a flow over LAION-SG prompts (JSON or JSONL), judged by
//! the oracle, with 95 % bootstrap confidence intervals of SG-IoU, Entity-IoU, Relation-IoU
//! and relation accuracy per round and for the final answers (a table, `eval.json` in the run
//! directory, or JSON on stdout).
//!
//! The oracle judges only the built-in world: every record must be in its vocabulary (shapes,
//! colours, the four relations), else the command refuses before running, listing each record's
//! problems. Malformed records are refused by the LAION-SG reader with their line and field.
//! With `--judge-url`, a VLM behind an OpenAI-compatible endpoint judges instead (crate
//! `rlrig-judge`), each round's image and the answer of every stored trajectory; a trajectory
//! that stops early counts its last image for the later rounds. An image the judge cannot score
//! (no usable answer after its attempts) fails that judgement only: it is counted, per round and
//! final, next to the means, and its error is kept in `judge_scores.jsonl`.
//!
//! `rlrig eval RUN_DIR` judges a finished run's stored trajectories again, running nothing: the
//! prompts are the trajectories' own, the judge the VLM of `--judge-url` (or, without it, the
//! oracle's scores the run recorded in `scores.jsonl`).
//!
//! With `--json`, stdout holds the JSON document only; the run's progress and tables go to
//! stderr. Exit codes are `rlrig run`'s: some failed trajectories, or some failed judgements,
//! give [`crate::outcome::exit::TRAJECTORIES_FAILED`] after the report is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlrig_engine::Registry;
use rlrig_world::WorldGraph;

use crate::compare_cmd::bootstrap_ci;
use crate::outcome::{exit, refused};
use crate::overrides::set_string;
use crate::run::Reporting;
use crate::scores::{Judgement, LineOutcome, METRICS, ScoreLine, Scores};

/// Options of `rlrig eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The flow to run over --prompts (e.g. flows/infer.toml), or a run directory (e.g.
    /// runs/infer) whose stored trajectories are judged again without running anything.
    #[arg(value_name = "FLOW|RUN_DIR")]
    pub flow: PathBuf,
    /// LAION-SG records (`.json` array or `.jsonl`); needed with a flow, refused with a run
    /// directory (whose prompts are its stored trajectories').
    #[arg(long)]
    pub prompts: Option<PathBuf>,
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
    /// The environment variable holding the judge's API key (unset: no Authorization header).
    #[arg(long, default_value = "OPENAI_API_KEY", requires = "judge_url")]
    pub judge_key_env: String,
    /// Timeout of one request to the judge, milliseconds.
    #[arg(long, default_value_t = rlrig_judge::JudgeSettings::default().timeout_ms, requires = "judge_url")]
    pub judge_timeout_ms: u64,
    /// Requests per image, retries included, before its judgement fails.
    #[arg(long, default_value_t = rlrig_judge::JudgeSettings::default().max_attempts, requires = "judge_url")]
    pub judge_max_attempts: u32,
    /// Wait before the judge's first retry, milliseconds; doubled after each.
    #[arg(long, default_value_t = rlrig_judge::JudgeSettings::default().backoff_ms, requires = "judge_url")]
    pub judge_backoff_ms: u64,
}

/// Images judged and images whose judgement failed.
type Counts = (usize, usize);

/// What was judged: per trajectory a line (`scores.jsonl`'s shape, a judgement that failed as
/// `{"error": …}`), and where it came from.
struct Judged {
    dir: PathBuf,
    flow: PathBuf,
    prompts: Option<PathBuf>,
    /// Prompts: the records given, or the trajectories stored.
    records: usize,
    done: usize,
    failed: usize,
    lines: Vec<ScoreLine>,
    rounds: usize,
    /// Distinct images the VLM judge scored, and those it could not (`None`: the oracle).
    images: Option<Counts>,
}

/// Runs the command.
pub fn run(registry: &Registry, args: EvalArgs) -> Result<i32> {
    let judge = args
        .judge_url
        .as_ref()
        .map(|url| {
            rlrig_judge::JudgeClient::new(rlrig_judge::JudgeSettings {
                base_url: url.clone(),
                model: args.judge_model.clone(),
                api_key_env: args.judge_key_env.clone(),
                timeout_ms: args.judge_timeout_ms,
                max_attempts: args.judge_max_attempts,
                backoff_ms: args.judge_backoff_ms,
                ..rlrig_judge::JudgeSettings::default()
            })
            .map_err(|e| refused(anyhow::anyhow!("the judge's options (--judge-*): {e}")))
        })
        .transpose()?;
    let judged = if args.flow.is_dir() {
        stored(&args, judge.as_ref())?
    } else {
        run_flow(registry, &args, judge.as_ref())?
    };
    report(&args, &judged)
}

/// Runs the flow over `--prompts`, then judges what it stored.
fn run_flow(
    registry: &Registry,
    args: &EvalArgs,
    judge: Option<&rlrig_judge::JudgeClient>,
) -> Result<Judged> {
    let prompts = args.prompts.as_ref().ok_or_else(|| {
        refused(anyhow::anyhow!(
            "rlrig eval {} needs --prompts FILE (a run directory instead is judged from its stored trajectories)",
            args.flow.display()
        ))
    })?;
    let records = rlrig_sg::read_records(prompts)?;
    if records.is_empty() {
        return Err(refused(anyhow::anyhow!(
            "{}: no records",
            prompts.display()
        )));
    }
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
            prompts.display(),
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
    sets.push(set_string("prompts.source", "file"));
    sets.push(set_string("prompts.path", &prompts.display().to_string()));
    sets.push(format!("prompts.count={}", records.len()));
    let loaded = crate::run::load_checked(registry, &args.flow, &sets)?;
    let (metrics, dir) = crate::run::run_loaded(
        registry,
        &loaded,
        args.overwrite,
        Reporting {
            table_to_stderr: args.json,
        },
    )?;
    let (lines, rounds, images) = match judge {
        None => (read_scores(&dir)?, metrics.rounds.len(), None),
        Some(judge) => judge_run(judge, &dir, loaded.flow.cycle.max_rounds)?,
    };
    Ok(Judged {
        dir,
        flow: args.flow.clone(),
        prompts: Some(prompts.clone()),
        records: records.len(),
        done: metrics.done,
        failed: metrics.failed,
        lines,
        rounds,
        images,
    })
}

/// Judges a run directory's stored trajectories (or reads the oracle's scores of them).
fn stored(args: &EvalArgs, judge: Option<&rlrig_judge::JudgeClient>) -> Result<Judged> {
    let dir = &args.flow;
    for (given, what) in [
        (args.prompts.is_some(), "--prompts"),
        (!args.sets.is_empty(), "--set"),
        (args.overwrite, "--overwrite"),
    ] {
        if given {
            return Err(refused(anyhow::anyhow!(
                "{what} applies to running a flow; {} is a run directory, judged as it was stored",
                dir.display()
            )));
        }
    }
    let store = dir.join("store");
    if !store.is_dir() {
        return Err(refused(anyhow::anyhow!(
            "{} is not a run directory with stored trajectories (no store/ in it)",
            dir.display()
        )));
    }
    let (done, failed) = crate::run::count_outcomes(&store)?;
    let (lines, rounds, images) = match judge {
        Some(judge) => {
            // The rounds the flow asked for (flow.toml is the flow as run), else the last
            // round any trajectory reached.
            let max_rounds = match rlrig_flow::load(&dir.join("flow.toml"), &[]) {
                Ok(loaded) => loaded.flow.cycle.max_rounds,
                Err(_) => stored_max_round(&store)?,
            };
            judge_run(judge, dir, max_rounds)?
        }
        None => {
            let path = dir.join("scores.jsonl");
            if !path.is_file() {
                return Err(refused(anyhow::anyhow!(
                    "{} has no oracle scores (scores.jsonl): its prompts are outside the built-in world's vocabulary; judge it with --judge-url",
                    dir.display()
                )));
            }
            let lines = read_scores(dir)?;
            let rounds = lines.iter().map(|l| l.rounds.len()).max().unwrap_or(0);
            (lines, rounds, None)
        }
    };
    Ok(Judged {
        dir: dir.clone(),
        flow: dir.join("flow.toml"),
        prompts: None,
        records: done + failed,
        done,
        failed,
        lines,
        rounds,
        images,
    })
}

fn stored_max_round(store: &Path) -> Result<u32> {
    let store = rlrig_store::TrajectoryStore::open(store)?;
    Ok(store
        .committed_after(None, usize::MAX)?
        .iter()
        .flat_map(|(_, t)| t.images().map(|(_, r, _)| r).collect::<Vec<_>>())
        .max()
        .unwrap_or(0))
}

fn read_scores(dir: &Path) -> Result<Vec<ScoreLine>> {
    crate::scores::read(&dir.join("scores.jsonl"))
}

/// Means with confidence intervals of the scores `pick` finds in each line, and how many
/// judgements it found and how many of them failed.
fn summarise(
    lines: &[ScoreLine],
    resamples: usize,
    pick: &dyn Fn(&ScoreLine) -> Option<&Judgement>,
) -> serde_json::Value {
    let picked: Vec<&Judgement> = lines.iter().filter_map(pick).collect();
    let scored: Vec<&Scores> = picked.iter().filter_map(|j| j.scores()).collect();
    let failed = picked.len() - scored.len();
    let mut out = serde_json::Map::new();
    out.insert("judged".into(), scored.len().into());
    out.insert("failed".into(), failed.into());
    for m in METRICS {
        let v: Vec<f64> = scored.iter().filter_map(|s| s.metric(m)).collect();
        if v.is_empty() {
            continue;
        }
        let (mean, lo, hi) = bootstrap_ci(&v, resamples.max(100), 0);
        out.insert(
            m.into(),
            serde_json::json!({"mean": mean, "ci95": [lo, hi], "n": v.len()}),
        );
    }
    serde_json::Value::Object(out)
}

/// Writes `eval.json` (and report.html again, which shows it), prints the table or the JSON,
/// and says how the command exits.
fn report(args: &EvalArgs, j: &Judged) -> Result<i32> {
    let per_round: Vec<serde_json::Value> = (0..j.rounds)
        .map(|r| summarise(&j.lines, args.resamples, &|l| l.rounds.get(r)))
        .collect();
    let final_ = summarise(&j.lines, args.resamples, &|l| l.final_.as_ref());
    let judge = args.judge_url.as_ref().map_or("oracle".to_string(), |u| {
        format!("{} at {u}", args.judge_model)
    });
    let report = serde_json::json!({
        "flow": j.flow, "prompts": j.prompts, "run_dir": j.dir,
        "records": j.records,
        "judge": judge,
        "done": j.done, "failed": j.failed,
        "images": j.images.map(|(judged, failed)| serde_json::json!({"judged": judged, "failed": failed})),
        "rounds": per_round, "final": final_,
    });
    std::fs::write(
        j.dir.join("eval.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    if let Err(e) = crate::report::write(&j.dir) {
        eprintln!("warning: report.html: {e:#}");
    }
    let table = table(&judge, args.resamples, &per_round, &final_);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    let (ok, bad) = j.images.unwrap_or_default();
    if bad > 0 {
        let what = format!(
            "the judge failed on {bad} of {} images; the means cover the {ok} it scored, each error is in {}",
            ok + bad,
            j.dir.join("judge_scores.jsonl").display()
        );
        if j.failed == 0 {
            eprintln!("error: {what}");
            return Ok(exit::TRAJECTORIES_FAILED);
        }
        eprintln!("note: {what}");
    }
    crate::outcome::all_done(j.failed, j.done + j.failed, &j.dir)
}

/// The table of a report: who judged, then per round and final the judgements counted and the
/// means with their intervals.
fn table(
    judge: &str,
    resamples: usize,
    per_round: &[serde_json::Value],
    final_: &serde_json::Value,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\njudged by {}: 95 % bootstrap confidence intervals ({resamples} resamples over prompts)",
        if judge == "oracle" {
            "the oracle"
        } else {
            judge
        }
    );
    let _ = writeln!(
        out,
        "{:<6} {:>6} {:>6} {:>24} {:>24} {:>24} {:>24}",
        "round", "judged", "failed", "SG-IoU", "Entity-IoU", "Relation-IoU", "relation accuracy"
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
        .chain(std::iter::once(("final".to_string(), final_)));
    for (label, s) in rows {
        let _ = writeln!(
            out,
            "{label:<6} {:>6} {:>6} {:>24} {:>24} {:>24} {:>24}",
            s["judged"].as_u64().unwrap_or(0),
            s["failed"].as_u64().unwrap_or(0),
            cell(s, "sg_iou"),
            cell(s, "entity_iou"),
            cell(s, "relation_iou"),
            cell(s, "relation_accuracy")
        );
    }
    out
}

/// Judges every stored trajectory of a run with a VLM: each round's image on the line and the
/// answer, each distinct image once; writes `judge_scores.jsonl` (the shape of `scores.jsonl`,
/// a judgement that failed as `{"error": …}`). Returns the lines, the number of rounds and the
/// distinct images judged and failed.
fn judge_run(
    judge: &rlrig_judge::JudgeClient,
    dir: &Path,
    max_rounds: u32,
) -> Result<(Vec<ScoreLine>, usize, Option<Counts>)> {
    let store = rlrig_store::TrajectoryStore::open(&dir.join("store"))
        .context("judging needs the run's trajectory store (store.trajectories = true)")?;
    let score = |img: &rlrig_contract::Image, truth: &rlrig_sg::SceneGraph| match judge
        .extract(img, truth)
    {
        Ok(x) => Judgement::Scored(Scores::new(
            &rlrig_sg::score(truth, &x),
            rlrig_sg::relation_accuracy(truth, &x),
        )),
        Err(e) => Judgement::Failed {
            error: e.to_string(),
        },
    };
    let mut lines = Vec::new();
    let mut counted = Vec::new();
    for (_, t) in store.committed_after(None, usize::MAX)? {
        let Some(answer) = t.answer() else {
            lines.push(ScoreLine {
                id: t.id,
                prompt: Some(t.prompt.prompt()),
                scene_graph: None,
                outcome: LineOutcome::Failed,
                error: None,
                rounds: Vec::new(),
                final_: None,
            });
            continue;
        };
        let images: Vec<_> = t.images().collect();
        let mut judged: HashMap<usize, Judgement> = HashMap::new();
        let mut per_round = Vec::new();
        for r in 0..=max_rounds {
            if let Some((step, _, img)) = images.iter().rev().find(|(_, round, _)| *round <= r) {
                let s = judged.entry(*step).or_insert_with(|| score(img, &t.prompt));
                per_round.push(s.clone());
            }
        }
        let final_ = match t.outcome {
            rlrig_contract::Outcome::Done { answer: step, .. } if judged.contains_key(&step) => {
                judged[&step].clone()
            }
            _ => {
                let s = score(answer, &t.prompt);
                counted.push(s.clone());
                s
            }
        };
        counted.extend(judged.into_values());
        lines.push(ScoreLine {
            id: t.id,
            prompt: Some(t.prompt.prompt()),
            scene_graph: None,
            outcome: LineOutcome::Done,
            error: None,
            rounds: per_round,
            final_: Some(final_),
        });
    }
    let failed = counted.iter().filter(|s| s.scores().is_none()).count();
    let mut text = Vec::new();
    for l in &lines {
        crate::scores::write_line(&mut text, l)?;
    }
    std::fs::write(dir.join("judge_scores.jsonl"), text)?;
    Ok((
        lines,
        max_rounds as usize + 1,
        Some((counted.len() - failed, failed)),
    ))
}
