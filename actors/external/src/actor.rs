//! [`ExternalActor`]: the role traits over a child process speaking `rlrig-actor/1`, the
//! protocol checks and the decoding of replies; the process and its pipes are in `process`.

use std::fmt;
use std::time::{Duration, Instant};

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Diffuser, EditPolicy, EditProposal, EditRequest, Editor,
    GenerateRequest, Image, PngError, ProposeRequest, Role, RoleError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ExternalConfig;
use crate::error::{ExternalError, ExternalErrorKind, role_word};
use crate::wire::{
    Hello, PROTOCOL, Request, WireCheckRequest, WireEditRequest, WireImage, WireProposeRequest,
};

/// What a reply line must look like.
const REPLY_SHAPE: &str = r#"JSON {"id", "results"|"error"}"#;

/// A role served by a child process over protocol `rlrig-actor/1`.
///
/// Spawned with [`ExternalActor::spawn`]; it implements every role trait, and the one its
/// process declared works. A crash, a hang past the timeout or a protocol violation kills the
/// process and leaves the actor dead: every later call fails at once with
/// [`ExternalErrorKind::Dead`]. A batch the process answers with an error, or a call for
/// another role, fails that call only. Dropping the actor closes the process's stdin and kills
/// it if it has not exited a second later.
pub struct ExternalActor {
    name: String,
    role: Role,
    label: String,
    timeout_ms: u64,
    next_id: u64,
    state: State,
}

enum State {
    Alive(Process),
    Dead(ExternalError),
}

impl ExternalActor {
    /// Starts `config.command` as the `role` named `name` and waits for its hello.
    ///
    /// Fails if the configuration cannot work, the program cannot start, or the process does
    /// not say a valid hello for `role` within `config.startup_timeout_ms` (it is killed).
    pub fn spawn(
        name: &str,
        role: Role,
        config: &ExternalConfig,
    ) -> Result<ExternalActor, ExternalError> {
        let label = format!(
            "external actor {name:?} ({})",
            display_command(&config.command)
        );
        let err = |kind| ExternalError {
            actor: label.clone(),
            kind,
        };
        check_config(role, config).map_err(err)?;
        let mut process = Process::start(name, config).map_err(err)?;
        let timeout_ms = config.startup_timeout_ms;
        let during = "the hello";
        let kind = match process.next_line(Instant::now() + Duration::from_millis(timeout_ms)) {
            Ok(line) => match check_hello(&line, role, process.lines_read) {
                Ok(()) => {
                    tracing::debug!(actor = %label, pid = process.child.id(), "external actor ready");
                    return Ok(ExternalActor {
                        name: name.to_owned(),
                        role,
                        label,
                        timeout_ms: config.timeout_ms,
                        next_id: 1,
                        state: State::Alive(process),
                    });
                }
                Err(kind) => kind,
            },
            Err(why) => process.failure(why, during, timeout_ms),
        };
        process.kill();
        Err(err(kind))
    }

    /// The name the actor was spawned with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role the process serves.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the process is still serving; false after a fatal failure.
    pub fn is_alive(&self) -> bool {
        matches!(self.state, State::Alive(_))
    }

