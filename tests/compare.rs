//! `rlrig compare`: paired differences of two runs' per-prompt oracle scores, each run's own
//! interval, and one round instead of the final answers.

use std::path::Path;
use std::process::Command;

fn scores(dir: &Path, rows: &[(u64, f64, &[f64])]) {
    std::fs::create_dir_all(dir).unwrap();
    let lines: Vec<String> = rows
        .iter()
        .map(|(id, fin, rounds)| {
            let m = |v: f64| {
                serde_json::json!({"sg_iou": v, "entity_iou": v, "relation_iou": v, "relation_accuracy": v})
            };
            serde_json::json!({
                "id": id,
                "prompt": format!("prompt {id}"),
                "outcome": "done",
                "final": m(*fin),
                "rounds": rounds.iter().map(|&v| m(v)).collect::<Vec<_>>(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("scores.jsonl"), lines.join("\n") + "\n").unwrap();
}

/// The rows of `compare --json`, one per metric.
fn compare(a: &Path, b: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    compare_doc(a, b, extra)["metrics"]
        .as_array()
        .unwrap()
        .clone()
}

fn compare_doc(a: &Path, b: &Path, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args([
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn paired_differences_own_intervals_and_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Prompt 3 stopped after round 0 in run A: its round 1 is its last image.
    scores(
        &a,
        &[
            (0, 0.2, &[0.0, 0.2]),
            (1, 0.4, &[0.5, 0.4]),
            (2, 0.6, &[0.5, 0.6]),
            (3, 1.0, &[1.0]),
        ],
    );
    scores(
        &b,
        &[
            (0, 0.3, &[0.0, 0.3]),
            (1, 0.5, &[0.5, 0.5]),
            (2, 0.7, &[0.5, 0.7]),
            (3, 1.0, &[1.0, 1.0]),
            (9, 1.0, &[1.0, 1.0]), // not in A: left out
        ],
    );
    let doc = compare_doc(&a, &b, &[]);
    assert_eq!(doc["b"]["missing"], serde_json::json!([]));
    assert_eq!(doc["a"]["missing"], serde_json::json!([9]), "{doc}");
    let rows = compare(&a, &b, &[]);
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r["n"], 4);
        let f = |k: &str| r[k].as_f64().unwrap();
        assert!((f("a") - 0.55).abs() < 1e-12 && (f("b") - 0.625).abs() < 1e-12);
        assert!((f("diff") - 0.075).abs() < 1e-12);
        for (m, ci) in [("a", "a_ci95"), ("b", "b_ci95"), ("diff", "ci95")] {
            let (lo, hi) = (r[ci][0].as_f64().unwrap(), r[ci][1].as_f64().unwrap());
            assert!(lo <= f(m) && f(m) <= hi, "{m}: {lo} ≤ {} ≤ {hi}", f(m));
        }
    }
    // Round 0 (the Diffuser alone) is the same in both runs.
    let rows = compare(&a, &b, &["--round", "0"]);
    assert!(rows.iter().all(|r| r["diff"].as_f64().unwrap() == 0.0));
    let rows = compare(&a, &b, &["--round", "1"]);
    let r = &rows[0];
    assert!((r["a"].as_f64().unwrap() - 0.55).abs() < 1e-12, "{r}");
}
