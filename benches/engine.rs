//! Engine benchmarks (`cargo bench --bench engine`), each against its reference in the same run:
//!
//! 1. **Overhead**: the 5-step cycle (generate, check, propose, edit, check) with zero-cost
//!    actors, through the engine versus the same calls made directly in one loop. The
//!    difference per trajectory is what the engine costs (actors, routing, batching, credits).
//! 2. **Pipelining**: the infer flow's baseline actors, through the engine versus the same
//!    actors called one request at a time in one sequential loop doing the same cycle.
//! 3. The same with actors that take 1 ms + 0.1 ms per request (like a GPU call or a remote
//!    service), where batching and concurrent stages pay.
//!
//! Prints a table; the numbers and machine go in docs/BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Diffuser, EditPolicy, EditProposal, EditRequest, Editor,
    GenerateRequest, Image, ProposeRequest, RoleError, SceneGraph, Trajectory,
};
use rlrig_engine::{Engine, Registry, StopSignal, mix_seed};
use rlrig_world::{Canvas, sample};
use tokio::sync::{mpsc, watch};

struct G;
struct C;
struct P;
struct E;

impl Diffuser for G {
    fn generate(&mut self, b: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        Ok(b.iter().map(|_| Image::filled(1, 1, [1, 0, 0])).collect())
    }
}
impl Checker for C {
    fn check(&mut self, b: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        Ok(b.iter()
            .map(|r| CheckReport {
                items: vec![],
                relations: vec![],
                score: if r.image.get(0, 0)[0] == 2 { 1.0 } else { 0.0 },
                reflection: String::new(),
                graph: None,
                estimates: None,
            })
            .collect())
    }
}
impl EditPolicy for P {
    fn propose(&mut self, b: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        Ok(b.iter()
            .map(|_| EditProposal {
                edit_prompt: "x".into(),
                token_ids: vec![],
                logprobs: vec![],
                policy_version: 0,
            })
            .collect())
    }
}
impl Editor for E {
    fn edit(&mut self, b: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        Ok(b.iter().map(|_| Image::filled(1, 1, [2, 0, 0])).collect())
    }
}

fn zero_registry() -> Registry {
    let mut r = Registry::new();
    let ok = |_: &serde_json::Value| Ok(());
    r.add_diffuser("z.gen", "", ok, |_: serde_json::Value, _| Ok(Box::new(G)));
    r.add_checker("z.check", "", ok, |_: serde_json::Value, _| Ok(Box::new(C)));
    r.add_policy("z.policy", "", ok, |_: serde_json::Value, _| {
        Ok(Box::new(P))
    });
    r.add_editor("z.edit", "", ok, |_: serde_json::Value, _| Ok(Box::new(E)));
    r
}

const ZERO_FLOW: &str = r#"
name = "bench"
[prompts]
source = "world"
count = 1
[actors.gen]
role = "diffuser"
kind = "z.gen"
batch = 16
[actors.check]
role = "checker"
kind = "z.check"
batch = 16
[actors.policy]
role = "policy"
kind = "z.policy"
batch = 16
[actors.edit]
role = "editor"
kind = "z.edit"
batch = 16
[cycle]
start = ["gen", "check"]
round = ["policy", "edit", "check"]
max_rounds = 3
stop_score = 1.0
[engine]
max_in_flight = 64
"#;

async fn through_engine(
    flow: &str,
    sets: &[String],
    registry: &Registry,
    prompts: Vec<(u64, SceneGraph)>,
) -> (Duration, usize) {
    let loaded = rlrig_flow::load_str(Path::new("bench.toml"), flow, sets).expect("bench flow");
    let engine = Engine::start(&loaded, registry)
        .await
        .expect("engine starts");
    let (tx, mut rx) = mpsc::channel::<Trajectory>(256);
    let sink = tokio::spawn(async move {
        let mut steps = 0;
        while let Some(t) = rx.recv().await {
            steps += t.steps.len();
        }
        steps
    });
    let (_stop_tx, stop) = watch::channel(StopSignal::Run);
    let t0 = Instant::now();
    let summary = engine.run(prompts, tx, stop).await;
    let elapsed = t0.elapsed();
    assert_eq!(summary.failed, 0);
    let steps = sink.await.unwrap();
    engine.shutdown().await;
    (elapsed, steps)
}

/// The same cycle as the flows here, one request at a time, in one loop.
fn sequential(
    prompts: &[(u64, SceneGraph)],
    d: &mut dyn Diffuser,
    c: &mut dyn Checker,
    p: &mut dyn EditPolicy,
    e: &mut dyn Editor,
    max_rounds: u32,
) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut steps = 0;
    for (id, prompt) in prompts {
        // The engine's seeds: trajectory `mix(engine.seed ^ mix(id))`, step k `mix(seed + k)`.
        let seed = mix_seed(mix_seed(*id));
        let step_seed = |k: usize| mix_seed(seed.wrapping_add(k as u64));
        let mut k = 0;
        let mut image = d
            .generate(&[GenerateRequest {
                prompt: prompt.clone(),
                seed: step_seed(k),
                explore: false,
            }])
            .unwrap()
            .remove(0);
        let mut report = c
            .check(&[CheckRequest {
                prompt: prompt.clone(),
                image: image.clone(),
            }])
            .unwrap()
            .remove(0);
        k += 2;
        for _ in 0..max_rounds {
            if report.score >= 1.0 {
                break;
            }
            let edit = p
                .propose(&[ProposeRequest {
                    prompt: prompt.clone(),
                    image: image.clone(),
                    report,
                    seed: step_seed(k),
                }])
                .unwrap()
                .remove(0);
            image = e
                .edit(&[EditRequest {
                    explore: false,
                    image,
                    edit_prompt: edit.edit_prompt,
                    seed: step_seed(k + 1),
                }])
                .unwrap()
                .remove(0);
            report = c
                .check(&[CheckRequest {
                    prompt: prompt.clone(),
                    image: image.clone(),
                }])
                .unwrap()
                .remove(0);
            k += 3;
        }
        steps += k;
    }
    (t0.elapsed(), steps)
}

