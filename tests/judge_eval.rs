//! The VLM judge through the real binary, against a real chat-completions server on loopback:
//! `rlrig eval` counts the images the judge could not score instead of giving up, judges a
//! stored run directory without running it again, names a timeout's limit, and the
//! `judge.checker` kind sends at most `max_attempts` requests per image however often the
//! engine retries.

mod common;
use common::{rlrig, text};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What the server does with one extraction question.
enum Reply {
    /// Every candidate object it was offered, no relation.
    Echo,
    /// A 200 whose content is not the JSON asked for.
    Prose,
    /// This HTTP status.
    Status(u16),
    /// An echo after this many milliseconds.
    Slow(u64),
}

/// A chat-completions server answering each question as `policy` says; returns its base URL
/// and the count of requests it received.
fn judge(policy: fn(&str) -> Reply) -> (String, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut body = String::new();
            req.as_reader().read_to_string(&mut body).unwrap();
            std::thread::spawn(move || {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let question = v["messages"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let list = &question[question.find("Candidate objects").unwrap()..];
                let list = &list[list.find('[').unwrap()..=list.find(']').unwrap()];
                let content = match policy(&question) {
                    Reply::Status(code) => {
                        let _ = req.respond(
                            tiny_http::Response::from_string("overloaded").with_status_code(code),
                        );
                        return;
                    }
                    Reply::Prose => "I am not sure what the picture shows.".to_string(),
                    Reply::Slow(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        format!("{{\"objects\": {list}, \"relations\": []}}")
                    }
                    Reply::Echo => format!("{{\"objects\": {list}, \"relations\": []}}"),
                };
                let reply = serde_json::json!({"choices": [{"message": {"content": content}}]});
                let _ = req.respond(tiny_http::Response::from_string(reply.to_string()));
            });
        }
    });
    (url, count)
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_counts_the_images_the_judge_could_not_score_and_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    // Prompt 0-2 (a blue circle) gets prose, prompt 0-3 (a yellow circle) server errors; the
    // other four are answered.
    let (url, _) = judge(|q| {
        if q.contains("\"blue circle\"") {
            Reply::Prose
        } else if q.contains("\"yellow circle\"") {
            Reply::Status(500)
        } else {
            Reply::Echo
        }
    });
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
        "--judge-key-env",
        "RLRIG_TEST_NO_SUCH_KEY",
        "--judge-max-attempts",
        "2",
        "--judge-backoff-ms",
        "1",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(
        t.contains("error: the judge failed on ") && t.contains("judge_scores.jsonl"),
        "{t}"
    );
    assert!(
        t.contains("RLRIG_TEST_NO_SUCH_KEY is not set")
            && t.contains("carry no Authorization header"),
        "{t}"
    );
    // Both tables say who judged; the judge's has relation accuracy and the counts.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("judged by the oracle: means over the 6 done trajectories"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("judged by echo at {url}: 95 % bootstrap")),
        "{stdout}"
    );
    assert!(
        stdout.contains("judged failed")
            && stdout.contains("relation accuracy")
            && stdout.contains("final       4      2"),
        "{stdout}"
    );

    let dir = tmp.path().join("infer-baseline");
    let report = json(&dir.join("eval.json"));
    assert_eq!(
        (report["done"].as_u64(), report["failed"].as_u64()),
        (Some(6), Some(0))
    );
    // Each of the two prompts' distinct images (its first, and any edit) failed.
    let images = &report["images"];
    assert!(images["failed"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        t.contains(&format!(
            "error: the judge failed on {} of {} images",
            images["failed"],
            images["judged"].as_u64().unwrap() + images["failed"].as_u64().unwrap()
        )),
        "{t}"
    );
    for s in report["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&report["final"]])
    {
        assert_eq!(
            (s["judged"].as_u64(), s["failed"].as_u64()),
            (Some(4), Some(2)),
            "{s}"
        );
        assert_eq!(s["sg_iou"]["n"], 4);
        assert_eq!(s["entity_iou"]["mean"], 1.0);
        assert_eq!(s["relation_accuracy"]["mean"], 0.0);
    }
    let errors: Vec<String> = lines(&dir.join("judge_scores.jsonl"))
        .iter()
        .filter_map(|l| l["final"]["error"].as_str().map(str::to_string))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("gave an answer rlrig cannot read"))
            && errors.iter().any(|e| e.contains("answered HTTP 500"))
            && errors
                .iter()
                .all(|e| e.contains("failed 2 times (max_attempts)")),
        "{errors:?}"
    );
    // The run's page shows the judge's table, as Chromium renders it (tests/report.rs checks
    // the rest of the page).
    let profile = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", dir.join("report.html").display()))
        .output()
        .expect("the report's check needs Debian's chromium on the PATH (.ci/run installs it)");
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains(&format!("<h2>Judged by echo at {url}</h2>"))
            && dom.contains("<th>relation accuracy</th>")
            && dom.contains("<tr><td>final</td><td>4</td><td class=\"bad\">2</td>"),
        "report.html lacks the judge's table: {dom}"
    );
}

