//! External actors whose processes write without end: memory stays bounded and the error
//! names the actor. Real child processes (inline Python).

use std::path::Path;
use std::time::{Duration, Instant};

use rlrig_contract::{CheckRequest, Checker, Image, Role, SceneGraph};
use rlrig_external::{ExternalActor, ExternalConfig};

const HELLO: &str = r#"print('{"protocol": "rlrig-actor/1", "role": "checker"}', flush=True)"#;

/// A checker that says hello, then runs `then` (Python) when the first batch arrives.
fn checker(then: &str) -> ExternalConfig {
    let script = format!("import sys\n{HELLO}\nsys.stdin.readline()\n{then}\n");
    ExternalConfig::new(["python3".to_owned(), "-c".to_owned(), script])
}

fn request() -> CheckRequest {
    let prompt: SceneGraph = serde_json::from_str(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}], "relations": []}"#,
    )
    .unwrap();
    CheckRequest {
        prompt,
        image: Image::filled(8, 8, [0, 0, 0]),
    }
}

fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn an_endless_stdout_line_stops_the_actor_at_max_line_bytes() {
    let mut cfg = checker("while True: sys.stdout.write('x' * 65536)");
    cfg.max_line_bytes = 1 << 20;
    let mut actor = ExternalActor::spawn("babbler", Role::Checker, &cfg).unwrap();
    let pid = actor.pid().unwrap();
    let started = Instant::now();
    let e = actor.check(&[request()]).unwrap_err().0;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        e.starts_with(r#"external actor "babbler" (python3 -c "#),
        "{e}"
    );
    assert!(
        e.ends_with(
            "line 2, read while waiting for the reply to batch 1, is longer than max_line_bytes \
             (1048576 bytes); the process was killed"
        ),
        "{e}"
    );
    assert!(reaped(pid));
    assert!(!actor.is_alive());
}

#[test]
fn a_hundred_megabyte_line_is_refused_by_the_default_limit() {
    let cfg = checker("sys.stdout.write('y' * (100 << 20) + '\\n'); sys.stdout.flush()");
    assert_eq!(cfg.max_line_bytes, ExternalConfig::DEFAULT_MAX_LINE_BYTES);
    let mut actor = ExternalActor::spawn("flood", Role::Checker, &cfg).unwrap();
    let e = actor.check(&[request()]).unwrap_err().0;
    assert!(
        e.contains("is longer than max_line_bytes (67108864 bytes)"),
        "{e}"
    );
}

#[test]
fn a_long_stderr_line_is_cut_and_the_rest_skipped() {
    let cfg = checker(
        "sys.stderr.write('z' * (10 << 20) + '\\n'); sys.stderr.write('last words\\n'); \
         sys.stderr.flush(); sys.exit(4)",
    );
    let mut actor = ExternalActor::spawn("loud", Role::Checker, &cfg).unwrap();
    let e = actor.check(&[request()]).unwrap_err().0;
    assert!(e.contains("the process exited (exit status: 4)"), "{e}");
    // Kept: 64 KiB of the line and the cut mark (65,536 + 24 bytes), quoted shortened.
    assert!(e.contains("zzz... (65560 bytes in all)"), "{e}");
    assert!(e.ends_with("\n  | last words"), "{e}");
    // The quoted stderr is short even though the process wrote 10 MiB on one line.
    assert!(e.len() < 2_000, "{} bytes", e.len());
}
