//! Actors on other nodes: real `rlrig node` processes on loopback ports, a real `rlrig run`
//! placing actors on them (ractor_cluster underneath), a real sled store to compare with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rlrig_contract::{Outcome, StepOutput, Trajectory};
use rlrig_store::TrajectoryStore;

const SECRET: &str = "loopback-test-secret";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rlrig")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `rlrig node` child process, killed when dropped.
struct Node {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Node {
    fn start(name: &str, secret: &str, dir: &Path) -> Node {
        Node::start_on(free_port(), name, secret, dir, "")
    }

    /// A node on `port`, logging to `<dir>/<name><suffix>.log`.
    fn start_on(port: u16, name: &str, secret: &str, dir: &Path, suffix: &str) -> Node {
        let log = dir.join(format!("{name}{suffix}.log"));
        let mut child = Command::new(bin())
            .args([
                "node",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                name,
            ])
            .env("RLRIG_CLUSTER_SECRET", secret)
            .env("RUST_LOG", "info")
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains(&format!("listening on 127.0.0.1:{port}")),
            "node {name} did not start: {line:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Node { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// flows/infer-baseline.toml with `[nodes]` and `node = …` lines added to actors.
fn flow_on_nodes(dir: &Path, nodes: &[(&str, u16)], placements: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join("flows/infer-baseline.toml")).unwrap();
    for (actor, placement) in placements {
        let header = format!("[actors.{actor}]\n");
        assert!(text.contains(&header), "{actor}");
        text = text.replace(&header, &format!("{header}node = {placement}\n"));
    }
    for (name, port) in nodes {
        text.push_str(&format!(
            "\n[nodes.{name}]\naddress = \"127.0.0.1:{port}\"\n"
        ));
    }
    let path = dir.join("flow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `rlrig run FLOW` into `run_dir` with the secret set, killed after `limit`.
fn run(flow: &Path, run_dir: &Path, secret: &str, sets: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(["run", flow.to_str().unwrap(), "--overwrite"])
        .args(["--set", &format!("run_dir={}", run_dir.display())])
        .env("RLRIG_CLUSTER_SECRET", secret)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for s in sets {
        cmd.args(["--set", s]);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("rlrig run did not finish within {limit:?}: it hangs");
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn trajectories(dir: &Path) -> Vec<Trajectory> {
    let store = TrajectoryStore::open(&dir.join("store")).unwrap();
    store
        .ids()
        .unwrap()
        .into_iter()
        .map(|id| store.get(id).unwrap().unwrap())
        .collect()
}

/// What a trajectory computed, without timings and attempt counts.
fn results(t: &Trajectory) -> serde_json::Value {
    let steps: Vec<_> = t
        .steps
        .iter()
        .map(|s| serde_json::to_value((&s.round, &s.actor, &s.output)).unwrap())
        .collect();
    serde_json::json!({ "id": t.id, "seed": t.seed, "steps": steps, "outcome": t.outcome })
}

#[test]
fn actors_on_two_nodes_give_the_all_local_results() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start("box-a", SECRET, tmp.path());
    let b = Node::start("box-b", SECRET, tmp.path());
    let flow = flow_on_nodes(
        tmp.path(),
        &[("box-a", a.port), ("box-b", b.port)],
        &[
            ("diffuser", "\"box-a\""),
            ("policy", "\"box-b\""),
            ("editor", "[\"box-a\", \"box-b\", \"local\"]\nreplicas = 3"),
        ],
    );
    let sets = ["prompts.count=40"];
    let placed = run(
        &flow,
        &tmp.path().join("placed"),
        SECRET,
        &sets,
        Duration::from_secs(120),
    );
    assert!(placed.status.success(), "{}", text(&placed));
    assert!(
        text(&placed).contains("40 done, 0 failed"),
        "{}",
        text(&placed)
    );
    let local = run(
        &root().join("flows/infer-baseline.toml"),
        &tmp.path().join("local"),
        SECRET,
        &sets,
        Duration::from_secs(120),
    );
    assert!(local.status.success(), "{}", text(&local));

    let placed = trajectories(&tmp.path().join("placed/infer-baseline"));
    let local = trajectories(&tmp.path().join("local/infer-baseline"));
    assert_eq!(placed.len(), 40);
    assert_eq!(
        placed.iter().map(results).collect::<Vec<_>>(),
        local.iter().map(results).collect::<Vec<_>>()
    );
    // The replicas really ran on the nodes.
    for n in [&a, &b] {
        assert!(n.log().contains("replica started"), "{}", n.log());
    }
    assert!(
        a.log().contains("replica=diffuser replica 0"),
        "{}",
        a.log()
    );
    assert!(b.log().contains("replica=policy replica 0"), "{}", b.log());
}

#[test]
fn a_node_killed_mid_run_loses_no_trajectory_and_can_rejoin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::start("box-a", SECRET, tmp.path());
    let b = Node::start("box-b", SECRET, tmp.path());
    let flow = flow_on_nodes(
        tmp.path(),
        &[("box-a", a.port), ("box-b", b.port)],
        &[("editor", "[\"box-a\", \"box-b\"]\nreplicas = 2")],
    );
    let count = 120;
    let sets = [
        format!("prompts.count={count}"),
        "actors.editor.batch=2".into(),
        "actors.editor.settings.latency_ms=60".into(),
        "engine.max_in_flight=8".into(),
        "cluster.rejoin_ms=100".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let run_dir = tmp.path().join("runs");
    let killer = std::thread::spawn({
        let log = a.log.clone();
        move || {
            // Once box-a has answered for a while, SIGKILL it.
            let t = Instant::now();
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("replica started")
            {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "box-a never started a replica"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let port = a.port;
    let (out, back) = std::thread::scope(|s| {
        let h = s.spawn(|| run(&flow, &run_dir, SECRET, &sets, Duration::from_secs(180)));
        killer.join().unwrap();
        a.child.kill().unwrap(); // SIGKILL
        a.child.wait().unwrap();
        // A while later box-a comes back on its address; the run takes it in again.
        std::thread::sleep(Duration::from_millis(300));
        let back = Node::start_on(port, "box-a", SECRET, tmp.path(), "-again");
        let out = h.join().unwrap();
        (out, back)
    });
    assert!(out.status.success(), "{}", text(&out));
    let ts = trajectories(&run_dir.join("infer-baseline"));
    // Every prompt is accounted for: done, or failed with its error.
    assert_eq!(
        ts.iter().map(|t| t.id).collect::<Vec<_>>(),
        (0..count).collect::<Vec<_>>()
    );
    for t in &ts {
        if let Outcome::Failed { error } = &t.outcome {
            assert!(!error.is_empty());
        }
    }
    // With box-b left, nothing needs to fail: the lost requests were retried there.
    assert!(
        ts.iter().all(|t| matches!(t.outcome, Outcome::Done { .. })),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("box-a") && text(&out).contains("lost"),
        "the loss is reported: {}",
        text(&out)
    );
    // The kill happened mid-run (the loss above), and the run went on long enough for box-a
    // to rejoin: the new box-a process hosted the editor replica again.
    assert!(
        back.log().contains("replica=editor replica 0"),
        "box-a did not rejoin: {}\n{}",
        back.log(),
        text(&out)
    );
}

#[test]
fn a_wrong_secret_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start("box-a", SECRET, tmp.path());
    let flow = flow_on_nodes(tmp.path(), &[("box-a", a.port)], &[("editor", "\"box-a\"")]);
    let t = Instant::now();
    let out = run(
        &flow,
        &tmp.path().join("runs"),
        "not-the-secret",
        &["prompts.count=5"],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nodes.box-a`") && err.contains("the shared secrets differ"),
        "{err}"
    );
    assert!(
        !err.contains(SECRET) && !err.contains("not-the-secret"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The node refused it and goes on serving.
    let ok = run(
        &flow,
        &tmp.path().join("runs"),
        SECRET,
        &["prompts.count=5"],
        Duration::from_secs(60),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(!a.log().contains(SECRET));
}

#[test]
fn an_unreachable_node_stops_the_run_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    let flow = flow_on_nodes(
        tmp.path(),
        &[("gpu-box", port)],
        &[("diffuser", "\"gpu-box\"")],
    );
    let out = run(
        &flow,
        &tmp.path().join("runs"),
        SECRET,
        &["prompts.count=5"],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nodes.gpu-box`") && err.contains("cannot reach node \"gpu-box\""),
        "{err}"
    );
    // Nothing ran.
    assert!(trajectories(&tmp.path().join("runs/infer-baseline")).is_empty());
}

#[test]
fn a_trained_policy_on_a_node_gets_every_new_version_by_message() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start("box-a", SECRET, tmp.path());
    let address = format!("nodes.box-a.address=127.0.0.1:{}", a.port);
    let out = run(
        &root().join("tests/flows/valid/train-tiny.toml"),
        tmp.path(),
        SECRET,
        &[&address, "actors.policy.node=box-a", "train.eval_every=0"],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 learner steps"), "{}", text(&out));
    assert!(a.log().contains("replica=policy replica 0"), "{}", a.log());
    // With `max_staleness = 0` a step learns only from proposals of the current version:
    // three steps mean versions 1 and 2 reached the Policy on box-a, and its proposals say so.
    let versions: Vec<u64> = trajectories(&tmp.path().join("train-tiny"))
        .iter()
        .flat_map(|t| t.steps.iter())
        .filter_map(|s| match &s.output {
            StepOutput::Edit(e) => Some(e.policy_version),
            _ => None,
        })
        .collect();
    assert!(versions.contains(&2), "{versions:?}");
}

#[test]
fn evaluating_during_training_on_nodes_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        &root().join("tests/flows/valid/train-tiny.toml"),
        tmp.path(),
        SECRET,
        &[
            "nodes.box-a.address=127.0.0.1:1",
            "actors.policy.node=box-a",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`train.eval_every`") && err.contains("eval_every = 0"),
        "{err}"
    );
    assert!(!tmp.path().join("train-tiny/store").exists());
}
