//! Unit tests of the reply, hello and display helpers.

use super::*;

#[test]
fn commands_and_lines_are_shown_readably() {
    let cmd = |a: &[&str]| display_command(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(cmd(&["python3", "x.py"]), "python3 x.py");
    assert_eq!(cmd(&["sh", "-c", "echo 'hi'"]), r#"sh -c "echo 'hi'""#);
    assert_eq!(cmd(&[]), "no command");
    assert!(cmd(&["a"; 200]).ends_with("..."));
    assert_eq!(quote("hello world"), "hello world");
    let long = "é".repeat(300);
    assert_eq!(
        quote(&long),
        format!("{}... (600 bytes in all)", "é".repeat(200))
    );
}

#[test]
fn replies_are_checked_field_by_field() {
    let ok = |i: usize, v: Value| v.as_u64().ok_or(format!("results[{i}] to be a number"));
    let parse = |text: &str| parse_reply(text, 4, 9, 2, ok);
    assert_eq!(
        parse(r#"{"id": 9, "results": [1, 2]}"#).unwrap(),
        vec![1, 2]
    );
    let expect = |text: &str, want: &str| {
        let e = parse(text).unwrap_err().to_string();
        assert_eq!(e, want, "for {text}");
    };
    expect(
        "hello world",
        r#"malformed reply line 4: expected JSON {"id", "results"|"error"}, got: hello world"#,
    );
    expect(
        r#"{"results": [1, 2]}"#,
        r#"malformed reply line 4: expected JSON {"id", "results"|"error"}, got: {"results": [1, 2]}"#,
    );
    expect(
        r#"{"id": 8, "results": [1, 2]}"#,
        "reply line 4 answers batch 8, but rlrig waits for batch 9",
    );
    expect(
        r#"{"id": 9, "results": [1]}"#,
        "reply line 4 to batch 9 has 1 results for 2 requests",
    );
    expect(
        r#"{"id": 9, "results": [1, "x"]}"#,
        r#"malformed reply line 4: expected results[1] to be a number, got: {"id": 9, "results": [1, "x"]}"#,
    );
    expect(
        r#"{"id": 9, "error": "out of memory"}"#,
        "the process failed batch 9: out of memory",
    );
    expect(
        r#"{"id": 9, "error": "x", "results": [1, 2]}"#,
        r#"malformed reply line 4: expected JSON {"id", "results"|"error"} with "results" an array or "error" a string, not both, got: {"id": 9, "error": "x", "results": [1, 2]}"#,
    );
}

#[test]
fn hellos_are_checked() {
    let hello = |t: &str| check_hello(t, Role::Checker, 1).map_err(|k| k.to_string());
    assert_eq!(
        hello(r#"{"protocol": "rlrig-actor/1", "role": "checker", "v": 2}"#),
        Ok(())
    );
    assert_eq!(
        hello(r#"{"protocol": "rlrig-actor/1", "role": "policy"}"#).unwrap_err(),
        r#"its hello declares role "policy", but it was started as a checker"#
    );
    assert_eq!(
        hello(r#"{"protocol": "rlrig-actor/2", "role": "checker"}"#).unwrap_err(),
        r#"its hello speaks protocol "rlrig-actor/2", but rlrig speaks "rlrig-actor/1""#
    );
    assert_eq!(
        hello("ready").unwrap_err(),
        r#"malformed hello line 1: expected JSON {"protocol": "rlrig-actor/1", "role": "checker"}, got: ready"#
    );
}
