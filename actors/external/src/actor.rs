//! The child process, its reader and writer threads, and the role traits over them.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
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

/// How long a process may take to exit after its stdin closes before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the rest of a dead process's stderr.
const STDERR_GRACE: Duration = Duration::from_millis(500);
/// Lines of stderr kept for error messages.
const STDERR_TAIL: usize = 10;
/// Characters of a bad line quoted in an error.
const QUOTE_CHARS: usize = 200;
/// Stdout lines read ahead of the actor; a process writing more waits on its pipe.
const LINES_QUEUED: usize = 16;
/// The longest stderr line kept; the rest of a longer one is skipped.
const STDERR_LINE_BYTES: u64 = 64 << 10;
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

/// What the stdout reader thread reports.
enum Event {
    Line(String),
    /// A line longer than `max_line_bytes`; the reader stopped.
    TooLong,
    Eof,
    Failed(String),
}

/// A running child and the threads that feed it and read it.
struct Process {
    child: Child,
    /// Lines to write to stdin; dropping it closes stdin.
    stdin: Option<Sender<Vec<u8>>>,
    stdout: Receiver<Event>,
    /// Lines read from stdout so far, blank ones included.
    lines_read: u64,
    /// The longest stdout line read ([`ExternalConfig::max_line_bytes`]).
    max_line_bytes: u64,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Disconnects when the stderr thread has read everything.
    stderr_done: Receiver<()>,
}

/// Why no line came from stdout.
enum NoLine {
    Eof,
    Timeout,
    Failed(String),
    TooLong,
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

impl Process {
    fn start(name: &str, config: &ExternalConfig) -> Result<Process, ExternalErrorKind> {
        let program = &config.command[0];
        let mut command = Command::new(program);
        command
            .args(&config.command[1..])
            .envs(&config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| ExternalErrorKind::Spawn {
            program: program.clone(),
            reason: match e.kind() {
                io::ErrorKind::NotFound if program.contains('/') => "no such file".into(),
                io::ErrorKind::NotFound => "not found (is it installed and on the PATH?)".into(),
                io::ErrorKind::PermissionDenied => "permission denied (is it executable?)".into(),
                _ => e.to_string(),
            },
        })?;
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("stdin is piped"),
            child.stdout.take().expect("stdout is piped"),
            child.stderr.take().expect("stderr is piped"),
        );
        let threads = (|| {
            let stdin = spawn_writer(name, stdin)?;
            let stdout = spawn_stdout_reader(name, stdout, config.max_line_bytes)?;
            let (tail, done) = spawn_stderr_reader(name, stderr)?;
            Ok::<_, io::Error>((stdin, stdout, tail, done))
        })();
        match threads {
            Ok((stdin, stdout, stderr_tail, stderr_done)) => Ok(Process {
                child,
                stdin: Some(stdin),
                stdout,
                lines_read: 0,
                max_line_bytes: config.max_line_bytes,
                stderr_tail,
                stderr_done,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ExternalErrorKind::Io(format!(
                    "cannot start the threads that talk to it: {e}"
                )))
            }
        }
    }

    /// The next non-blank line of stdout, unless the deadline passes or stdout ends first.
    fn next_line(&mut self, deadline: Instant) -> Result<String, NoLine> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(Event::Line(line)) => {
                    self.lines_read += 1;
                    if !line.trim().is_empty() {
                        return Ok(line);
                    }
                }
                Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => return Err(NoLine::Eof),
                Ok(Event::Failed(e)) => return Err(NoLine::Failed(e)),
                Ok(Event::TooLong) => {
                    self.lines_read += 1;
                    return Err(NoLine::TooLong);
                }
                Err(RecvTimeoutError::Timeout) => return Err(NoLine::Timeout),
            }
        }
    }

    /// The error for a wait that brought no line. Reaps the child if it ended.
    fn failure(&mut self, why: NoLine, during: &str, timeout_ms: u64) -> ExternalErrorKind {
        match why {
            NoLine::Timeout => ExternalErrorKind::Timeout {
                during: during.to_owned(),
                timeout_ms,
            },
            NoLine::Failed(e) => ExternalErrorKind::Io(format!("reading its stdout failed: {e}")),
            NoLine::TooLong => ExternalErrorKind::LineTooLong {
                during: during.to_owned(),
                line: self.lines_read,
                limit: self.max_line_bytes,
            },
            NoLine::Eof => {
                let Some(status) = self.wait_for_exit(EXIT_GRACE) else {
                    self.kill();
                    return ExternalErrorKind::ClosedStdout {
                        during: during.to_owned(),
                    };
                };
                // The stderr thread may still be reading what the process wrote last.
                let _ = self.stderr_done.recv_timeout(STDERR_GRACE);
                let stderr_tail = self
                    .stderr_tail
                    .lock()
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                ExternalErrorKind::Exited {
                    during: during.to_owned(),
                    status: status.to_string(),
                    stderr_tail,
                }
            }
        }
    }

    /// Waits up to `grace` for the child to exit by itself.
    fn wait_for_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// Kills and reaps the child (a no-op if it already exited).
    fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the child to exit by closing its stdin; kills it if it does not within the grace.
    fn close(&mut self, label: &str) {
        self.stdin = None;
        match self.wait_for_exit(EXIT_GRACE) {
            Some(status) if !status.success() => {
                tracing::warn!("{label}: exited with {status} after its stdin closed");
            }
            Some(_) => {}
            None => {
                tracing::warn!(
                    "{label}: still running {} ms after its stdin closed; killed",
                    EXIT_GRACE.as_millis()
                );
                self.kill();
            }
        }
    }
}

