//! Reading LAION-SG records: real-world records, unusual valid content, malformed input.

use rlrig_sg::{
    ReadError, SceneGraph, read_json, read_jsonl, read_records, write_json, write_jsonl,
};

const SAMPLE: &str = include_str!("../../../tests/data/laion_sg_sample.jsonl");

#[test]
fn laion_sg_sample_records_are_read_with_all_their_fields() {
    let records = read_jsonl(SAMPLE, "laion_sg_sample.jsonl").unwrap();
    assert_eq!(records.len(), 3);
    let falls = &records[0];
    assert_eq!(falls.img_id.as_deref(), Some("482027"));
    assert_eq!(falls.extra["score"], "6.669650077819824");
    assert_eq!(falls.items[0].extra["global_item_id"], 3201429);
    assert_eq!(
        falls.prompt(),
        "white narrow waterfall flowing down rocky tall mountains; rocky tall mountains reflected in \
         calm river; green dense trees beside calm river"
    );
    // Empty attribute list, and an item in no relation (the boat) appended as its node text.
    assert_eq!(
        records[1].prompt(),
        "stone small house near lake; orange sky above stone small house; wooden boat"
    );
    // Two items with the same label, and an unknown nested field kept.
    assert_eq!(records[2].items[0].label, records[2].items[1].label);
    assert_eq!(records[2].extra["extra_field"]["nested"][2], 3);
}

#[test]
fn unusual_but_valid_records_parse_and_round_trip() {
    let text = concat!(
        // Integer img_id, sparse and huge item ids, unicode words, no relations key at all.
        r#"{"img_id": 7, "items": [{"item_id": 18446744073709551615, "label": "café chair", "attributes": ["très", "old"]}, {"item_id": 3, "label": "x"}]}"#,
        "\n\n   \n",
        // A self relation and a duplicated relation are valid records (the world may refuse them).
        r#"{"items": [{"item_id": 0, "label": "cat", "attributes": []}], "relations": [{"item1": 0, "relation": "next to", "item2": 0}, {"item1": 0, "relation": "next to", "item2": 0}], "caption_ori": null}"#,
        "\n",
    );
    let records = read_jsonl(text, "t").unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].img_id.as_deref(), Some("7"));
    assert_eq!(records[0].prompt(), "très old café chair; x");
    assert_eq!(records[1].prompt(), "cat next to cat; cat next to cat");

    for as_json in [false, true] {
        let mut out = Vec::new();
        if as_json {
            write_json(&mut out, &records).unwrap();
        } else {
            write_jsonl(&mut out, &records).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let back = if as_json {
            read_json(&text, "t")
        } else {
            read_jsonl(&text, "t")
        }
        .unwrap();
        assert_eq!(back, records);
    }
    let sample = read_jsonl(SAMPLE, "s").unwrap();
    let mut out = Vec::new();
    write_jsonl(&mut out, &sample).unwrap();
    assert_eq!(
        read_jsonl(std::str::from_utf8(&out).unwrap(), "s").unwrap(),
        sample,
        "unknown fields survive a round trip"
    );
}

fn record_error(e: ReadError) -> (usize, Option<usize>, String, String) {
    match e {
        ReadError::Record {
            line,
            column,
            field,
            message,
            ..
        } => (line, column, field, message),
        other => panic!("expected a record error, got {other}"),
    }
}

