//! A process that writes lines without end between batches: rlrig reads ahead only a few lines,
//! so the process waits on its pipe and rlrig's memory stays flat. A test binary of its own, so
//! that no other test's allocations move the resident memory it measures.

use std::time::Duration;

use rlrig_contract::{CheckRequest, Checker, Image, Role, SceneGraph};
use rlrig_external::{ExternalActor, ExternalConfig};

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn lines_written_between_batches_do_not_pile_up_in_memory() {
    let script = r#"import sys
print('{"protocol": "rlrig-actor/1", "role": "checker"}', flush=True)
sys.stdin.readline()
print('{"id": 1, "results": [{"items": ["present"], "relations": [], "score": 1.0, "reflection": "ok"}]}', flush=True)
while True:
    sys.stdout.write('noise\n' * 10000)
"#;
    let cfg = ExternalConfig::new(["python3", "-c", script]);
    let mut actor = ExternalActor::spawn("chatter", Role::Checker, &cfg).unwrap();
    let prompt: SceneGraph = serde_json::from_str(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}], "relations": []}"#,
    )
    .unwrap();
    let request = CheckRequest {
        prompt,
        image: Image::filled(8, 8, [0, 0, 0]),
    };
    assert_eq!(
        actor.check(std::slice::from_ref(&request)).unwrap()[0].score,
        1.0
    );
    let before = resident();
    // The process writes tens of megabytes of lines a second while rlrig does not ask.
    std::thread::sleep(Duration::from_secs(2));
    let grown = resident().saturating_sub(before);
    assert!(grown < 16 << 20, "resident memory grew by {grown} bytes");
    let e = actor.check(&[request]).unwrap_err().0;
    assert!(e.contains("malformed reply line 3"), "{e}");
    assert!(e.ends_with("got: noise"), "{e}");
}
