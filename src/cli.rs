//! The `rlrig` command line, reusable by programs that register their own actor kinds.

use std::path::PathBuf;

use clap::Parser;
use rlrig_engine::Registry;

use crate::outcome::all_done;
pub use crate::outcome::{Interrupted, Refused, TrajectoriesFailed, exit, exit_code, refused};
use crate::run::{Reporting, run_loaded};
use crate::world_cmd;

/// Whether the error is stdout's reader having gone (`rlrig trajectories ls RUN | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// rlrig: text-to-image generation that reflects on its own images (RL-RIG), as an
/// actor-model dataflow framework.
#[derive(Parser)]
#[command(name = "rlrig", version, about, propagate_version = true, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Runs a flow: every prompt through the reflect-edit cycle, into <run_dir>/<name>/.
    #[command(after_help = exit::HELP)]
    Run {
        /// The flow file, e.g. flows/infer.toml, or a run directory (its flow.toml, as run), e.g.
        /// `rlrig run runs/train --resume`.
        flow: PathBuf,
        /// Overrides a value of the flow: --set cycle.max_rounds=5 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Replaces the run directory if it exists.
        #[arg(long)]
        overwrite: bool,
        /// Continues the flow's run from its last checkpoint (pre-training and training flows).
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
    },
    /// Trains the flow's `[train].actor` (the Policy, or the Editor in phase 2) from a run's
    /// stored trajectories only (off-policy GRPO, no rollouts), with the `[train]` settings of
    /// FLOW; writes into FLOW's run directory.
    Replay {
        /// The source run directory (holding `store/`), e.g. runs/train.
        run: PathBuf,
        /// The flow whose trained actor's weights and `[train]` settings are used, e.g.
        /// flows/train.toml.
        #[arg(long)]
        flow: PathBuf,
        /// Overrides a value of the flow (repeatable), e.g. --set name=train-replay.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Replaces the output run directory if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Compares two runs over the same prompts, prompt by prompt: final oracle scores and paired
    /// bootstrap confidence intervals of the difference.
    #[command(after_help = exit::HELP)]
    Compare(crate::compare_cmd::CompareArgs),
    /// Runs a flow over LAION-SG prompts (JSON or JSONL), or takes a finished run directory's
    /// stored trajectories, and reports SG-IoU, Entity-IoU, Relation-IoU and relation accuracy
    /// per round and final with bootstrap confidence intervals, judged by the oracle or by a
    /// VLM (--judge-url).
    ///
    /// `rlrig eval FLOW --prompts FILE` runs the flow, then judges it; `rlrig eval RUN_DIR
    /// --judge-url URL` judges a run's stored trajectories again without running anything.
    /// Either way `eval.json` goes into the run directory (and into its report.html); a judge's
    /// per-image scores and errors into `judge_scores.jsonl`.
    #[command(after_help = exit::HELP)]
    Eval(crate::eval_cmd::EvalArgs),
    /// Writes RUN/report.html (every run writes it at its end too): metrics, training curves,
    /// each prompt's image chain with reflections and edit prompts, in one self-contained file.
    Report {
        /// The run directory, e.g. runs/infer.
        run: PathBuf,
    },
    /// Checks a flow without running anything: format, references, cycle order, kinds, settings.
    ///
    /// Takes what `rlrig run` takes: a flow file, or a run directory (its flow.toml, as run).
    Validate {
        /// The flow file, e.g. flows/infer.toml, or a run directory (its flow.toml, as run), e.g.
        /// runs/infer.
        flow: PathBuf,
        /// Overrides a value of the flow (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Prints the JSON Schema of the flow format (committed as flows/flow.schema.json).
    Schema,
    /// Lists the actor kinds a flow may name.
    Kinds,
    /// Hosts actors for flows run on other machines (`node = "..."` in a flow), until
    /// SIGINT/SIGTERM. The shared secret comes from --secret-file or $RLRIG_CLUSTER_SECRET;
    /// traffic is mutual TLS (--tls-cert, --tls-key, --tls-ca) unless --plain-tcp.
    Node(crate::node_cmd::NodeArgs),
    /// Measures a trained model against the oracle on held-out prompts (Editor: success per
    /// edit type and context preservation; Checker: agreement; Policy: parse and targeting).
    Quality(crate::quality_cmd::QualityArgs),
    /// What a run's trajectory store holds: list, show one, export PNG chains and JSONL.
    #[command(subcommand)]
    Trajectories(crate::trajectories_cmd::TrajectoriesCommand),
    /// The built-in world of spatial scenes: sample, render, parse and judge images.
    #[command(subcommand)]
    World(world_cmd::WorldCommand),
}

/// Parses the command line and runs it with `registry`'s actor kinds; returns the exit code.
pub fn main(registry: Registry) -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // ractor_cluster warns of every closed session, the normal end of a run too;
                // a lost node is reported by the engine.
                "warn,ractor_cluster=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            flow,
            sets,
            overwrite,
            resume,
        } => run_any(&registry, flow, sets, overwrite, resume),
        Command::Replay {
            run,
            flow,
            sets,
            overwrite,
        } => crate::replay::run(&registry, &run, &flow, &sets, overwrite).map(|_| 0),
        Command::Compare(args) => crate::compare_cmd::run(args),
        Command::Report { run } => crate::report::write(&run).map(|p| {
            println!("{}", p.display());
            0
        }),
        Command::Eval(args) => crate::eval_cmd::run(&registry, args),
        Command::Validate { flow, sets } => validate(&registry, &flow, &sets),
        Command::Schema => {
            print!("{}", rlrig_flow::schema());
            Ok(0)
        }
        Command::Kinds => (|| -> anyhow::Result<i32> {
            let kinds: Vec<_> = registry
                .kinds()
                .map(|(kind, role, about)| {
                    let role = role.map_or("any role".to_string(), |r| r.to_string());
                    (kind.to_string(), role, about.to_string())
                })
                .collect();
            let width =
                |f: fn(&(String, String, String)) -> usize| kinds.iter().map(f).max().unwrap_or(0);
            let (kw, rw) = (
                width(|k| k.0.chars().count()),
                width(|k| k.1.chars().count()),
            );
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<kw$}  {:<rw$}  WHAT", "KIND", "ROLE")?;
            for (kind, role, about) in &kinds {
                writeln!(out, "{kind:<kw$}  {role:<rw$}  {about}")?;
            }
            Ok(0)
        })(),
        Command::World(cmd) => world_cmd::run(cmd),
        Command::Node(args) => crate::node_cmd::run(registry, args),
        Command::Quality(args) => crate::quality_cmd::run(args),
        Command::Trajectories(cmd) => crate::trajectories_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = crate::outcome::hint(&e) {
                eprintln!("hint: {hint}");
            }
            exit_code(&e)
        }
    }
}

