//! The `rlrig world` commands, run as a user runs them: the real binary on real files.

use std::path::Path;
use std::process::{Command, Output};

use rlrig_sg::{SceneGraph, Triple, read_jsonl, read_records};

fn rlrig(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args(args)
        .output()
        .expect("runs rlrig")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sample_then_parse_recovers_every_scene() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scenes");
    let o = rlrig(&[
        "world",
        "sample",
        "--n",
        "25",
        "--out",
        arg(&out),
        "--size",
        "64",
        "--seed",
        "9",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_records(&out.join("records.jsonl")).unwrap();
    assert_eq!(records.len(), 25);

    let images: Vec<String> = records
        .iter()
        .map(|r| arg(&out.join(r.name.as_ref().unwrap())).to_string())
        .collect();
    let mut args = vec!["world", "parse"];
    args.extend(images.iter().map(String::as_str));
    let o = rlrig(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let parsed = read_jsonl(std::str::from_utf8(&o.stdout).unwrap(), "stdout").unwrap();
    assert_eq!(parsed.len(), 25);
    for (truth, got) in records.iter().zip(&parsed) {
        assert_eq!(
            got.name, truth.name,
            "parse names each line by its image's file name"
        );
        let found: Vec<Triple> = got.triples();
        let mut a = truth.entities();
        let mut b = got.entities();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert!(truth.triples().iter().all(|t| found.contains(t)));
    }

    let o = rlrig(&[
        "world",
        "judge",
        arg(&out.join("records.jsonl")),
        "--images",
        arg(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last: serde_json::Value = serde_json::from_str(
        std::str::from_utf8(&o.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["mean"]["n"], 25);
    assert_eq!(last["mean"]["relation_accuracy"], 1.0);
    assert_eq!(last["mean"]["mean"]["entity_iou"], 1.0);
}

#[test]
fn render_draws_valid_records_and_names_unsatisfiable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("prompts.jsonl");
    std::fs::write(
        &records,
        concat!(
            r#"{"name": "ok.png", "items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}, {"item_id": 1, "label": "square", "attributes": ["blue"]}], "relations": [{"item1": 0, "relation": "left of", "item2": 1}]}"#,
            "\n",
            r#"{"name": "bad.png", "items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}, {"item_id": 1, "label": "square", "attributes": ["blue"]}], "relations": [{"item1": 0, "relation": "left of", "item2": 1}, {"item1": 1, "relation": "left of", "item2": 0}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = rlrig(&["world", "render", arg(&records), "--out", arg(&out)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("record 1 (bad.png)") && err.contains("left-right relations form a cycle"),
        "{err}"
    );
    assert!(out.join("ok.png").exists());
    assert!(!out.join("bad.png").exists());
    let o = rlrig(&["world", "parse", arg(&out.join("ok.png"))]);
    let g: SceneGraph = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        g.triples()
            .iter()
            .any(|t| t.to_string() == "red circle left of blue square")
    );
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Not a PNG: named, non-zero exit, the good image still parsed.
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let good = dir.path().join("g");
    assert!(
        rlrig(&["world", "sample", "--n", "1", "--out", arg(&good)])
            .status
            .success()
    );
    let o = rlrig(&["world", "parse", arg(&junk), arg(&good.join("000000.png"))]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("junk.png"), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);

    // A malformed records file: file, line and field.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"items\": [{\"item_id\": 0, \"label\": \"circle\"}]}\n{\"items\": [{\"item_id\": 0}]}\n",
    )
    .unwrap();
    let o = rlrig(&[
        "world",
        "render",
        arg(&bad),
        "--out",
        arg(&dir.path().join("o")),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.jsonl:2")
            && err.contains("items[0]")
            && err.contains("missing field `label`"),
        "{err}"
    );

    // LAION-SG records with real-world words: the oracle refuses them, listing the words.
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/laion_sg_sample.jsonl"
    );
    let o = rlrig(&["world", "judge", sample, "--images", arg(dir.path())]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("outside the built-in world's vocabulary") && err.contains("\"mountains\""),
        "{err}"
    );

    // Too small a canvas.
    let o = rlrig(&[
        "world",
        "sample",
        "--n",
        "1",
        "--out",
        arg(dir.path()),
        "--size",
        "8",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("too small"));
}