fn row(name: &str, n: usize, engine: (Duration, usize), seq: (Duration, usize)) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{name:<34} {n:>7} {:>12.1} {:>12.1} {:>9.2} {:>10.0} {:>10.0}",
        per(engine.0),
        per(seq.0),
        seq.0.as_secs_f64() / engine.0.as_secs_f64(),
        n as f64 / engine.0.as_secs_f64(),
        n as f64 / seq.0.as_secs_f64(),
    );
    println!(
        "{:<34} steps: engine {} / sequential {}",
        "", engine.1, seq.1
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<34} {:>7} {:>12} {:>12} {:>9} {:>10} {:>10}",
        "benchmark", "traj", "engine µs/t", "seq. µs/t", "seq/eng", "eng t/s", "seq t/s"
    );

    // 1. Overhead with zero-cost actors.
    let canvas = Canvas::new(32).unwrap();
    let n = 20_000;
    let prompt = sample(&canvas, 0, 0).graph;
    let prompts: Vec<(u64, SceneGraph)> = (0..n).map(|i| (i as u64, prompt.clone())).collect();
    let reg = zero_registry();
    let _warm = rt.block_on(through_engine(
        ZERO_FLOW,
        &[],
        &reg,
        prompts[..1000].to_vec(),
    ));
    let eng = rt.block_on(through_engine(ZERO_FLOW, &[], &reg, prompts.clone()));
    let seq = sequential(&prompts, &mut G, &mut C, &mut P, &mut E, 3);
    row("zero-cost actors (5 steps/traj)", n, eng, seq);

    // 2. The infer flow's baseline actors.
    let flow = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/infer-baseline.toml"),
    )
    .unwrap();
    let n = 2_000;
    let prompts: Vec<(u64, SceneGraph)> = (0..n)
        .map(|i| (i as u64, sample(&canvas, 1000, i as u64).graph))
        .collect();
    let reg = rlrig::builtin_registry();
    let eng = rt.block_on(through_engine(&flow, &[], &reg, prompts.clone()));
    let mut d = rlrig_baseline::MistakenRenderer::new(rlrig_baseline::MistakenRendererConfig {
        mistake_rate: 0.7,
        ..Default::default()
    })
    .unwrap();
    let mut c = rlrig_baseline::OracleChecker::new(Default::default()).unwrap();
    let mut p = rlrig_baseline::RulePolicy::new(Default::default()).unwrap();
    let mut e = rlrig_baseline::SceneEditor::new(rlrig_baseline::SceneEditorConfig {
        context_loss: 0.05,
        ..Default::default()
    })
    .unwrap();
    let seq = sequential(&prompts, &mut d, &mut c, &mut p, &mut e, 3);
    row("infer flow, baseline actors", n, eng, seq);
    let one = |s: &str| vec![s.to_string()];
    let sets: Vec<String> = ["diffuser", "checker", "policy", "editor"]
        .iter()
        .flat_map(|a| one(&format!("actors.{a}.max_wait_ms=0")))
        .collect();
    let eng0 = rt.block_on(through_engine(&flow, &sets, &reg, prompts.clone()));
    row("  same, max_wait_ms = 0", n, eng0, seq);

    // 3. Actors that take 1 ms a request (sleeping, as a GPU call or a remote service would):
    //    here pipelining and batching pay.
    let n = 300;
    let prompts: Vec<(u64, SceneGraph)> = (0..n).map(|i| (i as u64, prompt.clone())).collect();
    let reg = slow_registry();
    let eng = rt.block_on(through_engine(
        ZERO_FLOW.replace("z.", "s.").as_str(),
        &[],
        &reg,
        prompts.clone(),
    ));
    let seq = sequential(
        &prompts,
        &mut Slow(G),
        &mut Slow(C),
        &mut Slow(P),
        &mut Slow(E),
        3,
    );
    row("1 ms/request actors, batch 16", n, eng, seq);
}

/// Wraps a zero-cost role so that each call takes 1 ms plus 0.1 ms per request.
struct Slow<T>(T);

fn pause(n: usize) {
    std::thread::sleep(Duration::from_micros(1000 + 100 * n as u64));
}

impl Diffuser for Slow<G> {
    fn generate(&mut self, b: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        pause(b.len());
        self.0.generate(b)
    }
}
impl Checker for Slow<C> {
    fn check(&mut self, b: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        pause(b.len());
        self.0.check(b)
    }
}
impl EditPolicy for Slow<P> {
    fn propose(&mut self, b: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        pause(b.len());
        self.0.propose(b)
    }
}
impl Editor for Slow<E> {
    fn edit(&mut self, b: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        pause(b.len());
        self.0.edit(b)
    }
}

fn slow_registry() -> Registry {
    let mut r = Registry::new();
    let ok = |_: &serde_json::Value| Ok(());
    r.add_diffuser("s.gen", "", ok, |_: serde_json::Value, _| {
        Ok(Box::new(Slow(G)))
    });
    r.add_checker("s.check", "", ok, |_: serde_json::Value, _| {
        Ok(Box::new(Slow(C)))
    });
    r.add_policy("s.policy", "", ok, |_: serde_json::Value, _| {
        Ok(Box::new(Slow(P)))
    });
    r.add_editor("s.edit", "", ok, |_: serde_json::Value, _| {
        Ok(Box::new(Slow(E)))
    });
    r
}
