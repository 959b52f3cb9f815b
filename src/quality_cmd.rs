//! `rlrig quality`: measures the trained models against the oracle on held-out prompts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rlrig_contract::{Diffuser, GenerateRequest};
use rlrig_models::pretrain::EVAL_SEED;
use rlrig_models::quality::{self, EditorQuality};
use rlrig_models::vlm::{CheckerNet, PolicyNet};
use rlrig_models::vlm_train::{self, VlmData};
use rlrig_models::{NeuralDiffuser, NeuralEditor, NeuralSettings, weights};
use rlrig_world::{Canvas, sample};

/// Which model to measure.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// Per edit type: success and context preservation, on clean renders and Diffuser images.
    Editor,
    /// Verdict accuracy and score correlation vs the oracle, on generated images.
    Checker,
    /// Parse rate and problem targeting of the edit prompts, on generated images.
    Policy,
}

/// `rlrig quality` arguments.
#[derive(clap::Args)]
pub struct QualityArgs {
    /// The model to measure.
    which: Which,
    /// Held-out prompts (seed 1000, as the evaluation flows).
    #[arg(long, default_value_t = 500)]
    n: usize,
    /// Device: `cpu`, `wgpu`, `wgpu:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The Diffuser's weights (its images are the generated test set).
    #[arg(long, default_value = "weights/diffuser.safetensors")]
    diffuser: PathBuf,
    /// The Editor's weights (measured, or editing half of the Checker's and Policy's test
    /// images when the file exists).
    #[arg(long, default_value = "weights/editor.safetensors")]
    editor: PathBuf,
    /// The Checker's weights.
    #[arg(long, default_value = "weights/checker.safetensors")]
    checker: PathBuf,
    /// The Policy's weights.
    #[arg(long, default_value = "weights/policy.safetensors")]
    policy: PathBuf,
    /// Guidance of the Diffuser's images.
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Also writes the numbers as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn editor_table(name: &str, q: &EditorQuality) {
    println!("{name}:");
    println!(
        "  {:<10} {:>6} {:>9} {:>9}",
        "edit", "edits", "success", "context"
    );
    for (kind, t) in q.per_type.iter().chain([(&"all".to_string(), &q.all)]) {
        println!(
            "  {kind:<10} {:>6} {:>9.3} {:>9.3}",
            t.edits, t.success, t.context_preserved
        );
    }
}

/// Runs `rlrig quality`.
pub fn run(args: QualityArgs) -> Result<i32> {
    let canvas = Canvas::new(32)?;
    let diffuser_settings = NeuralSettings {
        guidance: args.guidance,
        ..NeuralSettings::with_weights(&args.diffuser)
    };
    let started = std::time::Instant::now();
    let value = match args.which {
        Which::Editor => {
            let mut editor =
                NeuralEditor::new(&NeuralSettings::with_weights(&args.editor), &args.device)
                    .map_err(anyhow::Error::msg)?;
            let clean = quality::clean_renders(&canvas, args.n);
            let mut diffuser = NeuralDiffuser::new(&diffuser_settings, &args.device)
                .map_err(anyhow::Error::msg)?;
            let requests: Vec<GenerateRequest> = (0..args.n as u64)
                .map(|i| GenerateRequest {
                    prompt: sample(&canvas, EVAL_SEED, i).graph,
                    seed: i,
                    explore: false,
                })
                .collect();
            let mut generated = Vec::new();
            for chunk in requests.chunks(64) {
                generated.extend(diffuser.generate(chunk).map_err(|e| anyhow::anyhow!(e.0))?);
            }
            let on_clean = quality::editor_quality(&mut editor, &clean, &canvas)
                .map_err(anyhow::Error::msg)?;
            let on_generated = quality::editor_quality(&mut editor, &generated, &canvas)
                .map_err(anyhow::Error::msg)?;
            editor_table("Editor on clean renders", &on_clean);
            editor_table("Editor on the Diffuser's images", &on_generated);
            serde_json::json!({ "clean": on_clean, "generated": on_generated })
        }
        Which::Checker | Which::Policy => {
            let data = VlmData {
                diffuser: args.diffuser.clone(),
                editor: args.editor.is_file().then(|| args.editor.clone()),
                guidance: args.guidance,
                ..VlmData::default()
            };
            eprintln!(
                "generating {} test images ({}{})…",
                args.n,
                args.diffuser.display(),
                data.editor.as_ref().map_or(String::new(), |e| format!(
                    ", half edited by {}",
                    e.display()
                ))
            );
            let pool = vlm_train::generate_pool(&data, args.n, EVAL_SEED, &canvas, &args.device)
                .map_err(anyhow::Error::msg)?;
            let device = rlrig_models::device::select(&args.device)?;
            let checker = || {
                weights::load_model::<CheckerNet>(&args.checker, &device)
                    .with_context(|| "loading the Checker")
            };
            if let Which::Checker = args.which {
                let a = vlm_train::checker_agreement(&checker()?, pool.scenes())
                    .map_err(anyhow::Error::msg)?;
                println!("Checker vs the oracle on {} generated images:", a.scenes);
                println!("  item verdict accuracy      {:.3}", a.item_accuracy);
                println!("  relation verdict accuracy  {:.3}", a.relation_accuracy);
                println!("  violated relations found   {:.3}", a.violated_recall);
                println!("  reflection word for word   {:.3}", a.reflection_exact);
                println!(
                    "  score vs oracle rel. acc.  r = {:.3}",
                    a.score_correlation
                );
                println!(
                    "  score vs oracle score      r = {:.3}",
                    a.score_oracle_correlation
                );
                println!("  score mean abs. error      {:.3}", a.score_mae);
                println!(
                    "  scene-graph triples        precision {:.3}, recall {:.3}",
                    a.triple_precision, a.triple_recall
                );
                println!(
                    "  SG-IoU estimate vs oracle  r = {:.3}, mean abs. error {:.3} (means {:.3} / {:.3})",
                    a.sg_iou_correlation, a.sg_iou_mae, a.sg_iou_mean.0, a.sg_iou_mean.1
                );
                serde_json::to_value(&a)?
            } else {
                let policy = weights::load_model::<PolicyNet>(&args.policy, &device)
                    .with_context(|| "loading the Policy")?;
                let with_oracle = quality::policy_quality(&policy, None, pool.scenes())
                    .map_err(anyhow::Error::msg)?;
                let with_checker = if args.checker.is_file() {
                    Some(
                        quality::policy_quality(&policy, Some(&checker()?), pool.scenes())
                            .map_err(anyhow::Error::msg)?,
                    )
                } else {
                    None
                };
                println!(
                    "Policy on {} generated images ({} with a problem, {} with only violated relations):",
                    with_oracle.scenes, with_oracle.with_problem, with_oracle.with_violation_only
                );
                println!(
                    "  {:<22} {:>8} {:>15} {:>17}",
                    "reflection from", "parses", "targets problem", "targets violated"
                );
                for (name, q) in [
                    ("the oracle", Some(&with_oracle)),
                    ("the Checker", with_checker.as_ref()),
                ] {
                    if let Some(q) = q {
                        println!(
                            "  {name:<22} {:>8.3} {:>15.3} {:>17.3}",
                            q.parse_rate, q.targets_problem_rate, q.targets_violated_relation_rate
                        );
                    }
                }
                serde_json::json!({ "oracle_reflection": with_oracle, "checker_reflection": with_checker })
            }
        }
    };
    eprintln!(
        "measured in {:.0} s on {}",
        started.elapsed().as_secs_f64(),
        args.device
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(0)
}
