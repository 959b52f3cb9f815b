//! The judge client against a real HTTP server on loopback that speaks the chat-completions
//! protocol: good answers, answers in code fences and prose, malformed and slow answers, server
//! errors, retries and their limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rlrig_contract::{CheckRequest, Checker, Image, ItemVerdict, RelationVerdict};
use rlrig_judge::{JudgeChecker, JudgeClient, JudgeSettings, parse_answer};
use rlrig_sg::SceneGraph;

fn truth() -> SceneGraph {
    rlrig_sg::read_jsonl(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}, {"item_id": 1, "label": "square", "attributes": ["blue"]}], "relations": [{"triple_id": 0, "item1": 0, "relation": "left of", "item2": 1}]}"#,
        "t",
    )
    .unwrap()
    .remove(0)
}

/// One scripted reply: a delay, a status and the assistant's text (or a raw body).
#[derive(Clone)]
struct Reply {
    delay_ms: u64,
    status: u16,
    content: Option<String>,
    raw: Option<String>,
}

fn ok(content: &str) -> Reply {
    Reply {
        delay_ms: 0,
        status: 200,
        content: Some(content.into()),
        raw: None,
    }
}

/// Serves the replies in order (the last one repeats); records every request body and
/// authorization header.
struct Server {
    url: String,
    seen: Seen,
}

/// Each request's body and authorization header, in arrival order.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn serve(replies: Vec<Reply>) -> Server {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, mut req) in server.incoming_requests().enumerate() {
            let mut body = String::new();
            req.as_reader().read_to_string(&mut body).unwrap();
            let auth = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.to_string());
            log.lock().unwrap().push((body, auth));
            let r = replies[n.min(replies.len() - 1)].clone();
            // Each reply on its own thread: a slow one does not hold up the next request.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(r.delay_ms));
                let body = r.raw.unwrap_or_else(|| {
                    serde_json::json!({"choices": [{"message": {"role": "assistant", "content": r.content.unwrap_or_default()}}]})
                        .to_string()
                });
                let _ =
                    req.respond(tiny_http::Response::from_string(body).with_status_code(r.status));
            });
        }
    });
    Server { url, seen }
}

fn settings(url: &str) -> JudgeSettings {
    JudgeSettings {
        base_url: url.into(),
        model: "tiny-vlm".into(),
        api_key_env: "RLRIG_TEST_JUDGE_KEY".into(),
        timeout_ms: 300,
        max_attempts: 3,
        backoff_ms: 10,
        temperature: 0.0,
    }
}

#[test]
fn a_good_answer_is_scored_and_the_request_is_well_formed() {
    let s = serve(vec![ok(
        r#"{"objects": ["red circle", "blue square"], "relations": [["red circle", "left of", "blue square"]]}"#,
    )]);
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe { std::env::set_var("RLRIG_TEST_JUDGE_KEY", "sk-test") };
    let client = JudgeClient::new(settings(&s.url)).unwrap();
    let scores = client
        .score(&Image::filled(8, 8, [1, 2, 3]), &truth())
        .unwrap();
    assert_eq!(
        (scores.sg_iou, scores.entity_iou, scores.relation_iou),
        (1.0, 1.0, 1.0)
    );
    let seen = s.seen.lock().unwrap();
    let (body, auth) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["model"], "tiny-vlm");
    let content = &v["messages"][0]["content"];
    assert!(
        content[0]["text"]
            .as_str()
            .unwrap()
            .contains("\"red circle\"")
    );
    assert!(content[0]["text"].as_str().unwrap().contains("\"left of\""));
    assert!(
        content[1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,iVBOR")
    );
}

#[test]
fn fenced_answers_with_prose_duplicates_and_strangers_parse() {
    let a = "Sure! Here is the graph:\n```json\n{\"objects\": [\"Red circle\", \"red circle\", \"green cat\"],\n \"relations\": [{\"subject\": \"red circle\", \"predicate\": \"left of\", \"object\": \"blue square\"}, [\"red circle\", \"left of\", \"blue square\"], [\"red circle\", \"near\", \"blue square\"]]}\n```\nHope it helps {not json}.";
    let x = parse_answer(a, &truth()).unwrap();
    assert_eq!(
        x.entities,
        vec!["red circle".to_string()],
        "deduplicated, strangers dropped"
    );
    assert_eq!(x.triples.len(), 1);
    assert_eq!(x.predicates, vec!["left of".to_string()]);
    assert!(parse_answer("I cannot see anything.", &truth()).is_err());
    assert!(
        parse_answer("{\"relations\": []}", &truth()).is_err(),
        "no objects list"
    );
}

