//! What can go wrong with an external actor, in messages that name it.

use std::fmt;

use rlrig_contract::Role;

/// A failure of an external actor. It displays as `{actor}: {kind}`, e.g.
/// `external actor "py-checker" (python3 checker.py): timed out after 500 ms waiting for the
/// reply to batch 1; the process was killed`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{actor}: {kind}")]
pub struct ExternalError {
    /// Who failed: `external actor "NAME" (COMMAND)`.
    pub actor: String,
    /// What went wrong.
    pub kind: ExternalErrorKind,
}

/// What went wrong with an external actor.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ExternalErrorKind {
    /// The configuration cannot work (empty command, zero timeout, missing directory).
    Config(String),
    /// The role has no external form (the trainer).
    UnsupportedRole(Role),
    /// The program could not be started.
    Spawn {
        /// The program, as configured.
        program: String,
        /// Why, e.g. `not found (is it installed and on the PATH?)`.
        reason: String,
    },
    /// The process exited while rlrig waited for a line.
    Exited {
        /// What rlrig waited for: `the hello` or `the reply to batch N`.
        during: String,
        /// Its exit status, e.g. `exit status: 3` or `signal: 9 (SIGKILL)`.
        status: String,
        /// The last lines it wrote to stderr, oldest first.
        stderr_tail: Vec<String>,
    },
    /// The process closed its stdout but kept running; it was killed.
    ClosedStdout {
        /// What rlrig waited for: `the hello` or `the reply to batch N`.
        during: String,
    },
    /// No line came within the timeout; the process was killed.
    Timeout {
        /// What rlrig waited for: `the hello` or `the reply to batch N`.
        during: String,
        /// The timeout that passed.
        timeout_ms: u64,
    },
    /// A stdout line was longer than `max_line_bytes`; the process was killed.
    LineTooLong {
        /// What rlrig waited for: `the hello` or `the reply to batch N`.
        during: String,
        /// 1-based number of the line on the process's stdout.
        line: u64,
        /// The limit, `max_line_bytes`.
        limit: u64,
    },
    /// A line broke the protocol.
    Malformed {
        /// `hello` or `reply`.
        what: &'static str,
        /// 1-based number of the line on the process's stdout.
        line: u64,
        /// What the line should have been.
        expected: String,
        /// The start of the line as received.
        got: String,
    },
    /// The hello names a protocol other than `rlrig-actor/1`.
    WrongProtocol {
        /// The protocol the hello named.
        got: String,
    },
    /// The hello declares a role other than the one the actor was started as.
    WrongRole {
        /// The role the hello declared.
        declared: String,
        /// The role the actor was started as.
        expected: Role,
    },
    /// A reply carries another batch's id.
    WrongId {
        /// 1-based line number of the reply.
        line: u64,
        /// The id of the batch rlrig waits for.
        expected: u64,
        /// The id the reply carries.
        got: u64,
    },
    /// A reply has not exactly one result per request.
    WrongCount {
        /// 1-based line number of the reply.
        line: u64,
        /// The batch's id.
        id: u64,
        /// Requests in the batch.
        expected: usize,
        /// Results in the reply.
        got: usize,
    },
    /// The process answered a batch with `{"id", "error"}`. The actor stays alive.
    BatchFailed {
        /// The batch's id.
        id: u64,
        /// The process's message.
        message: String,
    },
    /// The actor was asked for a role other than its own. It stays alive.
    NotThisRole {
        /// The actor's role.
        role: Role,
        /// The role it was asked for.
        called: Role,
    },
    /// A request could not be encoded (nothing was sent; the actor stays alive).
    Encode(String),
    /// Talking to the process failed at the operating-system level.
    Io(String),
    /// An earlier failure killed the actor; spawn a new one.
    Dead(Box<ExternalErrorKind>),
}

impl fmt::Display for ExternalErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ExternalErrorKind::*;
        match self {
            Config(m) => write!(f, "bad config: {m}"),
            UnsupportedRole(r) => write!(
                f,
                "role {} cannot run as an external process (it can be: diffuser, checker, policy, editor)",
                role_word(*r)
            ),
            Spawn { program, reason } => write!(f, "cannot start {program:?}: {reason}"),
            Exited {
                during,
                status,
                stderr_tail,
            } => {
                write!(
                    f,
                    "the process exited ({status}) while rlrig waited for {during}"
                )?;
                if stderr_tail.is_empty() {
                    write!(f, "; its stderr was empty")
                } else {
                    write!(f, "; last lines of its stderr:")?;
                    stderr_tail.iter().try_for_each(|l| write!(f, "\n  | {l}"))
                }
            }
            ClosedStdout { during } => write!(
                f,
                "the process closed its stdout while rlrig waited for {during}, but kept \
                 running; it was killed"
            ),
            Timeout { during, timeout_ms } => write!(
                f,
                "timed out after {timeout_ms} ms waiting for {during}; the process was killed"
            ),
            LineTooLong {
                during,
                line,
                limit,
            } => write!(
                f,
                "line {line}, read while waiting for {during}, is longer than max_line_bytes \
                 ({limit} bytes); the process was killed"
            ),
            Malformed {
                what,
                line,
                expected,
                got,
            } => write!(
                f,
                "malformed {what} line {line}: expected {expected}, got: {got}"
            ),
            WrongProtocol { got } => write!(
                f,
                "its hello speaks protocol {got:?}, but rlrig speaks {:?}",
                crate::wire::PROTOCOL
            ),
            WrongRole { declared, expected } => write!(
                f,
                "its hello declares role {declared:?}, but it was started as a {}",
                role_word(*expected)
            ),
            WrongId {
                line,
                expected,
                got,
            } => write!(
                f,
                "reply line {line} answers batch {got}, but rlrig waits for batch {expected}"
            ),
            WrongCount {
                line,
                id,
                expected,
                got,
            } => write!(
                f,
                "reply line {line} to batch {id} has {got} results for {expected} requests"
            ),
            BatchFailed { id, message } => write!(f, "the process failed batch {id}: {message}"),
            NotThisRole { role, called } => write!(
                f,
                "it runs as a {}, so it cannot serve as a {}",
                role_word(*role),
                role_word(*called)
            ),
            Encode(m) => write!(f, "cannot encode the batch: {m}"),
            Io(m) => write!(f, "{m}; the process was killed"),
            Dead(cause) => write!(
                f,
                "dead since an earlier failure (spawn a new one); that failure: {cause}"
            ),
        }
    }
}

/// The word a role has in the protocol and in flow files.
pub(crate) fn role_word(role: Role) -> &'static str {
    match role {
        Role::Diffuser => "diffuser",
        Role::Checker => "checker",
        Role::Policy => "policy",
        Role::Editor => "editor",
        Role::Trainer => "trainer",
    }
}
