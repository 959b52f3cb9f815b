//! The engine: starts every actor of a flow, drives trajectories through the cycle with a
//! bounded number in flight, and stops cleanly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorRef};
use rlrig_contract::{
    Branch, CheckReport, CheckRequest, EditRequest, GenerateRequest, Image, Outcome,
    ProposeRequest, Reward, Role, SceneGraph, Step, StepOutput, Trajectory, WeightsUpdate,
};
use rlrig_flow::{Answer as AnswerRule, Flow, FlowError, LoadedFlow};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::cluster::Cluster;
use crate::messages::RouterMsg;
use crate::model::{Request, Response};
use crate::registry::Registry;
use crate::router::{Router, RouterArgs};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The flow names kinds or settings the registry rejects.
    #[error("{0}")]
    Flow(#[from] FlowError),
    /// An actor could not be started.
    #[error("{0}")]
    Start(String),
}

/// What the run asks of in-flight work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// Keep going.
    Run,
    /// Take no new prompts; finish the trajectories in flight.
    Drain,
    /// Take no new prompts; cancel the trajectories in flight (recorded as failed).
    Cancel,
}

/// Counters of a running engine.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Trajectories in flight now.
    pub in_flight: AtomicUsize,
    /// The most trajectories in flight at once.
    pub in_flight_max: AtomicUsize,
    /// Trajectories completed.
    pub done: AtomicUsize,
    /// Trajectories recorded as failed.
    pub failed: AtomicUsize,
    /// Replica restarts after failures.
    pub restarts: Arc<AtomicUsize>,
    /// Per actor: the most requests outstanding at once.
    pub outstanding_max: BTreeMap<String, Arc<AtomicUsize>>,
}

/// How a call to [`Engine::run`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// Prompts started.
    pub started: usize,
    /// Trajectories completed.
    pub done: usize,
    /// Trajectories recorded as failed.
    pub failed: usize,
    /// Whether every prompt offered was started (false after a stop signal, or once the sink
    /// closed).
    pub all_started: bool,
    /// Trajectories finished after the sink closed, so not delivered.
    pub undelivered: usize,
}

/// A running flow: one router actor per flow actor, each supervising its replicas.
pub struct Engine {
    flow: Flow,
    cluster: Option<Arc<Cluster>>,
    routers: BTreeMap<String, ActorRef<RouterMsg>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<EngineStats>,
}

