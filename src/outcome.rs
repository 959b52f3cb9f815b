//! How a command ends: the exit codes and the errors that choose them, shared by the
//! command modules and the dispatch in [`crate::cli`] (which imports this module, never the
//! other way round).

use std::path::PathBuf;

/// Exit codes of the `rlrig` command, the same for every subcommand (docs/cli.md).
pub mod exit {
    /// Everything asked was done: for a run, every trajectory is done.
    pub const OK: i32 = 0;
    /// Any other error: an actor that could not start, an I/O failure, a bug.
    pub const ERROR: i32 = 1;
    /// The command line, a flow or an input was refused before anything ran (clap's usage
    /// errors exit with 2 too).
    pub const REFUSED: i32 = 2;
    /// The run finished but some trajectories failed, or `eval`'s judge could not score some
    /// images (their count goes to stderr).
    pub const TRAJECTORIES_FAILED: i32 = 3;
    /// The run was interrupted (SIGINT/Ctrl-C): what ran is stored, the rest was not started
    /// (128 + SIGINT, as shells report a process killed by it).
    pub const INTERRUPTED: i32 = 130;

    /// The table of exit codes, as `--help` prints it.
    pub const HELP: &str = "Exit codes:
  0    success; for run and eval, every trajectory is done
  1    error: an actor could not start, an I/O failure, ...
  2    refused: a bad command line, flow, input file or run pair; nothing ran
  3    the run finished but some trajectories failed, or eval's judge failed on some
       images (the count is printed to stderr)
  130  interrupted (Ctrl-C): what ran is stored, the rest was not started";
}

/// An input refused before anything ran: a flow, a file, a pair of runs. Exits with
/// [`exit::REFUSED`].
#[derive(Debug)]
pub struct Refused(pub anyhow::Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Refused {}

/// Wraps an error as [`Refused`].
pub fn refused(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Refused(e.into()))
}

/// A run stopped by a signal (SIGINT/Ctrl-C) before it finished; says what was kept. Exits
/// with [`exit::INTERRUPTED`].
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Some trajectories of a finished run failed. Exits with [`exit::TRAJECTORIES_FAILED`].
#[derive(Debug)]
pub struct TrajectoriesFailed {
    /// Trajectories failed.
    pub failed: usize,
    /// Trajectories stored, done or failed.
    pub total: usize,
    /// The run directory.
    pub dir: PathBuf,
}

impl std::fmt::Display for TrajectoriesFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} trajectories failed; their errors: rlrig trajectories ls {}",
            self.failed,
            self.total,
            self.dir.display()
        )
    }
}

impl std::error::Error for TrajectoriesFailed {}

/// The exit code of an error: what its chain says it is.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for c in e.chain() {
        if c.is::<Interrupted>() {
            return exit::INTERRUPTED;
        }
        if c.is::<TrajectoriesFailed>() {
            return exit::TRAJECTORIES_FAILED;
        }
        if c.is::<Refused>() || c.is::<rlrig_flow::FlowError>() || c.is::<rlrig_sg::ReadError>() {
            return exit::REFUSED;
        }
    }
    exit::ERROR
}

/// What to do about an error, where rlrig knows more than the error says: printed after it.
pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|c| match c.downcast_ref::<rlrig_store::StoreError>() {
        Some(rlrig_store::StoreError::Damaged { .. }) => Some(
            "a damaged store cannot be repaired in place. What a run wrote outside it is intact: \
             each trajectory's image chain and chain.json under the run directory's \
             trajectories/, and metrics.json, scores.jsonl and report.html. Run the flow again \
             into a new directory (--set name=...) to rebuild a store.",
        ),
        Some(rlrig_store::StoreError::InUse { .. }) => Some(
            "another rlrig (a run, a training or a command reading the run) has the store open; \
             wait for it to end.",
        ),
        _ => None,
    })
}

/// [`exit::OK`] when no trajectory failed, else the [`TrajectoriesFailed`] error.
pub(crate) fn all_done(failed: usize, total: usize, dir: &std::path::Path) -> anyhow::Result<i32> {
    if failed == 0 {
        return Ok(exit::OK);
    }
    Err(TrajectoriesFailed {
        failed,
        total,
        dir: dir.to_path_buf(),
    }
    .into())
}