fn run_any(
    registry: &Registry,
    flow: PathBuf,
    sets: Vec<String>,
    overwrite: bool,
    resume: bool,
) -> anyhow::Result<i32> {
    // A run directory stands for the flow it ran (`rlrig run runs/train --resume`).
    let flow = crate::run::flow_file(&flow);
    let text = std::fs::read_to_string(&flow)
        .map_err(|e| refused(anyhow::anyhow!("{}: {e}", flow.display())))?;
    if rlrig_flow::flow_kind(&text) == rlrig_flow::FlowKind::Pretrain {
        return crate::pretrain_cmd::run_str(&flow, &text, &sets, resume, overwrite)
            .map(|_| exit::OK);
    }
    // Loaded and checked once, here; the run takes it as it is.
    let loaded = crate::run::load_checked_str(registry, &flow, &text, &sets)?;
    if loaded.flow.train.is_some() {
        let (_, dir) =
            crate::train_cmd::run(registry, &loaded, overwrite, resume).map_err(|e| {
                if crate::run::was_interrupted() && !e.chain().any(|c| c.is::<Interrupted>()) {
                    e.context(Interrupted("interrupted".into()))
                } else {
                    e
                }
            })?;
        let (done, failed) = crate::run::count_outcomes(&dir.join("store"))?;
        return all_done(failed, done + failed, &dir);
    }
    if resume {
        return Err(refused(anyhow::anyhow!(
            "--resume continues pre-training and training flows; inference flows start afresh (use a new name or --overwrite)"
        )));
    }
    let (m, dir) = run_loaded(registry, &loaded, overwrite, Reporting::default())?;
    all_done(m.failed, m.done + m.failed, &dir)
}

fn validate(registry: &Registry, flow: &std::path::Path, sets: &[String]) -> anyhow::Result<i32> {
    // What `rlrig run` accepts: a flow file, or a run directory standing for its flow.toml.
    let flow = &crate::run::flow_file(flow);
    let text = std::fs::read_to_string(flow)
        .map_err(|e| refused(anyhow::anyhow!("{}: {e}", flow.display())))?;
    if rlrig_flow::flow_kind(&text) == rlrig_flow::FlowKind::Pretrain {
        let loaded = rlrig_flow::load_as::<rlrig_flow::PretrainFlow>(flow, &text, sets)?;
        let job = rlrig_models::jobs::Job::from_flow(&loaded)?;
        println!("{}: ok — {}", flow.display(), job.describe());
        return Ok(0);
    }
    // Every problem at once: the flow's own and its actors' kinds and settings.
    let loaded = crate::run::load_checked_str(registry, flow, &text, sets)?;
    let c = &loaded.flow.cycle;
    let round = if c.max_rounds > 0 {
        format!(" | {} ×{}", c.round.join(" → "), c.max_rounds)
    } else {
        String::new()
    };
    println!(
        "{}: ok — {} actors; cycle: {}{round}",
        flow.display(),
        loaded.flow.actors.len(),
        c.start.join(" → ")
    );
    // Placement, checked without connecting (`rlrig run` connects first).
    for (name, spec) in &loaded.flow.actors {
        let Some(p) = &spec.node else { continue };
        let places: Vec<String> = (0..spec.replicas)
            .map(|r| match p.node_of(r) {
                Some(n) => format!("{n} ({})", loaded.flow.nodes[n].address),
                None => rlrig_flow::LOCAL.to_string(),
            })
            .collect();
        println!("  {name}: {}", places.join(", "));
    }
    Ok(0)
}