/// Ten kinds of malformed input, each placed on line 2 after a good record: the error names the
/// line, the field and what was wrong.
#[test]
fn malformed_records_name_line_and_field() {
    let good = r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}]}"#;
    let cases: [(&str, &str, &str); 10] = [
        (
            r#"{"items": [{"item_id": 0, "label": "circle""#,
            "items[0]",
            "EOF while parsing",
        ),
        (r#"not json"#, "record", "expected ident"),
        (
            r#"[1, 2]"#,
            "record",
            "invalid type: sequence, expected struct SceneGraph",
        ),
        (r#"{"relations": []}"#, "record", "missing field `items`"),
        (
            r#"{"items": {"item_id": 0}}"#,
            "items",
            "invalid type: map, expected a sequence",
        ),
        (
            r#"{"items": [{"item_id": 0, "attributes": []}]}"#,
            "items[0]",
            "missing field `label`",
        ),
        (
            r#"{"items": [{"item_id": "zero", "label": "cat"}]}"#,
            "items[0].item_id",
            "invalid type: string \"zero\", expected u64",
        ),
        (
            r#"{"items": [{"item_id": 0, "label": "cat", "attributes": ["big", 3]}]}"#,
            "items[0].attributes[1]",
            "invalid type: integer `3`, expected a string",
        ),
        (
            r#"{"items": [{"item_id": 0, "label": "cat"}], "relations": [{"item1": 0, "relation": "on", "item2": 9}]}"#,
            "relations[0].item2",
            "no item has item_id 9",
        ),
        (
            r#"{"items": [{"item_id": 0, "label": "cat"}, {"item_id": 0, "label": "dog"}]}"#,
            "items[1].item_id",
            "item_id 0 is used by an earlier item",
        ),
    ];
    for (bad, field, message) in cases {
        let text = format!("{good}\n{bad}\n{good}\n");
        let e = read_jsonl(&text, "prompts.jsonl").unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("prompts.jsonl:2"), "{shown}");
        let (line, _, got_field, got_message) = record_error(e);
        assert_eq!(line, 2, "{bad}");
        assert_eq!(got_field, field, "{bad}: {shown}");
        assert!(got_message.contains(message), "{bad}: {shown}");
        assert!(
            !got_message.contains("at line"),
            "no duplicate position in {shown}"
        );
    }
    // More rules that JSON cannot express.
    for (bad, field) in [
        (r#"{"items": []}"#, "items"),
        (
            r#"{"items": [{"item_id": 0, "label": "  "}]}"#,
            "items[0].label",
        ),
        (
            r#"{"items": [{"item_id": 0, "label": "cat", "attributes": [""]}]}"#,
            "items[0].attributes[0]",
        ),
        (
            r#"{"items": [{"item_id": 0, "label": "cat"}], "relations": [{"item1": 0, "relation": "", "item2": 0}]}"#,
            "relations[0].relation",
        ),
        (
            r#"{"items": [{"item_id": -1, "label": "cat"}]}"#,
            "items[0].item_id",
        ),
        (
            r#"{"items": [{"item_id": 0, "label": "cat"}]} {"items": []}"#,
            "record",
        ),
        (
            r#"{"img_id": [1], "items": [{"item_id": 0, "label": "cat"}]}"#,
            "img_id",
        ),
    ] {
        let (_, _, got, _) = record_error(read_jsonl(bad, "x").unwrap_err());
        assert_eq!(got, field, "{bad}");
    }
}

#[test]
fn json_arrays_report_the_file_line_of_the_bad_record() {
    let text = "[\n  {\"items\": [{\"item_id\": 0, \"label\": \"a\"}]},\n  {\"items\": [\n    {\"item_id\": 0, \"label\": 5}\n  ]}\n]\n";
    let (line, column, field, message) = record_error(read_json(text, "f.json").unwrap_err());
    assert_eq!(
        (line, field.as_str()),
        (4, "[1].items[0].label"),
        "{message}"
    );
    assert!(column.is_some());
    // A validation error inside an array names the line where the record starts.
    let text = "[\n  {\"items\": [{\"item_id\": 0, \"label\": \"a\"}]},\n  {\"items\": []}\n]";
    let (line, _, field, _) = record_error(read_json(text, "f.json").unwrap_err());
    assert_eq!((line, field.as_str()), (3, "[1].items"));
    // Broken array syntax.
    let (line, _, field, _) =
        record_error(read_json("[\n{\"items\": []},\n", "f.json").unwrap_err());
    assert_eq!((line, field.as_str()), (3, "file"));
    // A single object is a one-record file.
    let one = read_json(
        "\n\n{\"items\": [{\"item_id\": 1, \"label\": \"a\"}]}",
        "f.json",
    )
    .unwrap();
    assert_eq!(one.len(), 1);
}

#[test]
fn files_are_read_by_extension_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let g: SceneGraph = read_jsonl(r#"{"items": [{"item_id": 0, "label": "a"}]}"#, "t")
        .unwrap()
        .remove(0);
    let json = dir.path().join("p.json");
    write_json(
        std::fs::File::create(&json).unwrap(),
        &[g.clone(), g.clone()],
    )
    .unwrap();
    assert_eq!(read_records(&json).unwrap().len(), 2);
    let jsonl = dir.path().join("p.jsonl");
    write_jsonl(
        std::fs::File::create(&jsonl).unwrap(),
        std::slice::from_ref(&g),
    )
    .unwrap();
    assert_eq!(read_records(&jsonl).unwrap(), vec![g]);
    let missing = dir.path().join("nope.jsonl");
    let e = read_records(&missing).unwrap_err();
    assert!(matches!(e, ReadError::Io { .. }));
    assert!(e.to_string().contains("nope.jsonl"), "{e}");
}
