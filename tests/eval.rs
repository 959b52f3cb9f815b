//! `rlrig eval` on LAION-SG files written by someone else: odd spacing, extra fields, records
//! outside the world's vocabulary, relations naming items that do not exist.

mod common;
use common::{rlrig, text};

const GOOD: &str = r#"
{ "img_id" : "a1",   "caption_ori": "ignored", "score": "7.1",
  "items": [ {"item_id": 0, "label": "circle", "attributes": ["red"], "global_item_id": 9},
             {"item_id": 1, "label":"square","attributes":["blue"]} ],
  "relations": [ {"triple_id": 0, "item1": 0, "relation": "left of", "item2": 1, "extra": true} ] }
{"img_id": "a2", "items": [{"item_id": 0, "label": "triangle", "attributes": ["green"]},
  {"item_id": 1, "label": "circle", "attributes": ["yellow"]}],
  "relations": [{"triple_id": 0, "item1": 1, "relation": "above", "item2": 0}]}
{"img_id": "a3", "items": [{"item_id": 0, "label": "square", "attributes": ["red"]}], "relations": []}
"#;

#[test]
fn eval_reports_rounds_and_final_with_confidence_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    // A JSON array with odd spacing and extra fields, as another tool might write it.
    let records: Vec<serde_json::Value> = serde_json::Deserializer::from_str(GOOD)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let file = tmp.path().join("prompts.json");
    std::fs::write(&file, serde_json::to_string_pretty(&records).unwrap()).unwrap();
    let run_dir = format!("run_dir={}", tmp.path().display());
    let o = rlrig(&[
        "eval",
        "flows/infer-baseline.toml",
        "--prompts",
        file.to_str().unwrap(),
        "--set",
        &run_dir,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("infer-baseline/eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["records"], 3);
    assert_eq!(
        report["rounds"].as_array().unwrap().len(),
        4,
        "rounds 0..=3"
    );
    for m in ["sg_iou", "entity_iou", "relation_iou"] {
        let f = &report["final"][m];
        let (mean, lo, hi) = (
            f["mean"].as_f64().unwrap(),
            f["ci95"][0].as_f64().unwrap(),
            f["ci95"][1].as_f64().unwrap(),
        );
        assert!(
            lo <= mean && mean <= hi && (0.0..=1.0).contains(&mean),
            "{m}: {f}"
        );
    }
}

#[test]
fn eval_refuses_words_outside_the_world_and_unknown_item_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside.jsonl");
    std::fs::write(
        &outside,
        r#"{"img_id": "x", "items": [{"item_id": 0, "label": "cat", "attributes": ["grey"]}], "relations": []}"#,
    )
    .unwrap();
    let o = rlrig(&[
        "eval",
        "flows/infer-baseline.toml",
        "--prompts",
        outside.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("record 1 (x)")
            && t.contains("\"cat\" is not a shape")
            && t.contains("\"grey\" is not a colour"),
        "{t}"
    );

    let dangling = tmp.path().join("dangling.jsonl");
    std::fs::write(
        &dangling,
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}], "relations": [{"triple_id": 0, "item1": 0, "relation": "above", "item2": 7}]}"#,
    )
    .unwrap();
    let o = rlrig(&[
        "eval",
        "flows/infer-baseline.toml",
        "--prompts",
        dangling.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("dangling.jsonl:1") && t.contains('7'), "{t}");
}

/// A chat-completions server that answers every extraction question with all the candidate
/// objects it was offered and no relations.
fn echo_judge() -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            req.as_reader().read_to_string(&mut body).unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let question = v["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string();
            let start = question.find("Candidate objects").unwrap();
            let list = &question[start..];
            let list = &list[list.find('[').unwrap()..=list.find(']').unwrap()];
            let answer = format!("```json\n{{\"objects\": {list}, \"relations\": []}}\n```");
            let reply = serde_json::json!({"choices": [{"message": {"content": answer}}]});
            let _ = req.respond(tiny_http::Response::from_string(reply.to_string()));
        }
    });
    url
}

#[test]
fn eval_with_a_vlm_judge_scores_what_the_judge_extracts() {
    let tmp = tempfile::tempdir().unwrap();
    let url = echo_judge();
    let run_dir = format!("run_dir={}", tmp.path().display());
    let o = rlrig(&[
        "eval",
        "flows/infer-baseline.toml",
        "--prompts",
        "tests/data/world_prompts.jsonl",
        "--set",
        &run_dir,
        "--judge-url",
        &url,
        "--judge-model",
        "echo",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tmp.path().join("infer-baseline");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("eval.json")).unwrap()).unwrap();
    assert!(
        report["judge"]
            .as_str()
            .unwrap()
            .starts_with("echo at http://127.0.0.1:")
    );
    // The echo judge names every object and no relation.
    assert_eq!(report["final"]["entity_iou"]["mean"], 1.0);
    assert_eq!(report["final"]["relation_iou"]["mean"], 0.0);
    assert_eq!(report["rounds"].as_array().unwrap().len(), 4);
    assert!(dir.join("judge_scores.jsonl").is_file());
}
