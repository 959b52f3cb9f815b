//! `--set` overrides the binary makes itself (evaluation runs of a training flow, `rlrig eval`'s
//! prompts file). The flow loader reads an override's value as TOML and puts it into the flow's
//! parsed document, so a string — a path above all — is written as a TOML string that holds
//! exactly its characters: a `"` or `\` in a path stays what it is.

/// The override `key = value` for a string value.
pub(crate) fn set_string(key: &str, value: &str) -> String {
    format!("{key}={}", toml_string(value))
}

/// `s` as a TOML basic string: `"` and `\` escaped, and every control character but tab as
/// `\uXXXX`; everything else as it is.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push('\t'),
            c if c.is_ascii_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flow loader's document gets exactly the string, whatever it holds.
    #[test]
    fn a_string_override_reaches_the_flow_exactly() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/flows/valid/train-tiny.toml");
        for value in [
            r#"runs/a "quoted" dir\with\backslashes"#,
            "tab\tnewline\nbell\u{7}del\u{7f} ünïcode ✓",
            "' = [1, 2] # not a comment",
            "",
            "true",
            "42",
        ] {
            let loaded = rlrig_flow::load(
                &path,
                &[
                    set_string("prompts.source", "file"),
                    set_string("run_dir", value),
                    set_string("prompts.path", value),
                ],
            )
            .unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(loaded.flow.run_dir, std::path::Path::new(value));
            assert_eq!(
                loaded.flow.prompts.path.as_deref(),
                Some(std::path::Path::new(value))
            );
        }
    }
}
