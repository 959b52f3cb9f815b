//! `rlrig run` of a flow with a `[train]` table: Reflection-GRPO phase 1 (the Policy learns),
//! phase 2 (the Editor learns, Flow-GRPO) or Flow-GRPO on the Diffuser; every other actor is
//! frozen.
//!
//! The learner comes from the registry: the trained actor's kind registers it
//! ([`Registry::add_learner`]), so this module knows no model.
//!
//! The engine runs the cycle over the flow's prompts with the trained role sampling
//! `num_generations` ways per round (edit prompts, the Editor's SDE edits of one edit
//! prompt, or the Diffuser's SDE images of the prompt in round 0); every finished trajectory is committed to the run's store, and the trainer actor
//! (crate `rlrig-train`) is told. The trainer reads the store on its own schedule, steps the
//! learner and sends each new version of the weights to the trained actor's replicas. The run ends when the trainer has taken `train.steps`
//! steps (the trajectories still in flight are cancelled and recorded as such).
//!
//! The run directory holds, besides what every run writes: `metrics.jsonl` (one line per
//! learner step), `metrics.svg` (reward, KL, clip fraction), `checkpoint/` (learner weights,
//! optimiser, version, store cursor), `policy.safetensors`, `editor.safetensors` or
//! `diffuser.safetensors` (the trained
//! weights, loadable by the trained actor's kind) and `train.json` (the summary). `--resume` continues a run exactly where its
//! checkpoint left it: prompts already committed are not run again, the trainer reads on from
//! its cursor.
//!
//! As for inference flows ([`crate::run`]), the run directory is created only once the learner
//! is built and every actor has started: a training flow that cannot start leaves nothing
//! behind (and a run it would have overwritten as it was).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ractor::Actor;
use rlrig_contract::{GrpoLearner, Trajectory, WeightsUpdate};
use rlrig_engine::{Engine, LearnerError, Registry, StopSignal};
use rlrig_flow::{LoadedFlow, TrainSettings};
use rlrig_store::TrajectoryStore;
use rlrig_train::{TrainSummary, Trainer, TrainerArgs, TrainerConfig, TrainerMsg};
use tokio::sync::{mpsc, oneshot, watch};

use crate::overrides::set_string;
use crate::run::{RunOptions, prompts_of};
use crate::sink::take_trajectories;

/// The file the trained weights are written to in the run directory, after the trained actor's
/// role: `policy.safetensors` (phase 1), `editor.safetensors` (phase 2) or
/// `diffuser.safetensors`.
pub fn weights_file(loaded: &LoadedFlow, t: &TrainSettings) -> String {
    format!("{}.safetensors", loaded.flow.actors[&t.actor].role.name())
}

/// The learner for a flow: the one the trained actor's kind registered, from the actor's
/// starting weights on `[train]`'s device, with GRPO's settings from `[train]` — for the
/// built-in kinds the Policy's GRPO learner (phase 1) or the Editor's or Diffuser's Flow-GRPO
/// learner. A flow the learner refuses is a located [`rlrig_flow::FlowError`].
pub fn learner_for(registry: &Registry, loaded: &LoadedFlow) -> Result<Box<dyn GrpoLearner>> {
    registry.learner(loaded).map_err(|e| match e {
        LearnerError::Flow(e) => e.into(),
        LearnerError::Build(m) => anyhow::anyhow!(m),
    })
}