#[test]
fn eval_of_a_run_directory_judges_its_stored_trajectories_without_running_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = format!("run_dir={}", tmp.path().display());
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        &run_dir,
        "--set",
        "prompts.count=4",
        "--set",
        "name=stored",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tmp.path().join("stored");
    let dir_arg = dir.to_str().unwrap();
    let metrics_before = std::fs::read(dir.join("metrics.json")).unwrap();

    let (url, requests) = judge(|_| Reply::Echo);
    let o = rlrig(&["eval", dir_arg, "--judge-url", &url, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report, json(&dir.join("eval.json")));
    assert_eq!(report["prompts"], serde_json::Value::Null);
    assert_eq!(report["records"], 4);
    assert_eq!(report["final"]["judged"], 4);
    assert_eq!(report["final"]["failed"], 0);
    assert_eq!(report["final"]["entity_iou"]["mean"], 1.0);
    assert_eq!(
        report["rounds"].as_array().unwrap().len(),
        4,
        "rounds 0..=3"
    );
    // Each distinct image once; nothing ran again.
    let images = report["images"]["judged"].as_u64().unwrap() as usize;
    assert_eq!(requests.load(Ordering::SeqCst), images);
    assert_eq!(
        std::fs::read(dir.join("metrics.json")).unwrap(),
        metrics_before
    );
    assert_eq!(lines(&dir.join("judge_scores.jsonl")).len(), 4);
    assert!(
        std::fs::read_to_string(dir.join("report.html"))
            .unwrap()
            .contains(&format!("Judged by judge at {url}"))
    );

    // Without a judge: the oracle's scores the run recorded.
    let o = rlrig(&["eval", dir_arg, "--resamples", "200"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("judged by the oracle: 95 % bootstrap"),
        "{}",
        text(&o)
    );
    assert_eq!(json(&dir.join("eval.json"))["judge"], "oracle");

    // What only running a flow takes is refused, as is a flow without prompts.
    for extra in [
        &["--prompts", "tests/data/world_prompts.jsonl"][..],
        &["--set", "name=x"],
        &["--overwrite"],
    ] {
        let o = rlrig(&[&["eval", dir_arg][..], extra].concat());
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains("is a run directory"), "{}", text(&o));
    }
    let o = rlrig(&["eval", "flows/infer-baseline.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("needs --prompts FILE"), "{}", text(&o));
    let o = rlrig(&["eval", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a run directory"), "{}", text(&o));
}

#[test]
fn a_judge_that_does_not_answer_in_time_is_named_with_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = format!("run_dir={}", tmp.path().display());
    let o = rlrig(&[
        "run",
        "flows/infer-baseline.toml",
        "--set",
        &run_dir,
        "--set",
        "prompts.count=2",
        "--set",
        "cycle.max_rounds=0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tmp.path().join("infer-baseline");
    let (url, _) = judge(|_| Reply::Slow(3_000));
    let o = rlrig(&[
        "eval",
        dir.to_str().unwrap(),
        "--judge-url",
        &url,
        "--judge-timeout-ms",
        "200",
        "--judge-max-attempts",
        "1",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(!t.contains("Network Error"), "{t}");
    let errors: Vec<String> = lines(&dir.join("judge_scores.jsonl"))
        .iter()
        .filter_map(|l| l["final"]["error"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        errors,
        vec![
            format!(
                "the judge at {url}/chat/completions did not answer within 200 ms (timeout_ms)"
            );
            2
        ]
    );
}

#[test]
fn the_judge_checker_sends_at_most_max_attempts_requests_per_image_in_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, requests) = judge(|_| Reply::Status(503));
    let flow = tmp.path().join("judged.toml");
    std::fs::write(
        &flow,
        format!(
            r#"name = "judged"
run_dir = {run_dir:?}

[prompts]
source = "world"
seed = 1000
count = 3

[actors.diffuser]
role = "diffuser"
kind = "baseline.renderer"

[actors.checker]
role = "checker"
kind = "judge.checker"
batch = 4
settings = {{ base_url = {url:?}, model = "m", api_key_env = "RLRIG_TEST_NO_SUCH_KEY", max_attempts = 2, backoff_ms = 1, timeout_ms = 5000 }}

[actors.policy]
role = "policy"
kind = "rules.policy"

[actors.editor]
role = "editor"
kind = "baseline.editor"

[cycle]
start = ["diffuser", "checker"]
round = ["policy", "editor", "checker"]
max_rounds = 1

[engine]
max_attempts = 3
"#,
            run_dir = tmp.path().display().to_string(),
        ),
    )
    .unwrap();
    let o = rlrig(&["run", flow.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    // Three images (each prompt's first), two requests each: the engine's three attempts
    // send nothing more.
    assert_eq!(requests.load(Ordering::SeqCst), 3 * 2, "{t}");
    let scores = lines(&tmp.path().join("judged/scores.jsonl"));
    assert_eq!(scores.len(), 3);
    for l in scores {
        let e = l["error"].as_str().unwrap();
        assert!(
            e.contains("actor \"checker\" failed 3 times")
                && e.contains("failed 2 times (max_attempts): 1. answered HTTP 503"),
            "{e}"
        );
    }
}
