//! Cluster benchmarks (`cargo bench --bench cluster`), each against its reference in the same
//! run, on loopback:
//!
//! 1. **Throughput**: `rlrig run flows/infer-baseline.toml` all local, versus the same flow
//!    with the editor on a second `rlrig node` process (real processes, ractor_cluster over
//!    plain TCP, then over mutual TLS); then all again with an editor that costs 5 ms per
//!    batch of 8 (a stand-in for a model), where the remote hop is small beside the compute.
//!    Medians of 3 runs each.
//! 2. **Serialisation per trajectory**: every request and answer of a stored trajectory, as
//!    the wire encodes them (MessagePack, images as byte strings), encoded and decoded;
//!    against serde_json of the same values (images as arrays of numbers there).
//!
//! Prints a table; the numbers and machine go in docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rlrig_contract::{
    CheckRequest, EditRequest, GenerateRequest, Image, ProposeRequest, StepOutput, Trajectory,
};
use rlrig_engine::wire::{Job, JobReply, decode, encode};
use rlrig_engine::{Request, Response};
use rlrig_store::TrajectoryStore;

const SECRET: &str = "bench-secret";
const PROMPTS: u64 = 2000;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rlrig")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wall time of one `rlrig run` (process start to exit, model builds and connections included).
fn run(flow: &Path, run_dir: &Path, sets: &[String]) -> Duration {
    let t = Instant::now();
    let out = Command::new(bin())
        .args(["run", flow.to_str().unwrap(), "--overwrite"])
        .args(["--set", &format!("run_dir={}", run_dir.display())])
        .args(["--set", &format!("prompts.count={PROMPTS}")])
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .env("RLRIG_CLUSTER_SECRET", SECRET)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An `rlrig node` named `box` on a free port, with `args` (its transport).
fn start_node(args: &[String]) -> (std::process::Child, u16) {
    let port = free_port();
    let mut node = Command::new(bin())
        .args([
            "node",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            "box",
        ])
        .args(args)
        .env("RLRIG_CLUSTER_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    (node, port)
}

fn throughput(tmp: &Path) {
    let certs = tmp.join("certs");
    let made = Command::new("bash")
        .arg(root().join("scripts/cluster-certs.sh"))
        .arg(&certs)
        .args(["coordinator=127.0.0.1", "box=127.0.0.1"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let file = |f: &str| certs.join(f).display().to_string();
    let (mut plain_node, plain_port) = start_node(&["--plain-tcp".into()]);
    let (mut tls_node, tls_port) = start_node(&[
        "--tls-cert".into(),
        file("box.pem"),
        "--tls-key".into(),
        file("box.key"),
        "--tls-ca".into(),
        file("ca.pem"),
    ]);

    let base = std::fs::read_to_string(root().join("flows/infer-baseline.toml")).unwrap();
    let local = tmp.join("local.toml");
    std::fs::write(&local, &base).unwrap();
    let on_node = |name: &str, port: u16, cluster: String| {
        let path = tmp.join(name);
        std::fs::write(
            &path,
            base.replace("[actors.editor]\n", "[actors.editor]\nnode = \"box\"\n")
                + &format!(
                    "\n[nodes.box]\naddress = \"127.0.0.1:{port}\"\n\n[cluster]\n{cluster}\n"
                ),
        )
        .unwrap();
        path
    };
    let plain = on_node("plain.toml", plain_port, "transport = \"plain\"".into());
    let tls = on_node(
        "tls.toml",
        tls_port,
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
            file("coordinator.pem"),
            file("coordinator.key"),
            file("ca.pem")
        ),
    );
    let no_store = "store.trajectories=false".to_string();
    println!(
        "\n{PROMPTS} prompts of flows/infer-baseline.toml (no store), median of 3 runs, wall time of `rlrig run`:"
    );
    println!(
        "{:<38} {:>10} {:>12} {:>8} {:>12} {:>8}",
        "editor", "local", "node, plain", "ratio", "node, TLS", "ratio"
    );
    for (label, extra) in [
        ("baseline (no simulated compute)", vec![]),
        (
            "5 ms per batch of 8 (a model stand-in)",
            vec!["actors.editor.settings.latency_ms=5".to_string()],
        ),
    ] {
        let sets: Vec<String> = std::iter::once(no_store.clone()).chain(extra).collect();
        let (mut l, mut p, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            l.push(run(&local, &tmp.join("runs"), &sets));
            p.push(run(&plain, &tmp.join("runs"), &sets));
            t.push(run(&tls, &tmp.join("runs"), &sets));
        }
        let (l, p, t) = (median(l), median(p), median(t));
        let rate = |d: Duration| PROMPTS as f64 / d.as_secs_f64();
        println!(
            "{label:<38} {:>8.0}/s {:>10.0}/s {:>7.2}× {:>10.0}/s {:>7.2}×",
            rate(l),
            rate(p),
            p.as_secs_f64() / l.as_secs_f64(),
            rate(t),
            t.as_secs_f64() / l.as_secs_f64()
        );
    }
    for node in [&mut plain_node, &mut tls_node] {
        let _ = node.kill();
        let _ = node.wait();
    }
}

/// Every request and answer of a trajectory, as they cross to the actors.
fn messages(t: &Trajectory) -> Vec<(Request, Response)> {
    let mut out = Vec::new();
    let mut image: Option<Image> = None;
    let mut report = None;
    for s in &t.steps {
        match &s.output {
            StepOutput::Image(img) => {
                let request = match &image {
                    None => Request::Generate(GenerateRequest {
                        prompt: t.prompt.clone(),
                        seed: t.seed,
                        explore: false,
                    }),
                    Some(prev) => Request::Edit(EditRequest {
                        image: prev.clone(),
                        edit_prompt: "move the red circle left of the blue square".into(),
                        seed: t.seed,
                        explore: false,
                    }),
                };
                out.push((request, Response::Image(img.clone())));
                image = Some(img.clone());
            }
            StepOutput::Report(r) => {
                out.push((
                    Request::Check(CheckRequest {
                        prompt: t.prompt.clone(),
                        image: image.clone().expect("an image before a report"),
                    }),
                    Response::Report(r.clone()),
                ));
                report = Some(r.clone());
            }
            StepOutput::Edit(p) => out.push((
                Request::Propose(ProposeRequest {
                    prompt: t.prompt.clone(),
                    image: image.clone().expect("an image before a proposal"),
                    report: report.clone().expect("a report before a proposal"),
                    seed: t.seed,
                }),
                Response::Proposal(p.clone()),
            )),
        }
    }
    out
}

fn serialisation(tmp: &Path) {
    let runs = tmp.join("ser");
    let out = Command::new(bin())
        .args(["run", "flows/infer-baseline.toml", "--overwrite"])
        .args(["--set", &format!("run_dir={}", runs.display())])
        .args(["--set", "prompts.count=200"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success());
    let store = TrajectoryStore::open(&runs.join("infer-baseline/store")).unwrap();
    let ts: Vec<Trajectory> = store
        .ids()
        .unwrap()
        .into_iter()
        .map(|i| store.get(i).unwrap().unwrap())
        .collect();
    let msgs: Vec<Vec<(Request, Response)>> = ts.iter().map(messages).collect();
    let n_msgs: usize = msgs.iter().map(|m| m.len() * 2).sum();
    let reps = 20;

    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..reps {
        for m in msgs.iter().flatten() {
            let a = encode(&Job(Box::new(m.0.clone())));
            let b = encode(&JobReply(Ok(m.1.clone())));
            bytes += a.len() + b.len();
            let _: Job = decode(&a).unwrap();
            let _: JobReply = decode(&b).unwrap();
        }
    }
    let wire = t.elapsed() / reps;
    let wire_bytes = bytes / reps as usize;

    let t = Instant::now();
    let mut jbytes = 0;
    for _ in 0..reps {
        for m in msgs.iter().flatten() {
            let a = serde_json::to_vec(&m.0).unwrap();
            let b = serde_json::to_vec(&m.1).unwrap();
            jbytes += a.len() + b.len();
            let _: Request = serde_json::from_slice(&a).unwrap();
            let _: Response = serde_json::from_slice(&b).unwrap();
        }
    }
    let json = t.elapsed() / reps;
    let json_bytes = jbytes / reps as usize;

    // Cloning the values is part of both loops; measure it alone to subtract.
    let t = Instant::now();
    for _ in 0..reps {
        for m in msgs.iter().flatten() {
            std::hint::black_box((m.0.clone(), m.1.clone()));
        }
    }
    let clone = t.elapsed() / reps;
    let per = |d: Duration| (d.saturating_sub(clone)).as_secs_f64() * 1e6 / ts.len() as f64;
    println!(
        "\nserialisation of {} trajectories ({} messages, 32×32 images), per trajectory, encode + decode:",
        ts.len(),
        n_msgs
    );
    println!("{:<28} {:>10} {:>12}", "format", "µs", "bytes");
    println!(
        "{:<28} {:>10.1} {:>12}",
        "wire (MessagePack)",
        per(wire),
        wire_bytes / ts.len()
    );
    println!(
        "{:<28} {:>10.1} {:>12}",
        "serde_json (reference)",
        per(json),
        json_bytes / ts.len()
    );
    println!("ratio wire / json: {:.2}× time", per(wire) / per(json));
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters like libtest's.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let tmp = tempfile::tempdir().unwrap();
    let tmp: PathBuf = tmp.path().to_path_buf();
    if filter
        .as_deref()
        .is_none_or(|f| "serialisation".contains(f))
    {
        serialisation(&tmp);
    }
    if filter.as_deref().is_none_or(|f| "throughput".contains(f)) {
        throughput(&tmp);
    }
}
