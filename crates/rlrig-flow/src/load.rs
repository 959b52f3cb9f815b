//! Reading flow files: overrides, parsing, and errors that point into the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Flow;

/// One problem with a flow, located in its file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowProblem {
    /// Where it is: `flows/infer.toml:12:1`, or `--set cycle.max_rounds=x` for an override.
    pub location: String,
    /// The key, as a dotted path (`actors.editor.batch`, `cycle.round[1]`).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for FlowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.location, self.key, self.message)
        }
    }
}

/// Why a flow was rejected: one or more located problems.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FlowError {
    /// The problems, in file order where known.
    pub problems: Vec<FlowProblem>,
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl From<FlowProblem> for FlowError {
    fn from(p: FlowProblem) -> Self {
        FlowError { problems: vec![p] }
    }
}

/// A file of one of the flow formats, as loaded: the checked value, and what is needed to point
/// errors into its file.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    /// The flow.
    pub flow: T,
    /// The file it came from.
    pub path: PathBuf,
    /// The text after overrides (what `flow` was parsed from).
    pub text: String,
    /// The `--set` overrides applied, as `(key, value)`.
    pub overrides: Vec<(String, String)>,
    /// The directory flow-relative paths resolve against (see [`Loaded::base_dir`]).
    base_dir: PathBuf,
}

/// A cycle flow as loaded.
pub type LoadedFlow = Loaded<Flow>;

/// A flow format: its own checks beyond the shape serde enforces.
pub trait Checked: Sized {
    /// Every problem of the parsed value, located with [`Loaded::problem_at`].
    fn check(loaded: &Loaded<Self>) -> Vec<FlowProblem>;
}

impl<T> Loaded<T> {
    /// A problem at `key` (a dotted path such as `actors.editor.settings.context_loss`),
    /// located in the file, or at the `--set` that gave it.
    pub fn problem_at(&self, key: &str, message: impl Into<String>) -> FlowProblem {
        locate(&self.path, &self.text, &self.overrides, key, message.into())
    }

    /// [`Loaded::problem_at`] as a one-problem [`FlowError`].
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> FlowError {
        self.problem_at(key, message).into()
    }

    /// The directory paths in the flow that name files belonging with it (an actor's `config`,
    /// a kind's model directory or program, the cluster's secret file) are relative to: the
    /// flow file's own, or, for a copy written by [`write_copy`] (a run directory's
    /// `flow.toml`), the original flow file's, as recorded beside the copy.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Writes the flow as loaded ([`Loaded::text`]) to `path` with its base directory recorded
    /// beside it ([`write_copy`]).
    pub fn write_copy(&self, path: &Path) -> Result<(), CopyError> {
        write_copy(path, &self.text, self.base_dir())
    }
}

/// The file beside a copy of a flow that records the directory its flow-relative paths resolve
/// against: `runs/x/flow.toml` → `runs/x/flow.base_dir`.
pub fn base_dir_record(flow_file: &Path) -> PathBuf {
    flow_file.with_extension("base_dir")
}

/// Why a copy of a flow could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct CopyError {
    /// The file that could not be written (or the directory that could not be made absolute).
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Writes `text`, a flow whose flow-relative paths resolve against `base_dir`, to `path` (a run
/// directory's `flow.toml`, say), and `base_dir`, made absolute, to [`base_dir_record`] beside
/// it. Loading the copy ([`load`], [`parse_str`], …) then resolves those paths as the original
/// flow did, from any working directory; without the record (deleted, or the copy moved
/// without it) they resolve against the copy's own directory.
pub fn write_copy(path: &Path, text: &str, base_dir: &Path) -> Result<(), CopyError> {
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CopyError { path, source }
    };
    let base = if base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base_dir
    };
    let base = std::path::absolute(base).map_err(error(base))?;
    std::fs::write(path, text).map_err(error(path))?;
    let record = base_dir_record(path);
    let mut bytes = path_bytes(&base);
    bytes.push(b'\n');
    std::fs::write(&record, bytes).map_err(error(&record))
}

/// The base directory of the flow file at `path`: the one recorded beside it, if any
/// ([`write_copy`]), else its own directory.
fn base_dir_of(path: &Path) -> Result<PathBuf, FlowProblem> {
    let record = base_dir_record(path);
    match std::fs::read(&record) {
        Ok(mut bytes) => {
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            if bytes.is_empty() {
                return Err(FlowProblem {
                    location: record.display().to_string(),
                    key: String::new(),
                    message: format!(
                        "names no directory (it records the directory {}'s flow-relative paths resolve against)",
                        path.display()
                    ),
                });
            }
            Ok(path_from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(path.parent().unwrap_or(Path::new(".")).to_path_buf())
        }
        Err(e) => Err(FlowProblem {
            location: record.display().to_string(),
            key: String::new(),
            message: format!("cannot read the flow's recorded base directory: {e}"),
        }),
    }
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
fn path_from_bytes(b: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
fn path_from_bytes(b: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&b).into_owned())
}

/// The formats a flow file can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// A reflect-edit cycle ([`Flow`]).
    Cycle,
    /// Pre-training of a built-in model ([`crate::PretrainFlow`]): it has a `[pretrain]` table.
    Pretrain,
}