impl Engine {
    /// Checks the flow against the registry, then starts every actor used by the cycle (all
    /// replicas, models built). Nothing runs if any actor fails to start.
    pub async fn start(loaded: &LoadedFlow, registry: &Registry) -> Result<Engine, EngineError> {
        registry.check_flow(loaded)?;
        let flow = loaded.flow.clone();
        let used: std::collections::BTreeSet<String> = flow
            .cycle
            .start
            .iter()
            .chain(&flow.cycle.round)
            .cloned()
            .collect();
        // Nodes first: every one must be reachable, authenticated and of our protocol.
        let cluster = if rlrig_flow::used_nodes(&flow).is_empty() {
            None
        } else {
            Some(Arc::new(
                Cluster::start(loaded).await.map_err(EngineError::Start)?,
            ))
        };
        let restarts = Arc::new(AtomicUsize::new(0));
        let mut outstanding_max = BTreeMap::new();
        let mut routers = BTreeMap::new();
        let mut handles = Vec::new();
        for name in &used {
            let spec = &flow.actors[name];
            let contexts = (0..spec.replicas)
                .map(|r| Registry::context(loaded, name, spec, r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(FlowError::from)?;
            let build = registry.builder(&spec.kind).expect("checked by check_flow");
            let max = Arc::new(AtomicUsize::new(0));
            outstanding_max.insert(name.clone(), max.clone());
            let args = RouterArgs {
                contexts,
                build,
                batch: spec.batch,
                max_wait: Duration::from_millis(spec.max_wait_ms),
                max_attempts: flow.engine.max_attempts,
                outstanding_max: max,
                restarts: restarts.clone(),
                cluster: cluster.clone(),
            };
            match Actor::spawn(None, Router, args).await {
                Ok((r, h)) => {
                    routers.insert(name.clone(), r);
                    handles.push(h);
                }
                Err(e) => {
                    let engine = Engine {
                        flow: flow.clone(),
                        cluster,
                        routers,
                        handles,
                        stats: Arc::default(),
                    };
                    engine.shutdown().await;
                    let msg = match e {
                        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
                        other => other.to_string(),
                    };
                    return Err(EngineError::Start(format!(
                        "{}: {msg}",
                        loaded
                            .problem_at(&format!("actors.{name}"), "could not start")
                            .location
                    )));
                }
            }
        }
        let stats = Arc::new(EngineStats {
            restarts,
            outstanding_max,
            ..Default::default()
        });
        Ok(Engine {
            flow,
            cluster,
            routers,
            handles,
            stats,
        })
    }

    /// A handle that sends new weights to every replica of the policy actor `actor` (`None`
    /// if the flow runs no actor of that name).
    pub fn weights_updater(&self, actor: &str) -> Option<WeightsUpdater> {
        self.routers.get(actor).map(|r| WeightsUpdater {
            actor: actor.to_string(),
            router: r.clone(),
        })
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Runs every prompt through the cycle, at most `engine.max_in_flight` at a time, sending
    /// each finished trajectory (done or failed — never dropped) to `sink`. A full sink holds
    /// the trajectory's credit, so a slow consumer slows the run instead of growing memory. A
    /// closed sink (its consumer failed, e.g. on a full disk) stops the run: no new prompt is
    /// started, and the trajectories in flight are counted as undelivered.
    pub async fn run(
        &self,
        prompts: impl IntoIterator<Item = (u64, SceneGraph)>,
        sink: mpsc::Sender<Trajectory>,
        mut stop: watch::Receiver<StopSignal>,
    ) -> RunSummary {
        let credits = Arc::new(Semaphore::new(self.flow.engine.max_in_flight));
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0;
        let mut all_started = true;
        let undelivered = Arc::new(AtomicUsize::new(0));
        for (id, prompt) in prompts {
            // Finished tasks are reaped as the run goes, so a long run holds only those in flight.
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = credits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = stop.wait_for(|s| *s != StopSignal::Run) => { all_started = false; break; }
                _ = sink.closed() => { all_started = false; break; }
            };
            if *stop.borrow() != StopSignal::Run || sink.is_closed() {
                all_started = false;
                break;
            }
            started += 1;
            let driver = Driver {
                flow: self.flow.clone(),
                routers: self.routers.clone(),
            };
            let (sink, stats, mut stop) = (sink.clone(), self.stats.clone(), stop.clone());
            let undelivered = undelivered.clone();
            let n = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            stats.in_flight_max.fetch_max(n, Ordering::SeqCst);
            tasks.spawn(async move {
                let t = tokio::select! {
                    t = driver.trajectory(id, prompt.clone()) => t,
                    _ = stop.wait_for(|s| *s == StopSignal::Cancel) => cancelled(id, prompt),
                };
                match t.outcome {
                    Outcome::Done { .. } => stats.done.fetch_add(1, Ordering::SeqCst),
                    Outcome::Failed { .. } => stats.failed.fetch_add(1, Ordering::SeqCst),
                };
                if sink.send(t).await.is_err() {
                    tracing::debug!(trajectory = id, "the trajectory sink closed; not delivered");
                    undelivered.fetch_add(1, Ordering::SeqCst);
                }
                stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            });
        }
        if sink.is_closed() {
            tracing::warn!(
                started,
                "the trajectory sink closed: no new prompts are started"
            );
        }
        while tasks.join_next().await.is_some() {}
        RunSummary {
            started,
            done: self.stats.done.load(Ordering::SeqCst),
            failed: self.stats.failed.load(Ordering::SeqCst),
            all_started,
            undelivered: undelivered.load(Ordering::SeqCst),
        }
    }

    /// Stops every actor and waits for them.
    pub async fn shutdown(self) {
        for r in self.routers.values() {
            r.stop(None);
        }
        for h in self.handles {
            let _ = h.await;
        }
        if let Some(c) = self.cluster {
            c.stop();
        }
    }
}

/// Sends new Policy weights to the replicas of one actor, by message. Each replica applies an
/// update between batches, so a batch runs on one version; a replica restarted later gets the
/// latest update right after it is built; an update older than one already sent is ignored.
#[derive(Clone)]
pub struct WeightsUpdater {
    actor: String,
    router: ActorRef<RouterMsg>,
}

impl WeightsUpdater {
    /// Sends `update` to every replica; fails only if the actor has stopped.
    pub fn send(&self, update: WeightsUpdate) -> Result<(), NotRunning> {
        self.router
            .cast(RouterMsg::Update(Box::new(update)))
            .map_err(|_| NotRunning(self.actor.clone()))
    }
}

/// A message for an actor that has stopped (the actor's name).
#[derive(Debug, thiserror::Error)]
#[error("actor {0:?} is not running")]
pub struct NotRunning(pub String);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn cancelled(id: u64, prompt: SceneGraph) -> Trajectory {
    Trajectory {
        id,
        prompt,
        seed: 0,
        steps: Vec::new(),
        outcome: Outcome::Failed {
            error: "cancelled: the run stopped before this trajectory finished".into(),
        },
        started_unix_ms: now_ms(),
        elapsed_ms: 0,
    }
}

/// SplitMix64: well-spread seeds from consecutive numbers.
pub fn mix_seed(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Drives one trajectory through the cycle.
struct Driver {
    flow: Flow,
    routers: BTreeMap<String, ActorRef<RouterMsg>>,
}

/// The state of a trajectory between steps.
#[derive(Clone)]
struct TrajectoryState {
    image: Option<Image>,
    reports: Vec<CheckReport>,
    edit: Option<String>,
}

impl Driver {
    async fn trajectory(&self, id: u64, prompt: SceneGraph) -> Trajectory {
        let started = Instant::now();
        let started_unix_ms = now_ms();
        let seed = mix_seed(self.flow.engine.seed ^ mix_seed(id));
        let mut steps = Vec::new();
        let mut p = TrajectoryState {
            image: None,
            reports: Vec::new(),
            edit: None,
        };
        let cycle = &self.flow.cycle;
        let mut result = self
            .run_steps(&cycle.start, 0, &prompt, seed, &mut p, &mut steps, None)
            .await;
        let mut round = 1;
        while result.is_ok() && round <= cycle.max_rounds && !self.satisfied(&p) {
            result = self
                .run_steps(&cycle.round, round, &prompt, seed, &mut p, &mut steps, None)
                .await;
            round += 1;
        }
        let outcome = match result {
            Err(error) => Outcome::Failed { error },
            Ok(()) => answer(&steps, cycle.answer, &cycle.reward()),
        };
        Trajectory {
            id,
            prompt,
            seed,
            steps,
            outcome,
            started_unix_ms,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }

    fn satisfied(&self, p: &TrajectoryState) -> bool {
        match (self.flow.cycle.stop_score, CheckReport::combine(&p.reports)) {
            (Some(t), Some(r)) => r.score >= t,
            _ => false,
        }
    }

    /// Runs `names` in order. On the line (`branch` is `None`) with `num_generations > 1`, the
    /// trained role's step (the Policy's, or the Editor's in phase 2) and the rest of the round
    /// run as a group of branches.
    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        &self,
        names: &[String],
        round: u32,
        prompt: &SceneGraph,
        seed: u64,
        p: &mut TrajectoryState,
        steps: &mut Vec<Step>,
        branch: Option<u32>,
    ) -> Result<(), String> {
        for (i, name) in names.iter().enumerate() {
            let role = self.flow.actors[name].role;
            let sampled = self.flow.branch_role() == Some(role);
            if sampled && branch.is_none() && self.flow.num_generations() > 1 {
                return self
                    .run_group(&names[i..], round, prompt, seed, p, steps)
                    .await;
            }
            let mut step_seed = mix_seed(seed.wrapping_add(steps.len() as u64));
            if let (true, Some(b)) = (sampled, branch) {
                // Common random numbers: a group's branches share every seed but the sampled
                // role's, so their rewards differ by what it sampled (the Policy's edit
                // prompt, or the Editor's noise in phase 2), not by the other roles' noise.
                step_seed = mix_seed(step_seed ^ mix_seed(0x5eed_0000_0000 + u64::from(b)));
            }
            let missing = |what: &str| format!("actor {name:?} ({role}) has no {what} to work on");
            let request = match role {
                Role::Diffuser => Request::Generate(GenerateRequest {
                    prompt: prompt.clone(),
                    seed: step_seed,
                    // A trained Diffuser's branches answer their denoising chains.
                    explore: sampled && branch.is_some(),
                }),
                Role::Checker => Request::Check(CheckRequest {
                    prompt: prompt.clone(),
                    image: p.image.clone().ok_or_else(|| missing("image"))?,
                }),
                Role::Policy => Request::Propose(ProposeRequest {
                    prompt: prompt.clone(),
                    image: p.image.clone().ok_or_else(|| missing("image"))?,
                    report: CheckReport::combine(&p.reports)
                        .ok_or_else(|| missing("checker report"))?,
                    seed: step_seed,
                }),
                Role::Editor => Request::Edit(EditRequest {
                    image: p.image.clone().ok_or_else(|| missing("image"))?,
                    edit_prompt: p.edit.clone().ok_or_else(|| missing("edit prompt"))?,
                    seed: step_seed,
                    // Phase 2: the Editor's branches answer their denoising chains.
                    explore: sampled && branch.is_some(),
                }),
                Role::Trainer => {
                    return Err(format!("actor {name:?} is a trainer, not a cycle step"));
                }
            };
            let t0 = Instant::now();
            let (response, attempts) = self.call(name, request).await?;
            let mut chain = None;
            let output = match (role, response) {
                (Role::Diffuser | Role::Editor, Response::Image(img)) => {
                    p.image = Some(img.clone());
                    p.reports.clear();
                    p.edit = None;
                    StepOutput::Image(img)
                }
                (Role::Diffuser | Role::Editor, Response::Sampled(sampled)) => {
                    p.image = Some(sampled.image.clone());
                    p.reports.clear();
                    p.edit = None;
                    chain = Some(sampled.chain);
                    StepOutput::Image(sampled.image)
                }
                (Role::Checker, Response::Report(r)) => {
                    p.reports.push(r.clone());
                    StepOutput::Report(r)
                }
                (Role::Policy, Response::Proposal(e)) => {
                    p.edit = Some(e.edit_prompt.clone());
                    StepOutput::Edit(e)
                }
                (role, other) => {
                    return Err(format!(
                        "actor {name:?} ({role}) answered with the wrong kind: {other:?}"
                    ));
                }
            };
            steps.push(Step {
                round,
                actor: name.clone(),
                role,
                output,
                attempts,
                elapsed_ms: t0.elapsed().as_millis() as u64,
                branch: branch.map(|index| Branch { index, kept: false }),
                chain,
            });
        }
        Ok(())
    }

    /// GRPO rollout: `names` (from the trained role's step to the end of the round) run
    /// `num_generations` times concurrently; the branches share their seeds except the
    /// trained role's (common random numbers). Every branch's
    /// steps are recorded; the trajectory goes on from the branch with the best combined
    /// Checker score (the lowest index among equals). A failed branch fails the trajectory.
    async fn run_group(
        &self,
        names: &[String],
        round: u32,
        prompt: &SceneGraph,
        seed: u64,
        p: &mut TrajectoryState,
        steps: &mut Vec<Step>,
    ) -> Result<(), String> {
        let g = self.flow.num_generations();
        let base = steps.len() as u64;
        let gseed = mix_seed(seed ^ mix_seed(base));
        let resamples = self.flow.train.as_ref().map_or(0, |t| t.max_resamples);
        let policy_first = names
            .first()
            .is_some_and(|n| self.flow.actors[n].role == Role::Policy);
        let results = if resamples > 0 && policy_first {
            // Phase 1 with distinct edit prompts: the G Policy steps first; a branch whose edit
            // prompt repeats a lower branch's is sampled again (another seed), up to
            // `max_resamples` times; then the rest of the round on each branch's prompt.
            let head = &names[..1];
            let mut heads = futures::future::join_all(
                (0..g).map(|b| self.branch(head, round, prompt, gseed, p.clone(), Vec::new(), b)),
            )
            .await;
            for k in 1..=u64::from(resamples) {
                let repeats: Vec<usize> = (0..heads.len())
                    .filter(|&b| {
                        let e = edit_of(&heads[b].2);
                        e.is_some() && (0..b).any(|a| edit_of(&heads[a].2) == e)
                    })
                    .collect();
                if repeats.is_empty() {
                    break;
                }
                let kseed = mix_seed(gseed ^ mix_seed(k << 32));
                let again = futures::future::join_all(repeats.iter().map(|&b| {
                    self.branch(head, round, prompt, kseed, p.clone(), Vec::new(), b as u32)
                }))
                .await;
                for (b, r) in repeats.into_iter().zip(again) {
                    heads[b] = r;
                }
            }
            futures::future::join_all(heads.into_iter().enumerate().map(
                |(b, (r, bp, bsteps))| async move {
                    if r.is_err() {
                        return (r, bp, bsteps);
                    }
                    self.branch(&names[1..], round, prompt, gseed, bp, bsteps, b as u32)
                        .await
                },
            ))
            .await
        } else {
            futures::future::join_all(
                (0..g).map(|b| self.branch(names, round, prompt, gseed, p.clone(), Vec::new(), b)),
            )
            .await
        };
        let mut kept = 0;
        let mut best = f64::NEG_INFINITY;
        let reward = self.flow.cycle.reward();
        for (b, (r, bp, _)) in results.iter().enumerate() {
            if let Err(e) = r {
                return Err(format!("branch {b}: {e}"));
            }
            let score = match CheckReport::combine(&bp.reports) {
                Some(r) => reward.of(&r).map_err(|e| format!("branch {b}: {e}"))?,
                None => f64::NEG_INFINITY,
            };
            if score > best {
                best = score;
                kept = b;
            }
        }
        for (b, (_, bp, bsteps)) in results.into_iter().enumerate() {
            for mut s in bsteps {
                s.branch = Some(Branch {
                    index: b as u32,
                    kept: b == kept,
                });
                steps.push(s);
            }
            if b == kept {
                *p = bp;
            }
        }
        Ok(())
    }

    /// Runs `names` on branch `b` from its state `bp` and the steps it has taken so far.
    #[allow(clippy::too_many_arguments)]
    async fn branch(
        &self,
        names: &[String],
        round: u32,
        prompt: &SceneGraph,
        seed: u64,
        mut bp: TrajectoryState,
        mut bsteps: Vec<Step>,
        b: u32,
    ) -> (Result<(), String>, TrajectoryState, Vec<Step>) {
        let r = Box::pin(self.run_steps(names, round, prompt, seed, &mut bp, &mut bsteps, Some(b)))
            .await;
        (r, bp, bsteps)
    }

    async fn call(&self, name: &str, request: Request) -> Result<(Response, u32), String> {
        let router = &self.routers[name];
        let (tx, rx) = oneshot::channel();
        router
            .cast(RouterMsg::Submit(request, tx))
            .map_err(|_| format!("actor {name:?} is not running"))?;
        match rx.await {
            Ok(Ok(a)) => Ok((a.response, a.attempts)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("actor {name:?} stopped before answering")),
        }
    }
}

/// The edit prompt among a branch's steps, if it has one.
fn edit_of(steps: &[Step]) -> Option<&str> {
    steps.iter().find_map(|s| match &s.output {
        StepOutput::Edit(e) => Some(e.edit_prompt.as_str()),
        _ => None,
    })
}

/// The answer of a finished trajectory: its last image, or the image with the best reward of
/// its combined checker reports (the latest among equals), among the steps on its line. The
/// outcome carries the answer's combined checker score.
fn answer(steps: &[Step], rule: AnswerRule, reward: &Reward) -> Outcome {
    // (step, combined report) per image on the line.
    let mut scored: Vec<(usize, Option<CheckReport>)> = Vec::new();
    let mut reports: Vec<CheckReport> = Vec::new();
    for (i, s) in steps.iter().enumerate().filter(|(_, s)| s.on_line()) {
        match &s.output {
            StepOutput::Image(_) => {
                if let Some(last) = scored.last_mut() {
                    last.1 = CheckReport::combine(&reports);
                }
                reports.clear();
                scored.push((i, None));
            }
            StepOutput::Report(r) => reports.push(r.clone()),
            StepOutput::Edit(_) => {}
        }
    }
    if let Some(last) = scored.last_mut() {
        last.1 = CheckReport::combine(&reports);
    }
    let pick = match rule {
        AnswerRule::Last => scored.last().map(|(i, r)| (*i, r.as_ref())),
        AnswerRule::Best => {
            let mut best: Option<(usize, &CheckReport, f64)> = None;
            for (i, r) in &scored {
                let Some(r) = r else { continue };
                let value = match reward.of(r) {
                    Ok(v) => v,
                    Err(e) => {
                        return Outcome::Failed {
                            error: e.to_string(),
                        };
                    }
                };
                if best.is_none_or(|(_, _, b)| value >= b) {
                    best = Some((*i, r, value));
                }
            }
            best.map(|(i, r, _)| (i, Some(r)))
                .or(scored.last().map(|(i, r)| (*i, r.as_ref())))
        }
    };
    match pick.map(|(i, r)| (i, r.map(|r| r.score))) {
        Some((answer, score)) => Outcome::Done { answer, score },
        None => Outcome::Failed {
            error: "the cycle produced no image".into(),
        },
    }
}