/// Runs a training flow, already loaded and checked ([`crate::run::load_checked`]); returns
/// the trainer's summary and the run directory. `overwrite` replaces an existing run
/// directory; `resume` continues the run in it instead.
pub fn run(
    registry: &Registry,
    loaded: &LoadedFlow,
    overwrite: bool,
    resume: bool,
) -> Result<(TrainSummary, PathBuf)> {
    let t = loaded
        .flow
        .train
        .clone()
        .context("the flow has no [train] table")?;
    registry.check_learner(loaded)?;
    let weights_file = weights_file(loaded, &t);
    let dir = loaded.flow.run_dir.join(&loaded.flow.name);
    if resume {
        let stored = std::fs::read_to_string(dir.join("flow.toml"))
            .with_context(|| format!("--resume: {} holds no run to continue", dir.display()))?;
        if stored != loaded.text {
            bail!(
                "--resume: the flow (with its --set values) differs from the one {} was started with ({}); resume with the same flow and overrides",
                dir.display(),
                dir.join("flow.toml").display()
            );
        }
    } else {
        // Refused before anything starts; created only after the learner is built and every
        // actor started, so that a start that fails (a missing weights file, a program that
        // is not there) leaves no directory behind to block the corrected rerun.
        crate::run::refuse_existing_run_dir(&dir, overwrite)?;
    }
    let prompts = prompts_of(loaded).map_err(crate::outcome::refused)?;
    let before = prompts.len();
    let learner = learner_for(registry, loaded)?;
    let t0 = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let engine = runtime.block_on(Engine::start(loaded, registry))?;
    let opened = (|| -> Result<(Arc<TrajectoryStore>, Vec<_>)> {
        if !resume {
            crate::run::prepare_run_dir(&dir, overwrite)?;
            loaded.write_copy(&dir.join("flow.toml"))?;
        }
        let store = Arc::new(TrajectoryStore::open(&dir.join("store"))?);
        let mut kept = Vec::with_capacity(prompts.len());
        for (id, p) in prompts {
            if !store.contains(id)? {
                kept.push((id, p));
            }
        }
        Ok((store, kept))
    })();
    let (store, kept) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            runtime.block_on(engine.shutdown());
            return Err(e);
        }
    };
    if resume {
        eprintln!(
            "resuming {}: {} of {before} prompts already committed",
            dir.display(),
            before - kept.len()
        );
    }
    let (eval_tx, eval_rx) = std::sync::mpsc::channel::<WeightsUpdate>();
    let summary = std::thread::scope(|scope| {
        let evaluator = scope.spawn(|| evaluate_versions(registry, loaded, &t, &dir, eval_rx));
        let summary = runtime.block_on(drive(
            engine,
            loaded,
            &t,
            kept,
            store,
            learner,
            &dir,
            &dir.join(weights_file),
            resume,
            eval_tx,
            t0,
        ));
        if let Err(e) = evaluator.join().expect("the evaluator does not panic") {
            eprintln!("warning: evaluation: {e:#}");
        }
        summary
    })?;
    std::fs::write(
        dir.join("train.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    if let Ok(m) = rlrig_train::read_metrics(&dir.join("metrics.jsonl"))
        && let Err(e) = crate::plot::training_curves(&m, &dir.join("metrics.svg"))
    {
        eprintln!("warning: metrics.svg: {e}");
    }
    if let Err(e) = crate::report::write(&dir) {
        eprintln!("warning: report.html: {e:#}");
    }
    println!(
        "run {}: {} learner steps, weights version {}, {} trajectories used ({} groups; {} filtered, {} stale)",
        dir.display(),
        summary.steps,
        summary.version,
        summary.trajectories,
        summary.groups,
        summary.filtered_groups,
        summary.stale_groups
    );
    if !summary.complete {
        bail!(
            "training stopped at step {} of {}: {}",
            summary.steps,
            t.steps,
            "the prompts ran out or the run was interrupted; raise prompts.count or continue with --resume"
        );
    }
    Ok((summary, dir))
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    engine: Engine,
    loaded: &LoadedFlow,
    t: &TrainSettings,
    prompts: Vec<(u64, rlrig_contract::SceneGraph)>,
    store: Arc<TrajectoryStore>,
    learner: Box<dyn GrpoLearner>,
    dir: &Path,
    weights_out: &Path,
    resume: bool,
    eval: std::sync::mpsc::Sender<WeightsUpdate>,
    t0: Instant,
) -> Result<TrainSummary> {
    let updater = engine
        .weights_updater(&t.actor)
        .context("the trained actor is not running")?;
    let latest: Arc<Mutex<Option<WeightsUpdate>>> = Arc::default();
    let publish = publisher(updater, latest.clone(), eval.clone(), t.eval_every);
    let (done_tx, mut done_rx) = oneshot::channel();
    let (trainer, trainer_handle) = Actor::spawn(
        None,
        Trainer,
        TrainerArgs {
            learner,
            store: store.clone(),
            config: trainer_config(loaded, t, dir),
            publish,
            resume,
            done: done_tx,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("the trainer could not start: {e}"))?;
    // Trajectories already committed but not yet used (a resumed run) go first.
    let _ = trainer.cast(TrainerMsg::Committed);

    let (stop_tx, stop_rx) = watch::channel(StopSignal::Run);
    // Set when the rollouts are cancelled (the trainer took its last step or failed, or
    // Ctrl-C): the rollouts still in flight then end as cancelled, or in an error while the
    // actors shut down. Neither is stored: nothing learns from them, their prompts are still
    // to do for `--resume`, and they have not failed the run.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        crate::run::stop_on_ctrl_c(
            stop_tx.clone(),
            StopSignal::Cancel,
            "cancelling the rollouts in flight; continue with --resume",
            move || stopping.store(true, std::sync::atomic::Ordering::SeqCst),
        );
    }
    let (tx, rx) = mpsc::channel::<Trajectory>(loaded.flow.engine.max_in_flight);
    let images = loaded.flow.store.images;
    let out_dir = dir.join("trajectories");
    let consumer = {
        let (store, trainer, stopping) = (store.clone(), trainer.clone(), stopping.clone());
        tokio::task::spawn_blocking(move || -> Result<u64> {
            take_trajectories(
                rx,
                Some(&store),
                &out_dir,
                images,
                |t| {
                    !(stopping.load(std::sync::atomic::Ordering::SeqCst)
                        && matches!(t.outcome, rlrig_contract::Outcome::Failed { .. }))
                },
                |_| {
                    let _ = trainer.cast(TrainerMsg::Committed);
                    Ok(())
                },
            )
        })
    };
    let mut result = None;
    {
        let rollout = engine.run(prompts, tx, stop_rx);
        tokio::pin!(rollout);
        tokio::select! {
            _ = &mut rollout => {}
            r = &mut done_rx => {
                stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                result = Some(r);
                let _ = stop_tx.send(StopSignal::Cancel);
                rollout.await;
            }
        }
    }
    // Every trajectory reaches the store before the trainer is told that no more will come,
    // and the trainer finishes (publishing to the trained actor's replicas) before the engine stops.
    // A store that failed (a full disk) ended the rollouts; the trainer and the engine are
    // still stopped in order before its error is returned.
    let committed = consumer.await?;
    let result = match result {
        Some(r) => r,
        None => {
            let _ = trainer.cast(TrainerMsg::Finish);
            done_rx.await
        }
    };
    let _ = trainer_handle.await;
    engine.shutdown().await;
    let committed = committed?;
    let summary = result
        .map_err(|_| anyhow::anyhow!("the trainer stopped without a word"))?
        .map_err(|e| anyhow::anyhow!("training failed: {e}"))?;
    if let Some(u) = latest.lock().expect("not poisoned").take() {
        write_weights(weights_out, &u.weights)?;
        if t.eval_every > 0 && !u.version.is_multiple_of(t.eval_every) {
            let _ = eval.send(u);
        }
    }
    eprintln!(
        "{committed} trajectories committed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// The trainer's settings from `[train]` and the cycle's reward.
fn trainer_config(loaded: &LoadedFlow, t: &TrainSettings, dir: &Path) -> TrainerConfig {
    TrainerConfig {
        steps: t.steps,
        groups_per_step: t.groups_per_step,
        max_staleness: t.max_staleness,
        checkpoint_every: t.checkpoint_every,
        dir: dir.to_path_buf(),
        reward: loaded.flow.cycle.reward(),
    }
}

/// Sends each new version to the trained actor's replicas, every `every`-th to the evaluation
/// (0: none), and keeps the latest in `latest` (written as the run's weights at the end).
fn publisher(
    updater: rlrig_engine::WeightsUpdater,
    latest: Arc<Mutex<Option<WeightsUpdate>>>,
    eval: std::sync::mpsc::Sender<WeightsUpdate>,
    every: u64,
) -> rlrig_train::Publish {
    Box::new(move |u: WeightsUpdate| {
        updater.send(u.clone())?;
        if every > 0 && u.version > 0 && u.version.is_multiple_of(every) {
            let _ = eval.send(u.clone());
        }
        *latest.lock().expect("not poisoned") = Some(u);
        Ok(())
    })
}

/// Writes a weights file beside its place and renames it there, so that a reader never sees
/// half of one.
pub(crate) fn write_weights(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The overrides that turn the flow (without `[train]`) into the evaluation of one version:
/// `eval_prompts` held-out world prompts from `eval_seed`, the version's weights for the trained
/// actor, the run under `<eval_dir>/v<version>/`, no stored trajectories.
fn eval_sets(
    t: &TrainSettings,
    role: rlrig_contract::Role,
    version: u64,
    eval_dir: &Path,
    weights: &Path,
) -> Vec<String> {
    let actor = &t.actor;
    let mut sets = vec![
        set_string("name", &format!("v{version}")),
        set_string("run_dir", &eval_dir.display().to_string()),
        set_string("prompts.source", "world"),
        format!("prompts.seed={}", t.eval_seed),
        format!("prompts.count={}", t.eval_prompts),
        set_string(
            &format!("actors.{actor}.settings.weights"),
            &weights.display().to_string(),
        ),
        "store.trajectories=false".to_string(),
    ];
    if role == rlrig_contract::Role::Policy {
        // The Policy decodes greedily at inference; the Editor's plain edits are the ODE's.
        sets.push(format!("actors.{actor}.settings.greedy=true"));
    }
    sets
}

/// Evaluates the versions sent by the trainer, one after the other, on held-out prompts: the
/// flow's cycle without `[train]` with that version's weights (the Policy greedy; the Editor
/// and the Diffuser with their ODE samplers), judged by the oracle. Each evaluation is a run under `<run>/eval/v<version>/`; `eval.jsonl` gets a line
/// per version (final and per-round means).
fn evaluate_versions(
    registry: &Registry,
    loaded: &LoadedFlow,
    t: &TrainSettings,
    dir: &Path,
    versions: std::sync::mpsc::Receiver<WeightsUpdate>,
) -> Result<()> {
    let eval_dir = dir.join("eval");
    let mut flow_path = None;
    for u in versions {
        let flow = match &flow_path {
            Some(p) => p,
            None => {
                std::fs::create_dir_all(&eval_dir)?;
                let text = rlrig_flow::without_table(&loaded.text, "train")?;
                // Its flow-relative paths are the training flow's.
                let p = eval_dir.join("flow.toml");
                rlrig_flow::write_copy(&p, &text, loaded.base_dir())?;
                flow_path.insert(p)
            }
        };
        let role = loaded.flow.actors[&t.actor].role;
        let weights = eval_dir.join(format!("{}-v{}.safetensors", role.name(), u.version));
        write_weights(&weights, &u.weights)?;
        let (metrics, _) = crate::run::run(
            registry,
            &RunOptions {
                flow: flow.clone(),
                sets: eval_sets(t, role, u.version, &eval_dir, &weights),
                overwrite: true,
            },
        )
        .with_context(|| format!("evaluating version {}", u.version))?;
        let line = serde_json::json!({
            "version": u.version,
            "prompts": t.eval_prompts,
            "final": metrics.final_,
            "rounds": metrics.rounds,
        });
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("eval.jsonl"))?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weights path (and run directory) holding a quote and a backslash reaches the
    /// evaluation flow as it is.
    #[test]
    fn an_evaluation_gets_its_weights_path_exactly() {
        let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/valid/train-tiny.toml");
        let t = rlrig_flow::load(&flow, &[]).unwrap().flow.train.unwrap();
        let dir = Path::new(r#"runs/say "hi"\there"#).join("eval");
        let weights = dir.join(r#"policy "v3"\x.safetensors"#);
        let sets = eval_sets(&t, rlrig_contract::Role::Policy, 3, &dir, &weights);
        let text = rlrig_flow::without_table(&std::fs::read_to_string(&flow).unwrap(), "train");
        let loaded =
            rlrig_flow::load_str(&flow, &text.unwrap(), &sets).unwrap_or_else(|e| panic!("{e}"));
        let actor = &loaded.flow.actors[&t.actor];
        assert_eq!(
            actor.settings.get("weights"),
            Some(&serde_json::json!(weights.display().to_string()))
        );
        assert_eq!(actor.settings.get("greedy"), Some(&serde_json::json!(true)));
        assert_eq!(
            (loaded.flow.run_dir.as_path(), loaded.flow.name.as_str()),
            (dir.as_path(), "v3")
        );
        assert_eq!(loaded.flow.prompts.count, Some(t.eval_prompts));
    }
}
