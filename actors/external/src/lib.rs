//! The external-process role kind: any rlrig role written in any language.
//!
//! An [`ExternalActor`] starts a child process and talks to it over its stdin and stdout in
//! protocol `rlrig-actor/1`, one JSON object per line (specified in
//! `docs/external-protocol.md`; the Rust forms of its lines are in [`wire`]). The process says
//! hello with its role, then answers one reply line per batch. The actor implements all four
//! role traits of [`rlrig_contract`] ([`Diffuser`](rlrig_contract::Diffuser),
//! [`Checker`](rlrig_contract::Checker), [`EditPolicy`](rlrig_contract::EditPolicy),
//! [`Editor`](rlrig_contract::Editor)); only the one its process declared works.
//!
//! Every failure names the actor and its command. A process that crashes, hangs past its
//! timeout or breaks the protocol is killed and the actor stays dead: later calls fail at once,
//! and the engine replaces it by spawning a new one. The child's stderr is forwarded line by
//! line to the `tracing` target `rlrig_external::stderr` at level INFO; a process that dies
//! has its last lines quoted in the error instead.
//!
//! `examples/external_checker.py` at the repository root is a Checker written in Python with
//! the standard library only.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod actor;
mod error;
pub mod wire;

pub use actor::ExternalActor;
pub use error::{ExternalError, ExternalErrorKind};

/// How to start and supervise an external process; flows give it as a role's settings.
///
/// In JSON or TOML only `command` is required:
/// `{"command": ["python3", "examples/external_checker.py"], "timeout_ms": 5000}`.
/// Unknown keys are an error.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// The program and its arguments, e.g. `["python3", "checker.py"]`. The program is looked
    /// up on the `PATH` unless it contains a `/`; in a flow, such a relative program path is
    /// relative to the flow file's directory ([`ExternalConfig::relative_to`]).
    pub command: Vec<String>,
    /// How long the process may take to answer one batch, in milliseconds (default 30 000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long the process may take to say hello after it starts, in milliseconds
    /// (default 60 000, room for loading a model).
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// Working directory of the process; rlrig's own when absent. In a flow, a relative one is
    /// relative to the flow file's directory ([`ExternalConfig::relative_to`]).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables added to the environment the process inherits from rlrig.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The longest stdout line rlrig reads, in bytes (default 64 MiB). A longer line stops the
    /// actor with [`ExternalErrorKind::LineTooLong`] after reading at most this much of it.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: u64,
}

fn default_max_line_bytes() -> u64 {
    ExternalConfig::DEFAULT_MAX_LINE_BYTES
}

fn default_timeout_ms() -> u64 {
    ExternalConfig::DEFAULT_TIMEOUT_MS
}

fn default_startup_timeout_ms() -> u64 {
    ExternalConfig::DEFAULT_STARTUP_TIMEOUT_MS
}

impl ExternalConfig {
    /// The default of [`ExternalConfig::timeout_ms`].
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    /// The default of [`ExternalConfig::startup_timeout_ms`].
    pub const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 60_000;
    /// The default of [`ExternalConfig::max_line_bytes`]: 64 MiB, room for a batch of 32
    /// base64 PNGs of 1024 × 1024 pixels.
    pub const DEFAULT_MAX_LINE_BYTES: u64 = 64 << 20;

    /// A config that runs `command` with every other setting at its default.
    pub fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> ExternalConfig {
        ExternalConfig {
            command: command.into_iter().map(Into::into).collect(),
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            startup_timeout_ms: Self::DEFAULT_STARTUP_TIMEOUT_MS,
            cwd: None,
            env: BTreeMap::new(),
            max_line_bytes: Self::DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// The config with its relative paths resolved against `base_dir`, the directory of the
    /// flow file that gave it: the program when it is a path (contains a `/`; a bare name such
    /// as `python3` is still looked up on the `PATH`) and `cwd`. Resolved paths are absolute
    /// (a relative `base_dir` is taken from rlrig's working directory), so the program does not
    /// depend on the process's own working directory. The arguments are passed as they are:
    /// the program reads them relative to its working directory.
    pub fn relative_to(mut self, base_dir: &Path) -> ExternalConfig {
        let base = if base_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base_dir
        };
        let resolve = |p: &Path| {
            let joined = base.join(p);
            std::path::absolute(&joined).unwrap_or(joined)
        };
        if let Some(program) = self.command.first_mut()
            && program.contains('/')
            && Path::new(program.as_str()).is_relative()
        {
            *program = resolve(Path::new(program.as_str()))
                .to_string_lossy()
                .into_owned();
        }
        if let Some(cwd) = &mut self.cwd
            && cwd.is_relative()
        {
            *cwd = resolve(cwd);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: ExternalConfig =
            serde_json::from_str(r#"{"command": ["python3", "x.py"]}"#).unwrap();
        assert_eq!(c, ExternalConfig::new(["python3", "x.py"]));
        assert_eq!(c.timeout_ms, 30_000);

        let c: ExternalConfig = serde_json::from_str(
            r#"{"command": ["a"], "timeout_ms": 5, "startup_timeout_ms": 7, "cwd": "/tmp",
                "env": {"K": "V"}}"#,
        )
        .unwrap();
        assert_eq!((c.timeout_ms, c.startup_timeout_ms), (5, 7));
        assert_eq!(c.cwd, Some(PathBuf::from("/tmp")));
        assert_eq!(c.env["K"], "V");

        let e = serde_json::from_str::<ExternalConfig>(r#"{"command": ["a"], "timeout": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `timeout`"), "{e}");
        let e = serde_json::from_str::<ExternalConfig>(r#"{"timeout_ms": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `command`"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_flow_directory() {
        let here = std::env::current_dir().unwrap();
        let mut c = ExternalConfig::new(["./bin/checker", "data/x.json"]);
        c.cwd = Some(PathBuf::from("work"));
        let r = c.relative_to(Path::new("flows"));
        assert_eq!(
            r.command,
            [
                here.join("flows/bin/checker").to_string_lossy().as_ref(),
                // arguments are the program's business
                "data/x.json"
            ]
        );
        assert_eq!(r.cwd, Some(here.join("flows/work")));

        // A bare name stays a PATH lookup; absolute paths stay; a flow file without a
        // directory part resolves against the working directory.
        let r = ExternalConfig::new(["python3", "checker.py"]).relative_to(Path::new("/flows"));
        assert_eq!(r.command, ["python3", "checker.py"]);
        let r = ExternalConfig::new(["/usr/bin/env", "python3"]).relative_to(Path::new("/f"));
        assert_eq!(r.command[0], "/usr/bin/env");
        let r = ExternalConfig::new(["bin/x"]).relative_to(Path::new(""));
        assert_eq!(r.command[0], here.join("bin/x").to_string_lossy());
        assert_eq!(r.cwd, None);
    }
}
