//! Actors on other nodes: real `rlrig node` processes on loopback ports, a real `rlrig run`
//! placing actors on them (ractor_cluster underneath), a real sled store to compare with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
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

/// How a node or a coordinator secures its traffic in a test.
#[derive(Clone, Copy)]
enum Wire<'a> {
    /// Mutual TLS with `<own>/<name>.pem` and `.key`, trusting `<ca>/ca.pem`.
    Tls { own: &'a Path, ca: &'a Path },
    /// TCP in the clear, asked for by name.
    Plain,
}

impl<'a> Wire<'a> {
    /// TLS with the certificates and CA of one `cluster-certs.sh` directory.
    fn tls(certs: &'a Path) -> Wire<'a> {
        Wire::Tls {
            own: certs,
            ca: certs,
        }
    }

    /// The `[cluster]` lines of a coordinator's flow.
    fn cluster_section(self) -> String {
        match self {
            Wire::Tls { own, ca } => format!(
                "\n[cluster]\ntls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}\n",
                own.join("coordinator.pem").display(),
                own.join("coordinator.key").display(),
                ca.join("ca.pem").display()
            ),
            Wire::Plain => "\n[cluster]\ntransport = \"plain\"\n".into(),
        }
    }

    /// The arguments of `rlrig node --name name`.
    fn node_args(self, name: &str) -> Vec<String> {
        match self {
            Wire::Tls { own, ca } => vec![
                "--tls-cert".into(),
                own.join(format!("{name}.pem")).display().to_string(),
                "--tls-key".into(),
                own.join(format!("{name}.key")).display().to_string(),
                "--tls-ca".into(),
                ca.join("ca.pem").display().to_string(),
            ],
            Wire::Plain => vec!["--plain-tcp".into()],
        }
    }
}

/// A CA and certificates for the coordinator and nodes `box-a` and `box-b`, all naming
/// 127.0.0.1, made by `scripts/cluster-certs.sh` in `<dir>/<sub>`.
fn certs(dir: &Path, sub: &str) -> PathBuf {
    let out = dir.join(sub);
    let made = Command::new("bash")
        .arg(root().join("scripts/cluster-certs.sh"))
        .arg(&out)
        .args([
            "coordinator=127.0.0.1",
            "box-a=127.0.0.1,localhost",
            "box-b=127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    out
}

/// An `rlrig node` child process, killed when dropped.
struct Node {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Node {
    fn start(name: &str, secret: &str, dir: &Path, wire: Wire) -> Node {
        Node::start_on(free_port(), name, secret, dir, "", wire)
    }

    /// A node on `port`, logging to `<dir>/<name><suffix>.log`.
    fn start_on(port: u16, name: &str, secret: &str, dir: &Path, suffix: &str, wire: Wire) -> Node {
        Node::spawn(port, name, secret, dir, suffix, wire, "info")
    }

    /// A node logging everything it can (`RUST_LOG=trace`).
    fn start_tracing(name: &str, secret: &str, dir: &Path, wire: Wire) -> Node {
        Node::spawn(free_port(), name, secret, dir, "", wire, "trace")
    }

    fn spawn(
        port: u16,
        name: &str,
        secret: &str,
        dir: &Path,
        suffix: &str,
        wire: Wire,
        log_level: &str,
    ) -> Node {
        let log = dir.join(format!("{name}{suffix}.log"));
        let mut child = Command::new(bin())
            .args([
                "node",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                name,
            ])
            .args(wire.node_args(name))
            .env("RLRIG_CLUSTER_SECRET", secret)
            .env("RUST_LOG", log_level)
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

/// flows/infer-baseline.toml with `[nodes]`, `node = …` lines added to actors, and the
/// coordinator's side of `wire`.
fn flow_on_nodes(
    dir: &Path,
    nodes: &[(&str, u16)],
    placements: &[(&str, &str)],
    wire: Wire,
) -> PathBuf {
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
    text.push_str(&wire.cluster_section());
    let path = dir.join("flow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A 4-prompt run of flows/infer-baseline.toml in `dir` with the editor on the node `box-a`
/// at `port`, the coordinator's side of `wire`, killed after `limit_s`.
fn editor_on_node(dir: &Path, port: u16, wire: Wire, limit_s: u64) -> Output {
    let flow = flow_on_nodes(dir, &[("box-a", port)], &[("editor", "\"box-a\"")], wire);
    run(
        &flow,
        &dir.join("runs"),
        SECRET,
        &["prompts.count=4"],
        Duration::from_secs(limit_s),
    )
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
    let certs = certs(tmp.path(), "certs");
    let wire = Wire::tls(&certs);
    let a = Node::start("box-a", SECRET, tmp.path(), wire);
    let b = Node::start("box-b", SECRET, tmp.path(), wire);
    let flow = flow_on_nodes(
        tmp.path(),
        &[("box-a", a.port), ("box-b", b.port)],
        &[
            ("diffuser", "\"box-a\""),
            ("policy", "\"box-b\""),
            ("editor", "[\"box-a\", \"box-b\", \"local\"]\nreplicas = 3"),
        ],
        wire,
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
    let certs = certs(tmp.path(), "certs");
    let wire = Wire::tls(&certs);
    let mut a = Node::start("box-a", SECRET, tmp.path(), wire);
    let b = Node::start("box-b", SECRET, tmp.path(), wire);
    let flow = flow_on_nodes(
        tmp.path(),
        &[("box-a", a.port), ("box-b", b.port)],
        &[("editor", "[\"box-a\", \"box-b\"]\nreplicas = 2")],
        wire,
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
        let back = Node::start_on(port, "box-a", SECRET, tmp.path(), "-again", wire);
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
    let certs = certs(tmp.path(), "certs");
    let wire = Wire::tls(&certs);
    let a = Node::start("box-a", SECRET, tmp.path(), wire);
    let flow = flow_on_nodes(
        tmp.path(),
        &[("box-a", a.port)],
        &[("editor", "\"box-a\"")],
        wire,
    );
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
        Wire::Plain,
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
    let a = Node::start("box-a", SECRET, tmp.path(), Wire::Plain);
    let address = format!("nodes.box-a.address=127.0.0.1:{}", a.port);
    let out = run(
        &root().join("tests/flows/valid/train-tiny.toml"),
        tmp.path(),
        SECRET,
        &[
            &address,
            "actors.policy.node=box-a",
            "train.eval_every=0",
            "cluster.transport=plain",
        ],
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
            "cluster.transport=plain",
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

/// A TCP relay between a coordinator and a node that keeps every byte it forwards, as anyone
/// on the path could.
struct Sniffer {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Sniffer {
    fn start(to: u16) -> Sniffer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { break };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let pairs = [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ];
                for (mut from, mut into) in pairs {
                    let keep = keep.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    keep.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = into.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Sniffer { port, seen }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn node_traffic_is_encrypted_a_relay_on_the_path_reads_no_edit_prompt_or_image() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), "certs");
    // The same run with TLS and in the clear: in the clear the relay must find the edit
    // prompts and images, which shows that it reads what crosses the wire.
    for (wire, sub) in [(Wire::tls(&certs), "tls"), (Wire::Plain, "plain")] {
        let dir = tmp.path().join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let node = Node::start("box-a", SECRET, &dir, wire);
        let relay = Sniffer::start(node.port);
        let flow = flow_on_nodes(
            &dir,
            &[("box-a", relay.port)],
            &[("diffuser", "\"box-a\""), ("editor", "\"box-a\"")],
            wire,
        );
        let out = run(
            &flow,
            &dir.join("runs"),
            SECRET,
            &["prompts.count=16"],
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "{sub}: {}", text(&out));
        let seen = relay.bytes();
        let ts = trajectories(&dir.join("runs/infer-baseline"));
        assert_eq!(ts.len(), 16);
        let mut edits = Vec::new();
        let mut images = Vec::new();
        for s in ts.iter().flat_map(|t| t.steps.iter()) {
            match &s.output {
                StepOutput::Edit(e) => edits.push(e.edit_prompt.clone()),
                // 48 bytes (16 pixels) from the middle of each image.
                StepOutput::Image(i) => {
                    let p = i.pixels();
                    images.push(p[p.len() / 2..p.len() / 2 + 48].to_vec());
                }
                StepOutput::Report(_) => {}
            }
        }
        assert!(!edits.is_empty() && !images.is_empty());
        let edit_seen = edits
            .iter()
            .filter(|e| contains(&seen, e.as_bytes()))
            .count();
        let image_seen = images.iter().filter(|i| contains(&seen, i)).count();
        match wire {
            Wire::Tls { .. } => {
                assert!(seen.len() > 20_000, "the run's traffic passed the relay");
                assert_eq!(
                    (edit_seen, image_seen),
                    (0, 0),
                    "readable on the wire with TLS"
                );
            }
            Wire::Plain => assert!(
                edit_seen == edits.len() && image_seen > 0,
                "in the clear the relay reads {edit_seen} of {} edit prompts and {image_seen} \
                 of {} images",
                edits.len(),
                images.len()
            ),
        }
        // The secret never crosses the wire, encrypted or not.
        assert!(!contains(&seen, SECRET.as_bytes()));
    }
}

#[test]
fn a_peer_whose_certificate_another_ca_signed_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let good = certs(tmp.path(), "cluster");
    let other = certs(tmp.path(), "other");

    // A node with a certificate from another CA: the coordinator refuses it.
    let stranger = Node::start("box-a", SECRET, tmp.path(), Wire::tls(&other));
    let out = editor_on_node(tmp.path(), stranger.port, Wire::tls(&good), 30);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nodes.box-a`")
            && err.contains("TLS handshake with node \"box-a\"")
            && err.contains("certificate")
            && err.contains("cluster.tls.ca"),
        "{err}"
    );
    drop(stranger);

    // A coordinator with a certificate from another CA (trusting the node's CA): the node
    // refuses it, and both sides say why.
    let node = Node::start("box-a", SECRET, tmp.path(), Wire::tls(&good));
    let out = editor_on_node(
        tmp.path(),
        node.port,
        Wire::Tls {
            own: &other,
            ca: &good,
        },
        30,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nodes.box-a`") && err.contains("does not trust this process's certificate"),
        "{err}"
    );
    assert!(
        node.log()
            .contains("TLS certificate is not one of this cluster's"),
        "{}",
        node.log()
    );
    assert!(!tmp.path().join("runs/infer-baseline/store").exists());

    // The node goes on serving its own cluster.
    let ok = editor_on_node(tmp.path(), node.port, Wire::tls(&good), 60);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn plain_tcp_is_used_only_when_asked_for_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // A node without certificates and without --plain-tcp does not start.
    let out = Command::new(bin())
        .args(["node", "--listen", "127.0.0.1:0"])
        .env("RLRIG_CLUSTER_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--plain-tcp"),
        "{}",
        text(&out)
    );
    // Nor does a flow that places actors on nodes without `cluster.tls` or
    // `transport = "plain"`.
    let mut flow = std::fs::read_to_string(root().join("flows/infer-baseline.toml")).unwrap();
    flow = flow.replace("[actors.editor]\n", "[actors.editor]\nnode = \"box-a\"\n");
    flow.push_str("\n[nodes.box-a]\naddress = \"127.0.0.1:1\"\n");
    let path = tmp.path().join("flow.toml");
    std::fs::write(&path, flow).unwrap();
    let out = run(
        &path,
        &tmp.path().join("runs"),
        SECRET,
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`cluster.tls`") && err.contains("transport = \"plain\""),
        "{err}"
    );

    // A TLS coordinator and a plain node (or the other way round) do not talk, and say so
    // without hanging.
    let certs = certs(tmp.path(), "certs");
    let plain = Node::start("box-a", SECRET, tmp.path(), Wire::Plain);
    let t = Instant::now();
    let out = editor_on_node(tmp.path(), plain.port, Wire::tls(&certs), 30);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nodes.box-a`") && err.contains("started with TLS"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    drop(plain);
    let tls = Node::start("box-a", SECRET, tmp.path(), Wire::tls(&certs));
    let out = editor_on_node(tmp.path(), tls.port, Wire::Plain, 30);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nodes.box-a`") && err.contains("expects TLS"),
        "{err}"
    );
}

#[test]
fn the_secret_and_the_private_key_are_in_no_log_and_no_run_file() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), "certs");
    let secret = "a-secret-that-must-not-leak-7f3a9c";
    let key = std::fs::read_to_string(certs.join("coordinator.key")).unwrap();
    let key_lines: Vec<&str> = key.lines().filter(|l| l.len() >= 40).collect();
    assert!(!key_lines.is_empty());
    // The node logs everything it can (trace), the coordinator too.
    let mut node = Node::start_tracing("box-a", secret, tmp.path(), Wire::tls(&certs));
    let port = node.port;
    let flow = flow_on_nodes(
        tmp.path(),
        &[("box-a", port)],
        &[("diffuser", "\"box-a\""), ("editor", "\"box-a\"")],
        Wire::tls(&certs),
    );
    // The secret comes from a file beside the flow, as `cluster.secret_file` says.
    std::fs::write(tmp.path().join("cluster.secret"), secret).unwrap();
    let text_of_flow = std::fs::read_to_string(&flow).unwrap().replace(
        "[cluster]\n",
        "[cluster]\nsecret_file = \"cluster.secret\"\n",
    );
    std::fs::write(&flow, text_of_flow).unwrap();
    let runs = tmp.path().join("runs");
    let out = Command::new(bin())
        .args(["run", flow.to_str().unwrap()])
        .args(["--set", &format!("run_dir={}", runs.display())])
        .args(["--set", "prompts.count=8"])
        .env("RUST_LOG", "trace")
        .env_remove("RLRIG_CLUSTER_SECRET")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let _ = node.child.kill();
    let _ = node.child.wait();
    let mut looked = vec![("rlrig run's output".to_string(), text(&out).into_bytes())];
    looked.push(("the node's log".into(), std::fs::read(&node.log).unwrap()));
    let mut stack = vec![runs.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                looked.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    assert!(looked.len() > 10, "{} files", looked.len());
    assert!(
        looked[0].1.len() + looked[1].1.len() > 10_000,
        "trace logging was on"
    );
    for (what, bytes) in &looked {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "the secret is in {what}"
        );
        for l in &key_lines {
            assert!(
                !contains(bytes, l.as_bytes()),
                "the private key is in {what}"
            );
        }
    }
}

#[test]
fn a_peer_that_connects_and_says_nothing_does_not_shut_coordinators_out() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), "certs");
    let node = Node::start("box-a", SECRET, tmp.path(), Wire::tls(&certs));
    // Three idle connections (a port scanner, a stuck client) held open through the run.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", node.port)).unwrap())
        .collect();
    let t = Instant::now();
    let out = editor_on_node(tmp.path(), node.port, Wire::tls(&certs), 60);
    assert!(out.status.success(), "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(idle);
}
