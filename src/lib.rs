//! rlrig: RL-RIG (reflection-based image generation trained with GRPO) as an actor-model
//! dataflow framework.
//!
//! This crate is the thin layer users run: the `rlrig` command line ([`cli`]), the built-in
//! actor kinds ([`builtin_registry`]) and the `run` command's bookkeeping ([`run`]). The work
//! happens in the crates below it: `rlrig-flow` (flow files), `rlrig-engine` (ractor actors,
//! batching, credits, supervision), `rlrig-store` (sled trajectories), `rlrig-world` (the
//! built-in world and its oracle), `rlrig-sg` (LAION-SG records and metrics) and the role
//! crates under `actors/`.
//!
//! A program that adds its own actor kinds reuses the whole command line:
//!
//! ```no_run
//! let mut registry = rlrig::builtin_registry();
//! // registry.add_checker("my.checker", "…", |_: &MyConfig| Ok(()), |cfg, ctx| …);
//! std::process::exit(rlrig::cli::main(registry));
//! ```

mod builtin;
mod chain;
pub mod cli;
mod compare_cmd;
mod eval_cmd;
mod node_cmd;
pub mod outcome;
mod overrides;
mod plot;
pub mod pretrain_cmd;
mod quality_cmd;
pub mod replay;
pub mod report;
pub mod run;
pub mod scores;
mod sink;
pub mod train_cmd;
mod trajectories_cmd;
mod world_cmd;

pub use builtin::builtin_registry;
pub use rlrig_engine::{ActorContext, Registry};
