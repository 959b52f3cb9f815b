//! The engine with instrumented role kinds: batching, supervision and retries, flow control,
//! stop signals. Every trajectory offered must come out, done or failed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, DenoisingChain, Diffuser, EditPolicy, EditProposal,
    EditRequest, Editor, GenerateRequest, Image, Outcome, ProposeRequest, Role, RoleError,
    SampledImage, SceneGraph, StepOutput, Trajectory, WeightsUpdate,
};
use rlrig_engine::{Engine, Registry, RunSummary, StopSignal};
use rlrig_sg::read_jsonl;
use tokio::sync::{mpsc, watch};

/// Knobs shared by the test kinds of one test.
#[derive(Default)]
struct Knobs {
    /// The checker panics on every k-th request it sees (0: never).
    panic_every: usize,
    /// The checker fails every batch holding a prompt whose img_id is "poison".
    poison: bool,
    /// The policy writes a bad edit (the editor then fails to fix the image) for two seeds in
    /// three.
    graded: bool,
    /// Per-request sleep of the editor and of the others.
    editor_ms: u64,
    other_ms: u64,
    checked: AtomicUsize,
    batch_sizes: Mutex<Vec<usize>>,
    /// Images alive (created and not yet dropped by the engine) — a memory gauge.
    live_images: AtomicUsize,
    live_max: AtomicUsize,
}

/// The diffuser, with the version of its weights (Flow-GRPO on the generator).
struct Gen(Arc<Knobs>, u64);
struct Check(Arc<Knobs>);
struct Pol(Arc<Knobs>, u64);
/// The editor, with the version of its weights (phase 2).
struct Edit(Arc<Knobs>, u64);

fn image(k: &Knobs, tag: u8) -> Image {
    let n = k.live_images.fetch_add(1, Ordering::SeqCst) + 1;
    k.live_max.fetch_max(n, Ordering::SeqCst);
    Image::filled(2, 2, [tag, 0, 0])
}

impl Diffuser for Gen {
    fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
        assert!(batch.iter().all(|r| !r.explore), "plain images only here");
        std::thread::sleep(Duration::from_millis(self.0.other_ms * batch.len() as u64));
        Ok(batch.iter().map(|_| image(&self.0, 1)).collect())
    }

    /// An exploring image passes the check for one seed in three; its chain records the seed
    /// (in its one log-prob) and the weights' version.
    fn generate_explore(
        &mut self,
        batch: &[GenerateRequest],
    ) -> Result<Vec<SampledImage>, RoleError> {
        Ok(batch
            .iter()
            .map(|r| SampledImage {
                image: image(&self.0, if r.seed % 3 == 0 { 2 } else { 1 }),
                chain: DenoisingChain::new(
                    self.1,
                    0.7,
                    1.0,
                    [1, 1, 1],
                    &[1.0, 0.5],
                    vec![(r.seed % 1000) as f32],
                )
                .unwrap(),
            })
            .collect())
    }

    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.1 = update.version;
        Ok(())
    }
}

impl Checker for Check {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        std::thread::sleep(Duration::from_millis(self.0.other_ms * batch.len() as u64));
        self.0.batch_sizes.lock().unwrap().push(batch.len());
        if self.0.poison
            && batch
                .iter()
                .any(|r| r.prompt.img_id.as_deref() == Some("poison"))
        {
            return Err(RoleError("cannot judge a poisoned prompt".into()));
        }
        let mut out = Vec::new();
        for r in batch {
            let n = self.0.checked.fetch_add(1, Ordering::SeqCst) + 1;
            if self.0.panic_every > 0 && n.is_multiple_of(self.0.panic_every) {
                panic!("checker crashed on request {n}");
            }
            // The editor stamps a 2 in the red channel: edited images pass.
            let score = if r.image.get(0, 0)[0] == 2 { 1.0 } else { 0.0 };
            out.push(CheckReport {
                items: vec![],
                relations: vec![],
                score,
                reflection: String::new(),
                graph: None,
                estimates: None,
            });
        }
        Ok(out)
    }
}