    /// The process id of the child while the actor is alive.
    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Alive(p) => Some(p.child.id()),
            State::Dead(_) => None,
        }
    }

    /// The failure that killed the actor, if one did.
    pub fn failure(&self) -> Option<&ExternalError> {
        match &self.state {
            State::Alive(_) => None,
            State::Dead(e) => Some(e),
        }
    }

    fn error(&self, kind: ExternalErrorKind) -> ExternalError {
        ExternalError {
            actor: self.label.clone(),
            kind,
        }
    }

    /// Serves one batch as the `called` role: checks that the actor is alive and has that role,
    /// encodes the batch, sends it and decodes the reply. `decode` turns result `i` into a
    /// value or says what was expected of it. A failure that leaves the process unusable kills
    /// it and marks the actor dead.
    fn call<T: Serialize, R>(
        &mut self,
        called: Role,
        encode: impl FnOnce() -> Result<Vec<T>, PngError>,
        decode: impl Fn(usize, Value) -> Result<R, String>,
    ) -> Result<Vec<R>, ExternalError> {
        let process = match &mut self.state {
            State::Dead(e) => {
                let cause = Box::new(e.kind.clone());
                return Err(self.error(ExternalErrorKind::Dead(cause)));
            }
            State::Alive(_) if called != self.role => {
                return Err(self.error(ExternalErrorKind::NotThisRole {
                    role: self.role,
                    called,
                }));
            }
            State::Alive(process) => process,
        };
        let failed = |kind| ExternalError {
            actor: self.label.clone(),
            kind,
        };
        let batch = encode().map_err(|e| failed(ExternalErrorKind::Encode(e.to_string())))?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (id, n) = (self.next_id, batch.len());
        let request = Request {
            id,
            role: self.role,
            batch,
        };
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| failed(ExternalErrorKind::Encode(e.to_string())))?;
        line.push(b'\n');
        self.next_id += 1;
        if let Some(stdin) = &process.stdin {
            // A failed send means the writer thread saw stdin break: the process is going
            // away, and its stdout tells how.
            let _ = stdin.send(line);
        }
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        let kind = match process.next_line(deadline) {
            Ok(text) => match parse_reply(&text, process.lines_read, id, n, decode) {
                Ok(results) => return Ok(results),
                Err(kind @ ExternalErrorKind::BatchFailed { .. }) => return Err(failed(kind)),
                Err(kind) => kind,
            },
            Err(why) => {
                let during = format!("the reply to batch {id}");
                process.failure(why, &during, self.timeout_ms)
            }
        };
        process.kill();
        // Not logged here: the error goes to the caller (the engine logs it once).
        let e = failed(kind);
        self.state = State::Dead(e.clone());
        Err(e)
    }
}

impl Drop for ExternalActor {
    fn drop(&mut self) {
        if let State::Alive(process) = &mut self.state {
            process.close(&self.label);
        }
    }
}

impl fmt::Debug for ExternalActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalActor")
            .field("actor", &self.label)
            .field("role", &self.role)
            .field("pid", &self.pid())
            .field("alive", &self.is_alive())
            .finish()
    }
}

fn role_error(e: ExternalError) -> RoleError {
    RoleError(e.to_string())
}

impl Diffuser for ExternalActor {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        self.call(Role::Diffuser, || Ok(batch.to_vec()), decode_image)
            .map_err(role_error)
    }
}

impl Checker for ExternalActor {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        let encode = || batch.iter().map(WireCheckRequest::encode).collect();
        self.call(Role::Checker, encode, |i, v| decode_report(i, v, &batch[i]))
            .map_err(role_error)
    }
}

impl EditPolicy for ExternalActor {
    fn propose(&mut self, batch: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        let encode = || batch.iter().map(WireProposeRequest::encode).collect();
        self.call(Role::Policy, encode, decode_proposal)
            .map_err(role_error)
    }
}

impl Editor for ExternalActor {
    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        let encode = || batch.iter().map(WireEditRequest::encode).collect();
        self.call(Role::Editor, encode, decode_image)
            .map_err(role_error)
    }
}

fn from_value<T: DeserializeOwned>(i: usize, v: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("results[{i}] to be {what} ({e})"))
}