#[test]
fn malformed_slow_and_failing_answers_are_retried_then_reported() {
    let slow = Reply {
        delay_ms: 800,
        ..ok("{}")
    };
    let broken = Reply {
        delay_ms: 0,
        status: 200,
        content: None,
        raw: Some("<html>proxy error</html>".into()),
    };
    let server_error = Reply {
        status: 503,
        ..ok("overloaded")
    };
    let good = ok(r#"{"objects": ["red circle"], "relations": []}"#);
    // Three bad replies then a good one: with three attempts the client gives up and says why.
    let s = serve(vec![
        slow.clone(),
        broken.clone(),
        server_error.clone(),
        good.clone(),
    ]);
    let client = JudgeClient::new(settings(&s.url)).unwrap();
    let t0 = Instant::now();
    let e = client
        .extract(&Image::filled(4, 4, [0, 0, 0]), &truth())
        .unwrap_err()
        .to_string();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the timeout bounds a slow answer"
    );
    assert!(e.contains("failed 3 times (max_attempts)"), "{e}");
    assert!(
        e.contains("1. did not answer within 300 ms (timeout_ms)"),
        "a timeout names its limit: {e}"
    );
    assert!(e.contains("not JSON"), "{e}");
    assert!(e.contains("HTTP 503"), "{e}");

    // One bad reply, then a good one: the retry succeeds.
    let s = serve(vec![server_error, good]);
    let mut checker = JudgeChecker::new(settings(&s.url)).unwrap();
    let r = checker
        .check(&[CheckRequest {
            prompt: truth(),
            image: Image::filled(4, 4, [0, 0, 0]),
        }])
        .unwrap()
        .remove(0);
    assert_eq!(r.items, vec![ItemVerdict::Present, ItemVerdict::Missing]);
    assert_eq!(r.relations, vec![RelationVerdict::CannotTell]);
    assert!((r.score - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(r.reflection, "the blue square is missing.");
    assert_eq!(s.seen.lock().unwrap().len(), 2);
}

#[test]
fn a_timeout_names_its_limit_and_no_key_means_no_authorization_header() {
    let slow = Reply {
        delay_ms: 800,
        ..ok("{}")
    };
    let s = serve(vec![slow]);
    let client = JudgeClient::new(JudgeSettings {
        max_attempts: 1,
        api_key_env: "RLRIG_TEST_JUDGE_KEY_NEVER_SET".into(),
        ..settings(&s.url)
    })
    .unwrap();
    let e = client
        .extract(&Image::filled(4, 4, [0, 0, 0]), &truth())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "the judge at {}/chat/completions did not answer within 300 ms (timeout_ms)",
            s.url
        )
    );
    assert_eq!(s.seen.lock().unwrap()[0].1, None, "no key, no header");
}

#[test]
fn the_checker_spends_max_attempts_per_image_across_the_engines_retries() {
    let good = ok(r#"{"objects": ["red circle"], "relations": []}"#);
    let server_error = Reply {
        status: 503,
        ..ok("overloaded")
    };
    // The first image is answered; the second one never is.
    let s = serve(vec![good, server_error]);
    let request = |colour| CheckRequest {
        prompt: truth(),
        image: Image::filled(4, 4, colour),
    };
    let (a, b) = (request([1, 1, 1]), request([2, 2, 2]));
    let e = JudgeChecker::new(settings(&s.url))
        .unwrap()
        .check(&[a.clone(), b.clone()])
        .unwrap_err()
        .0;
    assert!(e.contains("failed 3 times (max_attempts)"), "{e}");
    assert_eq!(s.seen.lock().unwrap().len(), 4, "1 for a, 3 for b");
    // The engine restarts the replica and retries each request alone: a's answer was kept and
    // b's budget is spent, so nothing more is sent, on this retry or the next.
    let mut checker = JudgeChecker::new(settings(&s.url)).unwrap();
    let r = checker.check(std::slice::from_ref(&a)).unwrap().remove(0);
    assert_eq!(r.items, vec![ItemVerdict::Present, ItemVerdict::Missing]);
    for _ in 0..2 {
        let mut checker = JudgeChecker::new(settings(&s.url)).unwrap();
        assert_eq!(checker.check(std::slice::from_ref(&b)).unwrap_err().0, e);
    }
    assert_eq!(s.seen.lock().unwrap().len(), 4, "max_attempts in all");
}