impl EditPolicy for Pol {
    fn propose(&mut self, batch: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        std::thread::sleep(Duration::from_millis(self.0.other_ms * batch.len() as u64));
        Ok(batch
            .iter()
            .map(|r| EditProposal {
                edit_prompt: if self.0.graded && r.seed % 3 != 0 {
                    "fix it badly".into()
                } else {
                    "fix it".into()
                },
                token_ids: vec![],
                logprobs: vec![],
                policy_version: self.1,
            })
            .collect())
    }

    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.1 = update.version;
        Ok(())
    }
}

impl Editor for Edit {
    /// Phase 2: an exploring edit succeeds for one seed in three, and its chain records the
    /// seed (in its one log-prob) and the weights' version.
    fn edit_explore(&mut self, batch: &[EditRequest]) -> Result<Vec<SampledImage>, RoleError> {
        Ok(batch
            .iter()
            .map(|r| SampledImage {
                image: image(&self.0, if r.seed % 3 == 0 { 2 } else { 3 }),
                chain: DenoisingChain::new(
                    self.1,
                    0.7,
                    1.0,
                    [1, 1, 1],
                    &[1.0, 0.5],
                    vec![(r.seed % 1000) as f32],
                )
                .unwrap(),
            })
            .collect())
    }

    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.1 = update.version;
        Ok(())
    }

    fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
        assert!(batch.iter().all(|r| !r.explore), "plain edits only here");
        std::thread::sleep(Duration::from_millis(self.0.editor_ms * batch.len() as u64));
        Ok(batch
            .iter()
            .map(|r| {
                image(
                    &self.0,
                    if r.edit_prompt.ends_with("badly") {
                        3
                    } else {
                        2
                    },
                )
            })
            .collect())
    }
}

fn registry(k: &Arc<Knobs>) -> Registry {
    let mut r = Registry::new();
    let ok = |_: &serde_json::Value| Ok(());
    let k1 = k.clone();
    r.add_diffuser("t.gen", "", ok, move |_: serde_json::Value, _| {
        Ok(Box::new(Gen(k1.clone(), 0)))
    });
    let k2 = k.clone();
    r.add_checker("t.check", "", ok, move |_: serde_json::Value, _| {
        Ok(Box::new(Check(k2.clone())))
    });
    let k3 = k.clone();
    r.add_policy("t.policy", "", ok, move |_: serde_json::Value, _| {
        Ok(Box::new(Pol(k3.clone(), 0)))
    });
    let k4 = k.clone();
    r.add_editor("t.edit", "", ok, move |_: serde_json::Value, _| {
        Ok(Box::new(Edit(k4.clone(), 0)))
    });
    r
}

fn flow(extra: &str) -> rlrig_flow::LoadedFlow {
    let text = format!(
        r#"
name = "t"
[prompts]
source = "world"
count = 1
[actors.gen]
role = "diffuser"
kind = "t.gen"
batch = 4
[actors.check]
role = "checker"
kind = "t.check"
batch = 8
max_wait_ms = 5
[actors.policy]
role = "policy"
kind = "t.policy"
batch = 8
[actors.edit]
role = "editor"
kind = "t.edit"
batch = 2
[cycle]
start = ["gen", "check"]
round = ["policy", "edit", "check"]
max_rounds = 2
stop_score = 1.0
{extra}
"#
    );
    rlrig_flow::load_str(Path::new("test.toml"), &text, &[]).expect("valid test flow")
}

fn prompts(n: u64) -> Vec<(u64, SceneGraph)> {
    (0..n)
        .map(|i| {
            let id = if i == 7 { "poison".to_string() } else { i.to_string() };
            let g = read_jsonl(
                &format!(r#"{{"img_id": "{id}", "items": [{{"item_id": 0, "label": "circle", "attributes": ["red"]}}]}}"#),
                "t",
            )
            .unwrap()
            .remove(0);
            (i, g)
        })
        .collect()
}

async fn run_all(
    engine: &Engine,
    n: u64,
    stop: watch::Receiver<StopSignal>,
    k: &Arc<Knobs>,
) -> (RunSummary, Vec<Trajectory>) {
    let (tx, mut rx) = mpsc::channel::<Trajectory>(4);
    let k = k.clone();
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(t) = rx.recv().await {
            // The engine is done with this trajectory's images.
            let imgs = t
                .steps
                .iter()
                .filter(|s| matches!(s.output, StepOutput::Image(_)))
                .count();
            k.live_images.fetch_sub(imgs, Ordering::SeqCst);
            v.push(t);
        }
        v
    });
    let summary = engine.run(prompts(n), tx, stop).await;
    (summary, collect.await.unwrap())
}

