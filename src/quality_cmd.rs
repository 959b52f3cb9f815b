//! `rlrig quality`: measures the trained models against the oracle on held-out prompts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rlrig_models::quality::{self, EditorQuality, QualityInputs};

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
    let inputs = QualityInputs {
        n: args.n,
        device: args.device.clone(),
        diffuser: args.diffuser.clone(),
        guidance: args.guidance,
        editor: args.editor.clone(),
        checker: args.checker.clone(),
        policy: args.policy.clone(),
    };
    let started = std::time::Instant::now();
    let value = match args.which {
        Which::Editor => {
            let r = quality::measure_editor(&inputs).map_err(anyhow::Error::msg)?;
            editor_table("Editor on clean renders", &r.clean);
            editor_table("Editor on the Diffuser's images", &r.generated);
            serde_json::to_value(&r)?
        }
        Which::Checker | Which::Policy => {
            eprintln!(
                "generating {} test images ({}{})…",
                args.n,
                args.diffuser.display(),
                if args.editor.is_file() {
                    format!(", half edited by {}", args.editor.display())
                } else {
                    String::new()
                }
            );
            if let Which::Checker = args.which {
                let a = quality::measure_checker(&inputs).map_err(anyhow::Error::msg)?;
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
                let r = quality::measure_policy(&inputs).map_err(anyhow::Error::msg)?;
                let with_oracle = &r.oracle_reflection;
                println!(
                    "Policy on {} generated images ({} with a problem, {} with only violated relations):",
                    with_oracle.scenes, with_oracle.with_problem, with_oracle.with_violation_only
                );
                println!(
                    "  {:<22} {:>8} {:>15} {:>17}",
                    "reflection from", "parses", "targets problem", "targets violated"
                );
                for (name, q) in [
                    ("the oracle", Some(with_oracle)),
                    ("the Checker", r.checker_reflection.as_ref()),
                ] {
                    if let Some(q) = q {
                        println!(
                            "  {name:<22} {:>8.3} {:>15.3} {:>17.3}",
                            q.parse_rate, q.targets_problem_rate, q.targets_violated_relation_rate
                        );
                    }
                }
                serde_json::to_value(&r)?
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
