//! Reading and writing LAION-SG records as JSONL (one record a line) and JSON (an array of
//! records, or one record).
//!
//! A malformed record is a [`ReadError::Record`] naming the file, the line (and column where
//! the JSON parser knows it), the field (`items[1].label`) and what was expected. Nothing
//! panics on bad input.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::value::RawValue;

use crate::SceneGraph;

/// Why records could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A record is malformed.
    #[error("{origin}:{line}{}: {field}: {message}", column.map(|c| format!(":{c}")).unwrap_or_default())]
    Record {
        /// The file (or `<input>`).
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column, when the JSON parser reported one.
        column: Option<usize>,
        /// The offending field as a path (`items[0].item_id`), or `record` for the whole record.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads JSONL text: one record per line; blank lines are skipped.
pub fn read_jsonl(text: &str, origin: &str) -> Result<Vec<SceneGraph>, ReadError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_record(line, origin, i + 1, 1, "")?);
    }
    Ok(out)
}

/// Reads JSON text: an array of records, or a single record object.
pub fn read_json(text: &str, origin: &str) -> Result<Vec<SceneGraph>, ReadError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('[') {
        let (line, column) = position(text, text.len() - trimmed.len());
        return Ok(vec![parse_record(trimmed, origin, line, column, "")?]);
    }
    let raws: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| json_error(origin, 1, 1, "", &e, "file"))?;
    let mut out = Vec::with_capacity(raws.len());
    for (i, raw) in raws.iter().enumerate() {
        let (line, column) = position(text, raw.get().as_ptr() as usize - text.as_ptr() as usize);
        out.push(parse_record(
            raw.get(),
            origin,
            line,
            column,
            &format!("[{i}]"),
        )?);
    }
    Ok(out)
}

/// Reads a records file: `.jsonl` as JSONL, `.json` as JSON; any other name is sniffed
/// (a leading `[` means a JSON array, otherwise JSONL).
pub fn read_records(path: &Path) -> Result<Vec<SceneGraph>, ReadError> {
    let origin = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: origin.clone(),
        source,
    })?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => read_jsonl(&text, &origin),
        Some("json") => read_json(&text, &origin),
        _ if text.trim_start().starts_with('[') => read_json(&text, &origin),
        _ => read_jsonl(&text, &origin),
    }
}

/// Writes records as JSONL, one compact record per line.
pub fn write_jsonl<W: Write>(mut w: W, records: &[SceneGraph]) -> io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Writes records as one pretty-printed JSON array.
pub fn write_json<W: Write>(mut w: W, records: &[SceneGraph]) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut w, records)?;
    w.write_all(b"\n")?;
    w.flush()
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    (line, offset - before.rfind('\n').map_or(0, |p| p + 1) + 1)
}

/// Parses and validates one record whose text starts at `line`:`column` of the file.
fn parse_record(
    text: &str,
    origin: &str,
    line: usize,
    column: usize,
    prefix: &str,
) -> Result<SceneGraph, ReadError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let graph: SceneGraph = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_path(prefix, &e.path().to_string());
        json_error(origin, line, column, &field, e.inner(), "record")
    })?;
    de.end()
        .map_err(|e| json_error(origin, line, column, prefix, &e, "record"))?;
    graph.validate().map_err(|v| ReadError::Record {
        origin: origin.into(),
        line,
        column: None,
        field: field_path(prefix, &v.field),
        message: v.message,
    })?;
    Ok(graph)
}

fn field_path(prefix: &str, path: &str) -> String {
    // serde_path_to_error writes `?` for a key it had not read yet (truncated input).
    let path = path.trim_end_matches('?').trim_end_matches('.');
    match (prefix, path) {
        ("", "." | "") => String::new(),
        (p, "." | "") => p.to_string(),
        ("", p) => p.to_string(),
        (pre, p) if p.starts_with('[') => format!("{pre}{p}"),
        (pre, p) => format!("{pre}.{p}"),
    }
}

/// Turns a serde_json error inside a text that starts at `line`:`column` of the file into a
/// [`ReadError`] with file coordinates, without serde_json's own position suffix.
fn json_error(
    origin: &str,
    line: usize,
    column: usize,
    field: &str,
    e: &serde_json::Error,
    whole: &str,
) -> ReadError {
    let text = e.to_string();
    let message = text
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&text)
        .to_string();
    let (line, column) = match e.line() {
        0 => (line, None),
        1 => (line, Some(column + e.column() - 1)),
        l => (line + l - 1, Some(e.column())),
    };
    ReadError::Record {
        origin: origin.into(),
        line,
        column,
        field: if field.is_empty() {
            whole.into()
        } else {
            field.into()
        },
        message,
    }
}