fn decode_image(i: usize, v: Value) -> Result<Image, String> {
    let wire: WireImage = from_value(i, v, r#"an image {"width", "height", "png_base64"}"#)?;
    wire.decode()
        .map_err(|e| format!("results[{i}] to be a valid image ({e})"))
}

fn decode_report(i: usize, v: Value, request: &CheckRequest) -> Result<CheckReport, String> {
    let r: CheckReport = from_value(
        i,
        v,
        r#"a check report {"items", "relations", "score", "reflection"}"#,
    )?;
    let (items, relations) = (request.prompt.items.len(), request.prompt.relations.len());
    if r.items.len() != items || r.relations.len() != relations {
        return Err(format!(
            "results[{i}] to have {items} item and {relations} relation verdicts (one per prompt \
             item and relation), but it has {} and {}",
            r.items.len(),
            r.relations.len()
        ));
    }
    if !(0.0..=1.0).contains(&r.score) {
        return Err(format!(
            "results[{i}].score to be in [0, 1], but it is {}",
            r.score
        ));
    }
    Ok(r)
}

fn decode_proposal(i: usize, v: Value) -> Result<EditProposal, String> {
    let p: EditProposal = from_value(
        i,
        v,
        r#"an edit proposal {"edit_prompt", "token_ids", "logprobs", "policy_version"}"#,
    )?;
    if p.token_ids.len() != p.logprobs.len() {
        return Err(format!(
            "results[{i}] to have one log-prob per token, but it has {} tokens and {} log-probs",
            p.token_ids.len(),
            p.logprobs.len()
        ));
    }
    Ok(p)
}

/// Checks a reply line: JSON `{"id", "results"}` with one decodable result per request, or
/// `{"id", "error"}` ([`ExternalErrorKind::BatchFailed`]).
fn parse_reply<R>(
    text: &str,
    line: u64,
    id: u64,
    n: usize,
    decode: impl Fn(usize, Value) -> Result<R, String>,
) -> Result<Vec<R>, ExternalErrorKind> {
    let malformed = |expected: String| ExternalErrorKind::Malformed {
        what: "reply",
        line,
        expected,
        got: quote(text),
    };
    let shape = || malformed(REPLY_SHAPE.to_owned());
    let Ok(Value::Object(mut reply)) = serde_json::from_str::<Value>(text) else {
        return Err(shape());
    };
    let got = reply.get("id").and_then(Value::as_u64).ok_or_else(shape)?;
    if got != id {
        return Err(ExternalErrorKind::WrongId {
            line,
            expected: id,
            got,
        });
    }
    match (reply.remove("results"), reply.remove("error")) {
        (Some(Value::Array(results)), None) => {
            if results.len() != n {
                return Err(ExternalErrorKind::WrongCount {
                    line,
                    id,
                    expected: n,
                    got: results.len(),
                });
            }
            results
                .into_iter()
                .enumerate()
                .map(|(i, v)| decode(i, v))
                .collect::<Result<_, _>>()
                .map_err(malformed)
        }
        (None, Some(Value::String(message))) => Err(ExternalErrorKind::BatchFailed { id, message }),
        _ => Err(malformed(format!(
            r#"{REPLY_SHAPE} with "results" an array or "error" a string, not both"#
        ))),
    }
}

fn check_hello(text: &str, role: Role, line: u64) -> Result<(), ExternalErrorKind> {
    let hello: Hello = serde_json::from_str(text).map_err(|_| ExternalErrorKind::Malformed {
        what: "hello",
        line,
        expected: format!(
            r#"JSON {{"protocol": "{PROTOCOL}", "role": "{}"}}"#,
            role_word(role)
        ),
        got: quote(text),
    })?;
    if hello.protocol != PROTOCOL {
        return Err(ExternalErrorKind::WrongProtocol {
            got: hello.protocol,
        });
    }
    if hello.role != role_word(role) {
        return Err(ExternalErrorKind::WrongRole {
            declared: hello.role,
            expected: role,
        });
    }
    Ok(())
}

fn check_config(role: Role, config: &ExternalConfig) -> Result<(), ExternalErrorKind> {
    if role == Role::Trainer {
        return Err(ExternalErrorKind::UnsupportedRole(role));
    }
    let bad = |m: &str| Err(ExternalErrorKind::Config(m.to_owned()));
    if config.command.first().is_none_or(|p| p.is_empty()) {
        return bad(
            r#"the command is empty; give the program and its arguments, e.g. ["python3", "checker.py"]"#,
        );
    }
    if config.timeout_ms == 0 || config.startup_timeout_ms == 0 {
        return bad("timeout_ms and startup_timeout_ms must be positive");
    }
    if config.max_line_bytes == 0 {
        return bad("max_line_bytes must be positive");
    }
    if let Some(cwd) = &config.cwd
        && !cwd.is_dir()
    {
        return Err(ExternalErrorKind::Config(format!(
            "the working directory {} is not a directory",
            cwd.display()
        )));
    }
    Ok(())
}

/// The command as a person would type it, arguments with spaces or quotes in quotes, cut at
/// 160 characters.
fn display_command(command: &[String]) -> String {
    if command.is_empty() {
        return "no command".into();
    }
    let shown = command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    match shown.char_indices().nth(160) {
        None => shown,
        Some((cut, _)) => format!("{}...", &shown[..cut]),
    }
}

mod process;
use process::{Process, quote};

#[cfg(test)]
mod generated;
#[cfg(test)]
mod tests;
