//! `rlrig compare` on real runs of the baseline flow: it refuses runs over different prompts
//! (unless `--pair-by-id`) and a round past the last, reports failed and missing prompts per
//! run, and is deterministic (`compare A A` gives A and B the same interval).

mod common;
use common::{rlrig, text};
use std::path::{Path, PathBuf};
use std::process::Output;

const REFUSED: i32 = 2;

/// Runs the baseline flow over `count` world prompts of `seed`, as `name`.
fn baseline(run_dir: &Path, name: &str, seed: u64, count: u32, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "run".to_string(),
        "flows/infer-baseline.toml".into(),
        "--set".into(),
        format!("run_dir={}", run_dir.display()),
        "--set".into(),
        format!("name={name}"),
        "--set".into(),
        format!("prompts.seed={seed}"),
        "--set".into(),
        format!("prompts.count={count}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = rlrig(&args);
    assert!(o.status.success(), "{}", text(&o));
    run_dir.join(name)
}

fn compare(a: &Path, b: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["compare", a.to_str().unwrap(), b.to_str().unwrap()];
    args.extend(extra);
    rlrig(&args)
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON only ({e}): {}", text(o)))
}

#[test]
fn compare_checks_prompts_and_rounds_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = baseline(tmp.path(), "a", 1000, 12, &[]);
    // The same prompts with another renderer seed: a different run over the same prompts.
    let b = baseline(tmp.path(), "b", 1000, 12, &["--set", "engine.seed=7"]);
    // Other prompts under the same ids.
    let other = baseline(tmp.path(), "other", 2000, 12, &[]);

    // The same inputs, the same output; A against itself: equal intervals, a difference of 0.
    let first = compare(&a, &a, &["--json", "--resamples", "500"]);
    let again = compare(&a, &a, &["--json", "--resamples", "500"]);
    assert_eq!(first.stdout, again.stdout);
    let doc = json(&first);
    assert_eq!(doc["paired"], 12);
    for r in doc["metrics"].as_array().unwrap() {
        assert_eq!(r["a"], r["b"], "{r}");
        assert_eq!(r["a_ci95"], r["b_ci95"], "{r}");
        assert_eq!(r["diff"].as_f64(), Some(0.0), "{r}");
        assert_eq!(r["ci95"], serde_json::json!([0.0, 0.0]), "{r}");
    }
    let table = compare(&a, &a, &["--resamples", "500"]);
    assert_eq!(
        table.stdout,
        compare(&a, &a, &["--resamples", "500"]).stdout
    );

    // Runs over the same prompts compare, final and per round up to the last (3).
    let doc = json(&compare(&a, &b, &["--json", "--resamples", "500"]));
    assert_eq!(
        (&doc["paired"], &doc["pairing"]),
        (&serde_json::json!(12), &serde_json::json!("prompt"))
    );
    json(&compare(
        &a,
        &b,
        &["--json", "--round", "3", "--resamples", "200"],
    ));

    // A round past the last is refused.
    let o = compare(&a, &b, &["--round", "4"]);
    assert_eq!(o.status.code(), Some(REFUSED), "{}", text(&o));
    assert!(
        text(&o).contains("--round 4") && text(&o).contains("rounds 0 to 3"),
        "{}",
        text(&o)
    );
    let short = baseline(
        tmp.path(),
        "short",
        1000,
        12,
        &["--set", "cycle.max_rounds=1"],
    );
    let o = compare(&a, &short, &["--round", "2", "--json"]);
    assert_eq!(o.status.code(), Some(REFUSED), "{}", text(&o));
    assert!(o.stdout.is_empty());
    assert!(text(&o).contains("run B"), "{}", text(&o));

    // Different prompts under the same ids are refused, naming both prompts...
    let o = compare(&a, &other, &["--json"]);
    assert_eq!(o.status.code(), Some(REFUSED), "{}", text(&o));
    assert!(o.stdout.is_empty(), "nothing on stdout: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("different prompts") && err.contains("--pair-by-id"),
        "{err}"
    );
    // ... unless told to pair by id.
    let doc = json(&compare(
        &a,
        &other,
        &["--json", "--pair-by-id", "--resamples", "200"],
    ));
    assert_eq!(doc["pairing"], "id");

    // Fewer prompts in one run: the rest are reported missing, the shared ones compared.
    let few = baseline(tmp.path(), "few", 1000, 8, &["--set", "engine.seed=7"]);
    let doc = json(&compare(&a, &few, &["--json", "--resamples", "200"]));
    assert_eq!(doc["paired"], 8);
    assert_eq!(
        doc["b"]["missing"],
        serde_json::json!([8, 9, 10, 11]),
        "{doc}"
    );
    assert_eq!(doc["a"]["missing"], serde_json::json!([]), "{doc}");
    let o = compare(&a, &few, &["--resamples", "200"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("4 missing (in the other run only): ids 8, 9, 10, 11"),
        "{}",
        text(&o)
    );
}

/// Writes a `scores.jsonl` with lines `(id, prompt, final score or None for a failed one)`.
fn scores(dir: &Path, rows: &[(u64, &str, Option<f64>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let lines: Vec<String> = rows
        .iter()
        .map(|(id, prompt, fin)| {
            let m = |v: f64| {
                serde_json::json!({"sg_iou": v, "entity_iou": v, "relation_iou": v, "relation_accuracy": v})
            };
            match fin {
                Some(v) => serde_json::json!({"id": id, "prompt": prompt, "outcome": "done",
                    "final": m(*v), "rounds": [m(0.0), m(*v)]}),
                None => serde_json::json!({"id": id, "prompt": prompt, "outcome": "failed",
                    "error": "actor \"checker\" failed", "final": null, "rounds": []}),
            }
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("scores.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn failed_prompts_are_reported_per_run_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    scores(
        &a,
        &[
            (0, "p0", Some(0.2)),
            (1, "p1", None),
            (2, "p2", Some(0.6)),
            (3, "p3", Some(0.8)),
        ],
    );
    scores(
        &b,
        &[
            (0, "p0", Some(0.3)),
            (1, "p1", Some(0.5)),
            (2, "p2", None),
            (3, "p3", Some(0.9)),
        ],
    );
    let doc = json(&compare(&a, &b, &["--json", "--resamples", "200"]));
    assert_eq!(doc["paired"], 2);
    assert_eq!(doc["a"]["failed"], serde_json::json!([1]));
    assert_eq!(doc["b"]["failed"], serde_json::json!([2]));
    assert_eq!(doc["metrics"][0]["n"], 2);
    let o = compare(&a, &b, &["--resamples", "200"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("1 failed: id 1") && out.contains("1 failed: id 2"),
        "{out}"
    );

    // scores.jsonl without prompts (an older rlrig) cannot be checked: refused, unless by id.
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let m = serde_json::json!({"sg_iou": 0.5, "entity_iou": 0.5, "relation_iou": 0.5});
    let text_old: String = (0..4)
        .map(|id| serde_json::json!({"id": id, "final": m, "rounds": [m]}).to_string() + "\n")
        .collect();
    std::fs::write(old.join("scores.jsonl"), text_old).unwrap();
    let o = compare(&a, &old, &[]);
    assert_eq!(o.status.code(), Some(REFUSED), "{}", text(&o));
    assert!(
        text(&o).contains("does not record its prompts"),
        "{}",
        text(&o)
    );
    json(&compare(
        &a,
        &old,
        &["--json", "--pair-by-id", "--resamples", "200"],
    ));
}