/// Which format a flow text is in (a syntax error reads as [`FlowKind::Cycle`], whose loader
/// reports it).
pub fn flow_kind(text: &str) -> FlowKind {
    match toml_edit::Document::parse(text) {
        Ok(doc) if doc.contains_key("pretrain") => FlowKind::Pretrain,
        _ => FlowKind::Cycle,
    }
}

/// Reads, overrides, parses and checks a flow file. A copy of a flow written by [`write_copy`]
/// gets the base directory recorded beside it ([`Loaded::base_dir`]).
///
/// `overrides` are `dotted.key=value` strings; the value is read as TOML (`3`, `true`,
/// `["a", "b"]`, `"text"`) and, if it is not valid TOML, as a plain string.
pub fn load(path: &Path, overrides: &[String]) -> Result<LoadedFlow, FlowError> {
    let text = std::fs::read_to_string(path).map_err(|e| FlowProblem {
        location: path.display().to_string(),
        key: String::new(),
        message: format!("cannot read the flow file: {e}"),
    })?;
    load_str(path, &text, overrides)
}

/// [`load`] on text already read; `path` names it in errors.
pub fn load_str(path: &Path, text: &str, overrides: &[String]) -> Result<LoadedFlow, FlowError> {
    load_as(path, text, overrides)
}

/// Reads a file of any flow format `T`, with overrides, and checks it.
pub fn load_as<T: DeserializeOwned + Checked>(
    path: &Path,
    text: &str,
    overrides: &[String],
) -> Result<Loaded<T>, FlowError> {
    let (loaded, problems) = parse_as(path, text, overrides)?;
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(FlowError { problems })
    }
}

/// A cycle flow parsed but not refused for its problems: the flow and every problem its checks
/// found, for a caller that adds its own (`rlrig validate` adds the actor kinds') and reports
/// them all at once. Fails only when the flow cannot be read into its types (TOML syntax,
/// unknown keys, wrong types): parsing stops at the first such problem.
pub fn parse_str(
    path: &Path,
    text: &str,
    overrides: &[String],
) -> Result<(LoadedFlow, Vec<FlowProblem>), FlowError> {
    parse_as(path, text, overrides)
}

/// [`parse_str`] for any flow format `T`.
pub fn parse_as<T: DeserializeOwned + Checked>(
    path: &Path,
    text: &str,
    overrides: &[String],
) -> Result<(Loaded<T>, Vec<FlowProblem>), FlowError> {
    let (text, overrides) = apply_overrides(path, text, overrides)?;
    let de = toml::de::Deserializer::parse(&text)
        .map_err(|e| toml_problem(path, &text, &overrides, String::new(), &e))?;
    let flow: T = match serde_path_to_error::deserialize(de) {
        Ok(flow) => flow,
        Err(e) => {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            return Err(toml_problem(path, &text, &overrides, key, e.inner()).into());
        }
    };
    let loaded = Loaded {
        flow,
        path: path.to_path_buf(),
        text,
        overrides,
        base_dir: base_dir_of(path)?,
    };
    let problems = T::check(&loaded);
    Ok((loaded, problems))
}

/// Turns a TOML or serde error into a located problem, with a did-you-mean for unknown keys.
fn toml_problem(
    path: &Path,
    text: &str,
    overrides: &[(String, String)],
    key: String,
    e: &toml::de::Error,
) -> FlowProblem {
    let (key, message) = explain_unknown(key, e.message().trim());
    if let Some(over) = override_for(overrides, &key) {
        return FlowProblem {
            location: over,
            key,
            message,
        };
    }
    let location = match e.span() {
        Some(span) if !key_found(text, &key) || key.is_empty() => position(path, text, span.start),
        _ => return locate(path, text, overrides, &key, message),
    };
    FlowProblem {
        location,
        key,
        message,
    }
}

/// Rewrites serde's "unknown field" message with the full key and a did-you-mean; other
/// messages pass through.
fn explain_unknown(key: String, message: &str) -> (String, String) {
    let Some((unknown, expected)) = parse_unknown(message) else {
        return (key, message.to_string());
    };
    let key = if key.ends_with(&unknown) {
        key
    } else {
        join_key(&key, &unknown)
    };
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    let mut message = format!(
        "unknown key `{unknown}`; expected one of {}",
        list.join(", ")
    );
    if let Some(best) = did_you_mean(&unknown, expected.iter().map(String::as_str)) {
        message.push_str(&format!("; did you mean `{best}`?"));
    }
    (key, message)
}

/// `unknown field `x`, expected one of `a`, `b`` (or `expected `a``) → (`x`, [a, b]).
fn parse_unknown(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((unknown.to_string(), expected))
}