impl Drop for Process {
    /// Whatever path drops a process, its child does not outlive it.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.kill();
        }
    }
}

fn spawn_writer(name: &str, mut stdin: impl Write + Send + 'static) -> io::Result<Sender<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let name = name.to_owned();
    thread::Builder::new()
        .name(thread_name(&name, "stdin"))
        .spawn(move || {
            for line in rx {
                if let Err(e) = stdin.write_all(&line).and_then(|()| stdin.flush()) {
                    tracing::debug!(actor = %name, "writing to the process's stdin failed: {e}");
                    break;
                }
            }
            // Dropping `stdin` here closes the pipe: the process sees end of input.
        })?;
    Ok(tx)
}

fn spawn_stdout_reader(
    name: &str,
    stdout: impl Read + Send + 'static,
    max_line_bytes: u64,
) -> io::Result<Receiver<Event>> {
    // Bounded: a process that writes lines faster than rlrig asks for them blocks on its pipe
    // instead of filling rlrig's memory.
    let (tx, rx) = mpsc::sync_channel(LINES_QUEUED);
    thread::Builder::new()
        .name(thread_name(name, "stdout"))
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let event = match read_line_within(&mut reader, &mut buf, max_line_bytes) {
                    Ok(Some(0)) => Event::Eof,
                    Ok(Some(_)) => {
                        Event::Line(String::from_utf8_lossy(trim_newline(&buf)).into_owned())
                    }
                    Ok(None) => Event::TooLong,
                    Err(e) => Event::Failed(e.to_string()),
                };
                let last = !matches!(event, Event::Line(_));
                if tx.send(event).is_err() || last {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Reads one line into `buf` (cleared by the caller), reading at most `limit` bytes before
/// its newline: `Some(bytes read)` (0 at the end of input), or `None` for a longer line.
fn read_line_within(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: u64,
) -> io::Result<Option<usize>> {
    let n = reader
        .by_ref()
        .take(limit.saturating_add(1))
        .read_until(b'\n', buf)?;
    let complete = buf.last() == Some(&b'\n') || (n as u64) <= limit;
    Ok(complete.then_some(n))
}

type StderrTail = (Arc<Mutex<VecDeque<String>>>, Receiver<()>);

fn spawn_stderr_reader(name: &str, stderr: impl Read + Send + 'static) -> io::Result<StderrTail> {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (name, keep) = (name.to_owned(), Arc::clone(&tail));
    thread::Builder::new()
        .name(thread_name(&name, "stderr"))
        .spawn(move || {
            let _done = done_tx;
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                let (line, more) = match read_line_within(&mut reader, &mut buf, STDERR_LINE_BYTES)
                {
                    Ok(Some(n)) if n > 0 => (
                        String::from_utf8_lossy(trim_newline(&buf)).into_owned(),
                        true,
                    ),
                    // A longer stderr line: keep its start, skip the rest up to its newline.
                    Ok(None) => {
                        buf.truncate(STDERR_LINE_BYTES as usize);
                        let start = String::from_utf8_lossy(&buf).into_owned();
                        let more = skip_line(&mut reader);
                        (
                            format!("{start}... (cut at {STDERR_LINE_BYTES} bytes)"),
                            more,
                        )
                    }
                    _ => break,
                };
                // What a healthy process says goes to INFO; when the process dies, its last
                // lines are quoted in the error.
                tracing::info!(target: "rlrig_external::stderr", actor = %name, "{line}");
                if let Ok(mut tail) = keep.lock() {
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(quote(&line));
                }
                buf.clear();
                if !more {
                    break;
                }
            }
        })?;
    Ok((tail, done_rx))
}

/// Skips input up to and including the next newline; false at the end of input or on an error.
fn skip_line(reader: &mut impl BufRead) -> bool {
    loop {
        let (found, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => return false,
            Ok(chunk) => match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, chunk.len()),
            },
        };
        reader.consume(used);
        if found {
            return true;
        }
    }
}

/// A thread name for one of an actor's pipes (thread names cannot hold NUL bytes).
fn thread_name(actor: &str, pipe: &str) -> String {
    format!("{}-{pipe}", actor.replace('\0', ""))
}

fn trim_newline(buf: &[u8]) -> &[u8] {
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

/// The first [`QUOTE_CHARS`] characters of a line, marked when cut.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} bytes in all)", &text[..cut], text.len()),
    }
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

#[cfg(test)]
mod generated;
#[cfg(test)]
mod tests;
