//! The `rlrig` command line: a thin layer over rlrig's crates.

use std::process::ExitCode;

use clap::Parser;

mod world_cmd;

/// rlrig: text-to-image generation that reflects on its own images (RL-RIG) — an actor-model
/// dataflow framework.
#[derive(Parser)]
#[command(name = "rlrig", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The built-in world of spatial scenes: sample, render, parse and judge images.
    #[command(subcommand)]
    World(world_cmd::WorldCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RLRIG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::World(cmd) => world_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