fn ids(ts: &[Trajectory]) -> HashSet<u64> {
    ts.iter().map(|t| t.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cycle_runs_and_batches() {
    let k = Arc::new(Knobs::default());
    let engine = Engine::start(&flow(""), &registry(&k)).await.unwrap();
    let (_tx, stop) = watch::channel(StopSignal::Run);
    let (summary, ts) = run_all(&engine, 40, stop, &k).await;
    engine.shutdown().await;
    assert_eq!((summary.started, summary.done, summary.failed), (40, 40, 0));
    assert_eq!(ids(&ts), (0..40).collect());
    for t in &ts {
        // gen, check(0), policy, edit, check(1) = 1.0 → stop.
        assert_eq!(
            t.steps.len(),
            5,
            "{:?}",
            t.steps.iter().map(|s| &s.actor).collect::<Vec<_>>()
        );
        assert_eq!(
            t.outcome,
            Outcome::Done {
                answer: 3,
                score: Some(1.0)
            }
        );
    }
    let sizes = k.batch_sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|&s| s <= 8));
    assert!(
        sizes.iter().any(|&s| s > 1),
        "requests in flight together are batched: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_actor_is_restarted_and_nothing_vanishes() {
    let k = Arc::new(Knobs {
        panic_every: 7,
        ..Default::default()
    });
    let engine = Engine::start(
        &flow("[engine]\nmax_attempts = 4\nmax_in_flight = 8"),
        &registry(&k),
    )
    .await
    .unwrap();
    let (_tx, stop) = watch::channel(StopSignal::Run);
    let (summary, ts) = run_all(&engine, 60, stop, &k).await;
    let restarts = engine.stats().restarts.load(Ordering::SeqCst);
    engine.shutdown().await;
    assert_eq!(
        ids(&ts),
        (0..60).collect(),
        "every trajectory is accounted for"
    );
    assert_eq!(summary.done + summary.failed, 60);
    assert!(
        restarts >= 5,
        "the checker crashed and was restarted: {restarts}"
    );
    for t in &ts {
        match &t.outcome {
            Outcome::Done { .. } => {}
            Outcome::Failed { error } => assert!(
                error.contains("\"check\" failed") && error.contains("panicked"),
                "{error}"
            ),
        }
    }
    let retried = ts
        .iter()
        .flat_map(|t| &t.steps)
        .filter(|s| s.attempts > 1)
        .count();
    assert!(retried > 0, "some requests succeeded on a retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_always_fails_fails_its_trajectory_only() {
    let k = Arc::new(Knobs {
        poison: true,
        ..Default::default()
    });
    let engine = Engine::start(&flow(""), &registry(&k)).await.unwrap();
    let (_tx, stop) = watch::channel(StopSignal::Run);
    let (summary, ts) = run_all(&engine, 30, stop, &k).await;
    engine.shutdown().await;
    assert_eq!((summary.done, summary.failed), (29, 1));
    let bad = ts.iter().find(|t| t.id == 7).unwrap();
    match &bad.outcome {
        Outcome::Failed { error } => {
            assert_eq!(
                error,
                "actor \"check\" failed 3 times: cannot judge a poisoned prompt"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_editor_does_not_grow_queues_or_memory() {
    let k = Arc::new(Knobs {
        editor_ms: 20,
        other_ms: 2,
        ..Default::default()
    });
    let engine = Engine::start(&flow("[engine]\nmax_in_flight = 6"), &registry(&k))
        .await
        .unwrap();
    let (_tx, stop) = watch::channel(StopSignal::Run);
    let (summary, _) = run_all(&engine, 60, stop, &k).await;
    let stats = engine.stats();
    engine.shutdown().await;
    assert_eq!(summary.done, 60);
    assert!(stats.in_flight_max.load(Ordering::SeqCst) <= 6);
    for (name, max) in &stats.outstanding_max {
        assert!(
            max.load(Ordering::SeqCst) <= 6,
            "{name} had {} requests outstanding",
            max.load(Ordering::SeqCst)
        );
    }
    assert_eq!(
        stats.outstanding_max["edit"].load(Ordering::SeqCst),
        6,
        "the slow editor holds every credit"
    );
    // Each trajectory holds at most 2 images until the sink (capacity 4) takes it.
    let live = k.live_max.load(Ordering::SeqCst);
    assert!(live <= 2 * (6 + 4 + 1), "images alive at once: {live}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_new_prompts_and_cancel_fails_those_in_flight() {
    let k = Arc::new(Knobs {
        editor_ms: 30,
        ..Default::default()
    });
    let engine = Engine::start(&flow("[engine]\nmax_in_flight = 4"), &registry(&k))
        .await
        .unwrap();
    let (tx, stop) = watch::channel(StopSignal::Run);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(StopSignal::Drain).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(StopSignal::Cancel).unwrap();
    });
    let (summary, ts) = run_all(&engine, 1000, stop, &k).await;
    stopper.await.unwrap();
    engine.shutdown().await;
    assert!(!summary.all_started);
    assert!(summary.started < 1000);
    assert_eq!(
        ts.len(),
        summary.started,
        "every started trajectory is reported"
    );
    assert!(
        ts.iter().any(
            |t| matches!(&t.outcome, Outcome::Failed { error } if error.contains("cancelled"))
        )
    );
}

/// The consumer fails (a full disk) and drops its end: the run stops starting prompts and
/// returns, counting what it could not deliver, instead of running every prompt to no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_sink_stops_the_run() {
    let k = Arc::new(Knobs {
        editor_ms: 5,
        ..Default::default()
    });
    let engine = Engine::start(&flow("[engine]\nmax_in_flight = 4"), &registry(&k))
        .await
        .unwrap();
    let (_tx, stop) = watch::channel(StopSignal::Run);
    let (sink, mut rx) = mpsc::channel::<Trajectory>(1);
    let consumer = tokio::spawn(async move {
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        // Dropping `rx` closes the sink.
    });
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        engine.run(prompts(1000), sink, stop),
    )
    .await
    .expect("the run returns once its sink is closed");
    consumer.await.unwrap();
    engine.shutdown().await;
    assert!(!summary.all_started);
    // Three received, at most one left in the channel, the rest in flight when it closed.
    assert!(summary.started <= 3 + 1 + 4 + 1, "{}", summary.started);
    assert!(summary.undelivered <= 4 + 1);
    assert_eq!(summary.done + summary.failed, summary.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_round_runs_as_branches_and_goes_on_from_the_best() {
    let k = Arc::new(Knobs {
        graded: true,
        ..Knobs::default()
    });
    let loaded = flow("[train]\nactor = \"policy\"\nnum_generations = 4\nsteps = 1");
    let engine = Engine::start(&loaded, &registry(&k)).await.unwrap();
    let (_stop_tx, stop_rx) = watch::channel(StopSignal::Run);
    let (summary, ts) = run_all(&engine, 30, stop_rx, &k).await;
    engine.shutdown().await;
    assert_eq!(summary.done, 30);
    let mut mixed = 0;
    for t in &ts {
        let rounds = t.steps.iter().map(|s| s.round).max().unwrap();
        for round in 1..=rounds {
            let steps: Vec<_> = t.steps.iter().filter(|s| s.round == round).collect();
            assert_eq!(steps.len(), 12, "4 branches × (policy, edit, check)");
            let kept: HashSet<u32> = steps
                .iter()
                .filter_map(|s| s.branch.filter(|b| b.kept).map(|b| b.index))
                .collect();
            assert_eq!(kept.len(), 1, "one branch kept per round");
        }
        let groups = t.grpo_groups(&rlrig_contract::Reward::default()).unwrap();
        assert_eq!(groups.len() as u32, rounds, "one group per sampled round");
        for g in &groups {
            assert_eq!(g.samples.len(), 4);
            let rewards: Vec<f64> = g.samples.iter().map(|s| s.reward).collect();
            let best = rewards.iter().cloned().fold(0.0, f64::max);
            // The line goes on from the best branch: a round with a good edit ends the trajectory.
            if best == 1.0 {
                assert_eq!(g.round, rounds);
                assert!(matches!(t.outcome, Outcome::Done { score: Some(s), .. } if s == 1.0));
            }
            if rewards.iter().any(|&r| r != rewards[0]) {
                mixed += 1;
            }
        }
    }
    assert!(
        mixed > 0,
        "branches have their own seeds, so their edits differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_two_branches_at_the_editor_and_keeps_its_chains() {
    let k = Arc::new(Knobs::default());
    let loaded = flow("[train]\nactor = \"edit\"\nnum_generations = 4\nsteps = 1");
    let engine = Engine::start(&loaded, &registry(&k)).await.unwrap();
    let updater = engine.weights_updater("edit").unwrap();
    let (_stop_tx, stop_rx) = watch::channel(StopSignal::Run);
    let (summary, ts) = run_all(&engine, 30, stop_rx.clone(), &k).await;
    assert_eq!(summary.done, 30);
    let mut mixed = 0;
    for t in &ts {
        let rounds = t.steps.iter().map(|s| s.round).max().unwrap();
        assert!(rounds >= 1);
        for round in 1..=rounds {
            let steps: Vec<_> = t.steps.iter().filter(|s| s.round == round).collect();
            assert_eq!(
                steps.len(),
                9,
                "the policy once, then 4 branches × (edit, check)"
            );
            assert_eq!(steps[0].role, Role::Policy);
            assert!(steps[0].branch.is_none(), "the Policy is not sampled");
            for s in &steps[1..] {
                assert!(s.branch.is_some());
                assert_eq!(s.chain.is_some(), s.role == Role::Editor);
            }
        }
        let groups = t.grpo_groups(&rlrig_contract::Reward::default()).unwrap();
        assert_eq!(groups.len() as u32, rounds, "one group per sampled round");
        for g in &groups {
            assert_eq!(g.samples.len(), 4);
            // Every sample applied the line's one edit prompt, with its own noise.
            assert!(
                g.samples
                    .iter()
                    .all(|s| s.proposal.as_ref().unwrap().edit_prompt == "fix it")
            );
            let seeds: HashSet<u32> = g
                .samples
                .iter()
                .map(|s| s.chain.as_ref().unwrap().log_probs[0] as u32)
                .collect();
            assert_eq!(seeds.len(), 4, "each branch's Editor has its own seed");
            assert!(g.samples.iter().all(|s| s.version() == 0));
            if g.samples.iter().any(|s| s.reward != g.samples[0].reward) {
                mixed += 1;
            }
        }
    }
    assert!(mixed > 0, "the Editor's noise makes rewards differ");
    // New Editor weights reach the Editor: later chains carry the version.
    updater
        .send(WeightsUpdate {
            version: 2,
            weights: vec![],
        })
        .unwrap();
    let (_, ts) = run_all(&engine, 5, stop_rx, &k).await;
    let versions: HashSet<u64> = ts
        .iter()
        .flat_map(|t| &t.steps)
        .filter_map(|s| s.chain.as_ref().map(|c| c.version))
        .collect();
    assert_eq!(versions, HashSet::from([2]));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_diffuser_branches_at_round_zero_and_keeps_its_chains() {
    let k = Arc::new(Knobs::default());
    let loaded = flow("[train]\nactor = \"gen\"\nnum_generations = 4\nsteps = 1");
    let engine = Engine::start(&loaded, &registry(&k)).await.unwrap();
    let updater = engine.weights_updater("gen").unwrap();
    let (_stop_tx, stop_rx) = watch::channel(StopSignal::Run);
    let (summary, ts) = run_all(&engine, 30, stop_rx.clone(), &k).await;
    assert_eq!(summary.done, 30);
    let mut mixed = 0;
    for t in &ts {
        let start: Vec<_> = t.steps.iter().filter(|s| s.round == 0).collect();
        assert_eq!(start.len(), 8, "4 branches × (generate, check)");
        for s in &start {
            assert!(s.branch.is_some());
            assert_eq!(s.chain.is_some(), s.role == Role::Diffuser);
        }
        assert_eq!(
            start.iter().filter(|s| s.on_line()).count(),
            2,
            "one branch is kept"
        );
        // The rounds after it are not sampled: the Diffuser does not take part in them.
        assert!(
            t.steps
                .iter()
                .filter(|s| s.round > 0)
                .all(|s| s.branch.is_none() && s.chain.is_none())
        );
        let groups = t.grpo_groups(&rlrig_contract::Reward::default()).unwrap();
        assert_eq!(groups.len(), 1, "one group: round 0");
        let g = &groups[0];
        assert_eq!(
            (g.round, g.image.is_none(), g.report.is_none()),
            (0, true, true)
        );
        assert_eq!(g.samples.len(), 4);
        assert!(g.samples.iter().all(|s| s.proposal.is_none()));
        let seeds: HashSet<u32> = g
            .samples
            .iter()
            .map(|s| s.chain.as_ref().unwrap().log_probs[0] as u32)
            .collect();
        assert_eq!(seeds.len(), 4, "each branch's Diffuser has its own seed");
        if g.samples.iter().any(|s| s.reward != g.samples[0].reward) {
            mixed += 1;
        }
    }
    assert!(mixed > 0, "the Diffuser's noise makes rewards differ");
    updater
        .send(WeightsUpdate {
            version: 3,
            weights: vec![],
        })
        .unwrap();
    let (_, ts) = run_all(&engine, 5, stop_rx, &k).await;
    let versions: HashSet<u64> = ts
        .iter()
        .flat_map(|t| &t.steps)
        .filter_map(|s| s.chain.as_ref().map(|c| c.version))
        .collect();
    assert_eq!(versions, HashSet::from([3]));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_updates_reach_every_replica_in_order() {
    let k = Arc::new(Knobs::default());
    let loaded = flow("");
    let engine = Engine::start(&loaded, &registry(&k)).await.unwrap();
    let updater = engine.weights_updater("policy").unwrap();
    let versions = |ts: &[Trajectory]| -> HashSet<u64> {
        ts.iter()
            .flat_map(|t| &t.steps)
            .filter_map(|s| match &s.output {
                StepOutput::Edit(e) => Some(e.policy_version),
                _ => None,
            })
            .collect()
    };
    let (_stop_tx, stop_rx) = watch::channel(StopSignal::Run);
    let (_, ts) = run_all(&engine, 5, stop_rx.clone(), &k).await;
    assert_eq!(versions(&ts), HashSet::from([0]));
    let update = |version| WeightsUpdate {
        version,
        weights: vec![],
    };
    updater.send(update(5)).unwrap();
    updater.send(update(3)).unwrap(); // older: ignored
    let (_, ts) = run_all(&engine, 5, stop_rx, &k).await;
    assert_eq!(versions(&ts), HashSet::from([5]));
    engine.shutdown().await;
    assert!(updater.send(update(6)).is_err(), "a stopped actor says so");
}

/// `max_resamples`: a branch whose edit prompt repeats a lower branch's samples again, so a
/// group holds every edit prompt the policy can write (two here, in four branches) and only
/// the final samples are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resampling_makes_a_groups_edit_prompts_differ() {
    let k = Arc::new(Knobs {
        graded: true,
        ..Knobs::default()
    });
    let count_groups = |ts: &[Trajectory]| {
        let (mut groups, mut both) = (0, 0);
        for t in ts {
            for g in t.grpo_groups(&rlrig_contract::Reward::default()).unwrap() {
                let prompts: HashSet<&str> = g
                    .samples
                    .iter()
                    .map(|s| s.proposal.as_ref().unwrap().edit_prompt.as_str())
                    .collect();
                groups += 1;
                both += usize::from(prompts.len() == 2);
            }
            let rounds = t.steps.iter().map(|s| s.round).max().unwrap();
            for round in 1..=rounds {
                let n = t.steps.iter().filter(|s| s.round == round).count();
                assert_eq!(
                    n, 12,
                    "4 branches × (policy, edit, check): resamples are not recorded"
                );
            }
        }
        (groups, both)
    };
    let mut seen = Vec::new();
    for resamples in [0, 8] {
        let loaded = flow(&format!(
            "[train]\nactor = \"policy\"\nnum_generations = 4\nsteps = 1\nmax_resamples = {resamples}"
        ));
        let engine = Engine::start(&loaded, &registry(&k)).await.unwrap();
        let (_stop_tx, stop_rx) = watch::channel(StopSignal::Run);
        let (summary, ts) = run_all(&engine, 40, stop_rx, &k).await;
        engine.shutdown().await;
        assert_eq!(summary.done, 40);
        seen.push(count_groups(&ts));
    }
    let ((g0, both0), (g8, both8)) = (seen[0], seen[1]);
    assert_eq!(
        both8, g8,
        "with resampling every group holds both edit prompts"
    );
    assert!(
        both0 < g0,
        "without it some groups repeat one prompt ({both0} of {g0})"
    );
}
