//! The child process of an [`ExternalActor`](super::ExternalActor): starting it, the threads
//! that write its stdin and read its stdout and stderr (bounded: lines, read-ahead, stderr
//! tail), and stopping it.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::ExternalConfig;
use crate::error::ExternalErrorKind;

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

/// The first [`QUOTE_CHARS`] characters of a line, marked when cut.
pub(super) fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} bytes in all)", &text[..cut], text.len()),
    }
}

/// What the stdout reader thread reports.
pub(super) enum Event {
    Line(String),
    /// A line longer than `max_line_bytes`; the reader stopped.
    TooLong,
    Eof,
    Failed(String),
}

/// A running child and the threads that feed it and read it.
pub(super) struct Process {
    pub(super) child: Child,
    /// Lines to write to stdin; dropping it closes stdin.
    pub(super) stdin: Option<Sender<Vec<u8>>>,
    stdout: Receiver<Event>,
    /// Lines read from stdout so far, blank ones included.
    pub(super) lines_read: u64,
    /// The longest stdout line read ([`ExternalConfig::max_line_bytes`]).
    max_line_bytes: u64,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Disconnects when the stderr thread has read everything.
    stderr_done: Receiver<()>,
}

/// Why no line came from stdout.
pub(super) enum NoLine {
    Eof,
    Timeout,
    Failed(String),
    TooLong,
}

impl Process {
    pub(super) fn start(name: &str, config: &ExternalConfig) -> Result<Process, ExternalErrorKind> {
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
    pub(super) fn next_line(&mut self, deadline: Instant) -> Result<String, NoLine> {
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
    pub(super) fn failure(
        &mut self,
        why: NoLine,
        during: &str,
        timeout_ms: u64,
    ) -> ExternalErrorKind {
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
    pub(super) fn wait_for_exit(&mut self, grace: Duration) -> Option<ExitStatus> {
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
    pub(super) fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the child to exit by closing its stdin; kills it if it does not within the grace.
    pub(super) fn close(&mut self, label: &str) {
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