/// The closest candidate, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (c, strsim::normalized_damerau_levenshtein(word, c)))
        .filter(|&(_, score)| score >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

fn join_key(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Key path segments: `a.b[2].c` → [Key(a), Key(b), Index(2), Key(c)].
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        while let Some((idx, after)) = rest.split_once(']') {
            if let Ok(i) = idx.parse() {
                out.push(Seg::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// The byte span of the deepest part of `key` found in the document.
fn span_of(text: &str, key: &str) -> Option<(std::ops::Range<usize>, bool)> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    let segs = segments(key);
    let n = segs.len();
    for (i, seg) in segs.into_iter().enumerate() {
        match seg {
            Seg::Key(k) => {
                let table = item.as_table_like();
                // `train.policy` is the old spelling of `train.actor` (a serde alias).
                let found = table.and_then(|t| t.get_key_value(k)).or_else(|| {
                    (k == "actor" && i == 1 && key.starts_with("train."))
                        .then(|| table.and_then(|t| t.get_key_value("policy")))
                        .flatten()
                });
                let Some((kk, next)) = found else {
                    break;
                };
                best = kk.span().map(|s| (s, i + 1 == n));
                item = next;
            }
            Seg::Index(idx) => {
                let arr = item.as_array();
                let Some(v) = arr.and_then(|a| a.get(idx)) else {
                    break;
                };
                best = v.span().map(|s| (s, i + 1 == n));
                // Arrays hold values, not items: nothing deeper is addressable.
                break;
            }
        }
    }
    best
}

fn key_found(text: &str, key: &str) -> bool {
    span_of(text, key).is_some_and(|(_, complete)| complete)
}

fn override_for(overrides: &[(String, String)], key: &str) -> Option<String> {
    overrides
        .iter()
        .find(|(k, _)| {
            key == k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["))
        })
        .map(|(k, v)| format!("--set {k}={v}"))
}

fn locate(
    path: &Path,
    text: &str,
    overrides: &[(String, String)],
    key: &str,
    message: String,
) -> FlowProblem {
    if let Some(location) = override_for(overrides, key) {
        return FlowProblem {
            location,
            key: key.into(),
            message,
        };
    }
    let location = match span_of(text, key) {
        Some((span, _)) => position(path, text, span.start),
        None => path.display().to_string(),
    };
    FlowProblem {
        location,
        key: key.into(),
        message,
    }
}

fn position(path: &Path, text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.chars().count(), |p| before[p + 1..].chars().count())
        + 1;
    format!("{}:{line}:{column}", path.display())
}

/// Applies `key=value` overrides to the document text.
fn apply_overrides(
    path: &Path,
    text: &str,
    overrides: &[String],
) -> Result<(String, Vec<(String, String)>), FlowError> {
    if overrides.is_empty() {
        return Ok((text.to_string(), Vec::new()));
    }
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let location = e.span().map_or(path.display().to_string(), |s| {
            position(path, text, s.start)
        });
        FlowProblem {
            location,
            key: String::new(),
            message: e.message().trim().to_string(),
        }
    })?;
    let mut applied = Vec::new();
    for raw in overrides {
        let bad = |message: String| FlowProblem {
            location: format!("--set {raw}"),
            key: String::new(),
            message,
        };
        let Some((key, value)) = raw.split_once('=') else {
            return Err(bad("expected `dotted.key=value`".into()).into());
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty() || p.contains('[')) {
            return Err(bad(format!("`{key}` is not a dotted key (a.b.c)")).into());
        }
        let parsed: toml_edit::Value = value
            .trim()
            .parse()
            .unwrap_or_else(|_| toml_edit::Value::from(value.trim()));
        let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                table.insert(part, toml_edit::Item::Value(parsed.clone()));
                break;
            }
            if table.get(part).is_none() {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                table.insert(part, toml_edit::Item::Table(t));
            }
            let prefix = parts[..=i].join(".");
            table = table
                .get_mut(part)
                .and_then(|it| it.as_table_like_mut())
                .ok_or_else(|| bad(format!("`{prefix}` is a value, not a table")))?;
        }
        applied.push((key.to_string(), value.trim().to_string()));
    }
    Ok((doc.to_string(), applied))
}

/// Deserialises a table of settings into a kind's config type, with did-you-mean for unknown
/// keys; errors name the key inside the settings (`settings.context_loss`).
pub fn settings_into<T: for<'de> Deserialize<'de>>(
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, (String, String)> {
    let value = serde_json::Value::Object(settings.clone());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        explain_unknown(key, &e.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy resolves against the original's directory while the record is beside it, and
    /// against its own without it.
    #[test]
    fn a_copy_keeps_the_original_base_dir() {
        let minimal =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/flows/valid/minimal.toml");
        let original = load(&minimal, &[]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("flow.toml");
        original.write_copy(&copy).unwrap();
        let loaded = load(&copy, &[]).unwrap();
        assert_eq!(loaded.text, original.text);
        assert_eq!(
            loaded.base_dir(),
            std::path::absolute(minimal.parent().unwrap()).unwrap()
        );
        // A copy of the copy records the same directory.
        let again = tmp.path().join("again.toml");
        loaded.write_copy(&again).unwrap();
        assert_eq!(load(&again, &[]).unwrap().base_dir(), loaded.base_dir());
        std::fs::remove_file(base_dir_record(&copy)).unwrap();
        assert_eq!(load(&copy, &[]).unwrap().base_dir(), tmp.path());
    }
}
