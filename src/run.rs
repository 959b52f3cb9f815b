//! `rlrig run FLOW`: a flow over its prompts, into `runs/<name>/`.
//!
//! The run directory holds `flow.toml` (the flow as run, overrides applied) with
//! `flow.base_dir` (the original flow file's directory, which the copy's flow-relative paths
//! resolve against: [`rlrig_flow::write_copy`]), `store/` (the sled trajectory store, every
//! trajectory written atomically), `trajectories/<id>/` (each
//! prompt's image chain as PNGs and `chain.json` with the reflections and edit prompts), and
//! `metrics.json` (counts, retries and restarts, oracle metrics at round 0, each round and
//! `final` when the prompts are in the built-in world's vocabulary) with `scores.jsonl` (the
//! same per trajectory, with its prompt, for paired comparisons of runs over the same prompts;
//! a failed trajectory has a line with `"outcome": "failed"`, its error and no scores).
//!
//! [`run`] returns the metrics even when trajectories failed (the command line then exits with
//! [`crate::outcome::exit::TRAJECTORIES_FAILED`]); an interrupted run is the error
//! [`crate::outcome::Interrupted`]. The run directory is created only once every actor has
//! started: a flow whose actors cannot start leaves nothing behind (and a run it would have
//! overwritten as it was).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rlrig_contract::{Outcome, SceneGraph, Trajectory};
use rlrig_engine::{Engine, Registry, RunSummary, StopSignal};
use rlrig_flow::{LoadedFlow, PromptSourceKind};
use rlrig_sg::{IouScores, MeanScores, ScoreSums};
use rlrig_store::TrajectoryStore;
use rlrig_world::{Canvas, WorldGraph, judge, sample};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::scores::{self, Judgement, LineOutcome, ScoreLine, Scores};
use crate::sink::take_trajectories;

/// Options of `rlrig run`.
pub struct RunOptions {
    /// The flow file.
    pub flow: PathBuf,
    /// `dotted.key=value` overrides.
    pub sets: Vec<String>,
    /// Replace an existing run directory.
    pub overwrite: bool,
}

/// Set when SIGINT arrived during a run or a training run.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Records that the process was interrupted (SIGINT), for the exit code.
pub fn note_interrupted() {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether SIGINT arrived during a run.
pub fn was_interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Ctrl-C during a run or a training run: the first press is noted for the exit code, says
/// `first_message`, calls `on_first` and sends `first` to the engine; when `first` only
/// drains, a second press cancels the trajectories in flight.
pub(crate) fn stop_on_ctrl_c(
    stop_tx: watch::Sender<StopSignal>,
    first: StopSignal,
    first_message: &'static str,
    on_first: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        on_first();
        note_interrupted();
        eprintln!("\ninterrupted: {first_message}");
        let _ = stop_tx.send(first);
        if first == StopSignal::Drain && tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ncancelling the trajectories in flight");
            let _ = stop_tx.send(StopSignal::Cancel);
        }
    });
}

/// Options of `rlrig run` that do not change what runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reporting {
    /// Print the summary and metrics table to stderr instead of stdout (for `--json` outputs).
    pub table_to_stderr: bool,
}

/// Oracle metrics of a run (`metrics.json`). The means cover the done trajectories only.
#[derive(Clone, Debug, Serialize)]
pub struct RunMetrics {
    /// The flow's prompts.
    pub prompts: usize,
    /// Trajectories completed.
    pub done: usize,
    /// Trajectories recorded as failed.
    pub failed: usize,
    /// Whether the run was interrupted before every prompt was started.
    pub interrupted: bool,
    /// Whether every prompt's trajectory is done: started, and none failed.
    pub complete: bool,
    /// Retries of the requests that made the recorded steps: the sum over every step of its
    /// attempts less one (a failed trajectory counts the steps it recorded).
    pub retries: u64,
    /// Actor replicas restarted after a failure.
    pub restarts: u64,
    /// Per round `r`: each completed trajectory's latest image at or before round `r`.
    pub rounds: Vec<RoundMetrics>,
    /// Each completed trajectory's answer image (`final` in `metrics.json`, as in `eval.json`
    /// and `scores.jsonl`).
    #[serde(rename = "final")]
    pub final_: Option<MeanScores>,
    /// Mean number of rounds run after round 0.
    pub mean_rounds: f64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

/// Oracle metrics of one round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundMetrics {
    /// The round.
    pub round: u32,
    /// The means.
    #[serde(flatten)]
    pub scores: MeanScores,
}

/// The prompts of a flow, numbered.
pub fn prompts_of(loaded: &LoadedFlow) -> Result<Vec<(u64, SceneGraph)>> {
    let p = &loaded.flow.prompts;
    Ok(match p.source {
        PromptSourceKind::World => {
            let canvas = Canvas::new(Canvas::DEFAULT_SIZE)?;
            (0..p.count.unwrap_or(0))
                .map(|i| (i, sample(&canvas, p.seed, i).graph))
                .collect()
        }
        PromptSourceKind::File => {
            let path = p.path.as_ref().context("prompts.path")?;
            let mut records = rlrig_sg::read_records(path)?;
            if let Some(n) = p.count {
                records.truncate(n as usize);
            }
            records
                .into_iter()
                .enumerate()
                .map(|(i, g)| (i as u64, g))
                .collect()
        }
    })
}

/// Trajectories of a store done and failed.
pub fn count_outcomes(store: &Path) -> Result<(usize, usize)> {
    if !store.is_dir() {
        return Ok((0, 0));
    }
    let store = TrajectoryStore::open(store)?;
    let (mut done, mut failed) = (0, 0);
    for (_, t) in store.committed_after(None, usize::MAX)? {
        match t.outcome {
            Outcome::Done { .. } => done += 1,
            Outcome::Failed { .. } => failed += 1,
        }
    }
    Ok((done, failed))
}

/// Runs a flow, printing its summary to stdout. Returns the metrics (failed trajectories
/// included) and the run directory; an interrupted run is the error [`crate::outcome::Interrupted`].
pub fn run(registry: &Registry, opts: &RunOptions) -> Result<(RunMetrics, PathBuf)> {
    run_with(registry, opts, Reporting::default())
}

/// [`run`], reporting as `reporting` says.
pub fn run_with(
    registry: &Registry,
    opts: &RunOptions,
    reporting: Reporting,
) -> Result<(RunMetrics, PathBuf)> {
    let loaded = load_checked(registry, &opts.flow, &opts.sets)?;
    run_loaded(registry, &loaded, opts.overwrite, reporting)
}

/// [`run_with`] of a flow already loaded and checked ([`load_checked`]).
pub fn run_loaded(
    registry: &Registry,
    loaded: &LoadedFlow,
    overwrite: bool,
    reporting: Reporting,
) -> Result<(RunMetrics, PathBuf)> {
    let prompts = prompts_of(loaded).map_err(crate::outcome::refused)?;
    let total = prompts.len();
    let judged = prompts
        .iter()
        .all(|(_, g)| WorldGraph::from_scene_graph(g).is_ok());
    if !judged {
        eprintln!(
            "note: some prompts are outside the built-in world's vocabulary: no oracle metrics for this run"
        );
    }
    let dir = loaded.flow.run_dir.join(&loaded.flow.name);
    // Refused before any actor starts; created only after they all did, so that a start that
    // fails (a missing weights file, a program that is not there) leaves no directory behind
    // to block the corrected rerun.
    refuse_existing_run_dir(&dir, overwrite)?;
    let t0 = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let engine = runtime.block_on(Engine::start(loaded, registry))?;
    let opened = (|| -> Result<Option<TrajectoryStore>> {
        prepare_run_dir(&dir, overwrite)?;
        loaded.write_copy(&dir.join("flow.toml"))?;
        Ok(if loaded.flow.store.trajectories {
            Some(TrajectoryStore::open(&dir.join("store"))?)
        } else {
            None
        })
    })();
    let store = match opened {
        Ok(store) => store,
        Err(e) => {
            runtime.block_on(engine.shutdown());
            return Err(e);
        }
    };
    let (metrics, summary) =
        runtime.block_on(drive(engine, loaded, prompts, judged, store, &dir, t0))?;
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)? + "\n",
    )?;
    let mut table = String::new();
    print_table(&mut table, &metrics, &dir);
    if reporting.table_to_stderr {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if let Err(e) = crate::report::write(&dir) {
        eprintln!("warning: report.html: {e:#}");
    }
    if !summary.all_started {
        return Err(crate::outcome::Interrupted(format!(
            "interrupted: {} of {total} prompts were started; what ran is stored in {}",
            summary.started,
            dir.display()
        ))
        .into());
    }
    Ok((metrics, dir))
}

/// A flow file, or the `flow.toml` of a run directory given instead (`rlrig run runs/train
/// --resume`, `rlrig validate runs/infer`): the flow it ran.
pub(crate) fn flow_file(path: &Path) -> PathBuf {
    if path.is_dir() && path.join("flow.toml").is_file() {
        path.join("flow.toml")
    } else {
        path.to_path_buf()
    }
}

/// Loads a cycle flow and checks it against the registry, reporting every problem found at
/// once: the flow's own (names, references, cycle order, values) and its actors' (kinds,
/// settings). A flow that does not parse (TOML syntax, unknown keys, wrong types) stops at
/// its first such problem, since what follows it cannot be read.
pub fn load_checked(registry: &Registry, path: &Path, sets: &[String]) -> Result<LoadedFlow> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        rlrig_flow::FlowError::from(rlrig_flow::FlowProblem {
            location: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read the flow file: {e}"),
        })
    })?;
    load_checked_str(registry, path, &text, sets)
}

/// [`load_checked`] on the flow file's text, already read; `path` names it.
pub fn load_checked_str(
    registry: &Registry,
    path: &Path,
    text: &str,
    sets: &[String],
) -> Result<LoadedFlow> {
    let (loaded, mut problems) = rlrig_flow::parse_str(path, text, sets)?;
    if let Err(e) = registry.check_flow(&loaded) {
        for p in e.problems {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    if problems.is_empty() {
        return Ok(loaded);
    }
    // In file order (`--set` values, which have no line, first); stable, so problems at one
    // place keep the order they were found in.
    problems.sort_by_key(|p| {
        let mut parts = p.location.rsplitn(3, ':');
        let column = parts.next().and_then(|c| c.parse::<usize>().ok());
        let line = parts.next().and_then(|l| l.parse::<usize>().ok());
        line.zip(column)
    });
    Err(rlrig_flow::FlowError { problems }.into())
}

/// Refuses an existing, non-empty run directory unless `overwrite`; changes nothing.
pub(crate) fn refuse_existing_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(crate::outcome::refused(anyhow::anyhow!(
            "run directory {} already exists; pick another name (--set name=...) or pass --overwrite to replace it",
            dir.display()
        )));
    }
    Ok(())
}

pub(crate) fn prepare_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    refuse_existing_run_dir(dir, overwrite)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

async fn drive(
    engine: Engine,
    loaded: &LoadedFlow,
    prompts: Vec<(u64, SceneGraph)>,
    judged: bool,
    store: Option<TrajectoryStore>,
    dir: &Path,
    t0: Instant,
) -> Result<(RunMetrics, RunSummary)> {
    let (stop_tx, stop_rx) = watch::channel(StopSignal::Run);
    stop_on_ctrl_c(
        stop_tx,
        StopSignal::Drain,
        "taking no new prompts, finishing those in flight (Ctrl-C again to cancel them)",
        || {},
    );
    let total = prompts.len() as u64;
    let progress = Progress::new(total);
    let (tx, rx) = mpsc::channel::<Trajectory>(loaded.flow.engine.max_in_flight);
    let max_rounds = loaded.flow.cycle.max_rounds;
    let images = loaded.flow.store.images;
    let out_dir = dir.join("trajectories");
    let unsorted_scores = dir.join("scores.jsonl.unsorted");
    let consumer = {
        let progress = progress.clone();
        let unsorted_scores = unsorted_scores.clone();
        tokio::task::spawn_blocking(move || -> Result<Collector> {
            let scores = if judged {
                let f = std::fs::File::create(&unsorted_scores)
                    .with_context(|| format!("creating {}", unsorted_scores.display()))?;
                Some(std::io::BufWriter::new(f))
            } else {
                None
            };
            let mut c = Collector::new(max_rounds, scores);
            take_trajectories(
                rx,
                store.as_ref(),
                &out_dir,
                images,
                |_| true,
                |t| {
                    c.add(t)
                        .with_context(|| format!("writing {}", unsorted_scores.display()))?;
                    progress.tick(&c);
                    Ok(())
                },
            )?;
            if let Some(mut scores) = c.scores.take() {
                std::io::Write::flush(&mut scores)
                    .with_context(|| format!("writing {}", unsorted_scores.display()))?;
            }
            Ok(c)
        })
    };
    let summary = engine.run(prompts, tx, stop_rx).await;
    let restarts = engine.stats().restarts.load(Ordering::Relaxed);
    engine.shutdown().await;
    let collector = consumer.await??;
    if judged {
        sort_scores(&unsorted_scores, &dir.join("scores.jsonl"))?;
    }
    progress.finish();
    let mut metrics = collector.metrics(total as usize, summary.all_started, t0.elapsed());
    metrics.restarts = restarts as u64;
    Ok((metrics, summary))
}

/// Gathers per-round oracle scores as trajectories arrive.
struct Collector {
    max_rounds: u32,
    judged: bool,
    /// Per round, then the answers: sums, not every image's scores, so that memory stays flat.
    rounds: Vec<ScoreSums>,
    finals: ScoreSums,
    done: usize,
    failed: usize,
    rounds_run: u64,
    /// Retries of the recorded steps (attempts less one, summed).
    retries: u64,
    /// Where a judged run's `scores.jsonl` lines go as trajectories arrive, unsorted (kept on
    /// disk, not in memory, so a long run's memory stays flat); `None` when not judged.
    scores: Option<std::io::BufWriter<std::fs::File>>,
}

/// Writes the lines of `unsorted` to `sorted` in trajectory-id order, then removes `unsorted`.
fn sort_scores(unsorted: &Path, sorted: &Path) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    let text = std::fs::read_to_string(unsorted)
        .with_context(|| format!("reading {}", unsorted.display()))?;
    let mut lines = text
        .lines()
        .map(|l| Ok((serde_json::from_str::<Id>(l)?.id, l)))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("reading {}", unsorted.display()))?;
    lines.sort_by_key(|(id, _)| *id);
    let out: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(sorted, out).with_context(|| format!("writing {}", sorted.display()))?;
    std::fs::remove_file(unsorted).with_context(|| format!("removing {}", unsorted.display()))
}

impl Collector {
    fn new(max_rounds: u32, scores: Option<std::io::BufWriter<std::fs::File>>) -> Collector {
        Collector {
            max_rounds,
            judged: scores.is_some(),
            rounds: vec![ScoreSums::default(); max_rounds as usize + 1],
            finals: ScoreSums::default(),
            done: 0,
            failed: 0,
            rounds_run: 0,
            retries: 0,
            scores,
        }
    }

    /// Counts and scores a trajectory; a judged one's line goes to `scores`.
    fn add(&mut self, t: &Trajectory) -> std::io::Result<()> {
        self.retries += t
            .steps
            .iter()
            .map(|s| u64::from(s.attempts.saturating_sub(1)))
            .sum::<u64>();
        if let Outcome::Failed { error } = &t.outcome {
            self.failed += 1;
            return self.write_line(&ScoreLine {
                id: t.id,
                prompt: Some(t.prompt.prompt()),
                scene_graph: Some(t.prompt.clone()),
                outcome: LineOutcome::Failed,
                error: Some(error.clone()),
                rounds: Vec::new(),
                final_: None,
            });
        }
        self.done += 1;
        self.rounds_run += t.steps.iter().map(|s| s.round as u64).max().unwrap_or(0);
        if !self.judged {
            return Ok(());
        }
        let score = |img| {
            judge(&t.prompt, img)
                .map(|j| (j.scores, j.relation_accuracy))
                .ok()
        };
        let images: Vec<_> = t.images().collect();
        let mut per_round = Vec::new();
        for r in 0..=self.max_rounds {
            if let Some((_, _, img)) = images.iter().rev().find(|(_, round, _)| *round <= r)
                && let Some(s) = score(img)
            {
                self.rounds[r as usize].add(s);
                per_round.push(s);
            }
        }
        let final_ = t.answer().and_then(score);
        if let Some(s) = final_ {
            self.finals.add(s);
        }
        let judged = |s: &(IouScores, Option<f64>)| Judgement::Scored(Scores::new(&s.0, s.1));
        self.write_line(&ScoreLine {
            id: t.id,
            prompt: Some(t.prompt.prompt()),
            scene_graph: Some(t.prompt.clone()),
            outcome: LineOutcome::Done,
            error: None,
            rounds: per_round.iter().map(judged).collect(),
            final_: final_.as_ref().map(judged),
        })
    }

    fn write_line(&mut self, line: &ScoreLine) -> std::io::Result<()> {
        match &mut self.scores {
            Some(out) => scores::write_line(out, line),
            None => Ok(()),
        }
    }

    fn metrics(&self, prompts: usize, all_started: bool, elapsed: Duration) -> RunMetrics {
        RunMetrics {
            prompts,
            done: self.done,
            failed: self.failed,
            interrupted: !all_started,
            complete: all_started && self.failed == 0 && self.done == prompts,
            retries: self.retries,
            restarts: 0,
            rounds: if self.judged {
                self.rounds
                    .iter()
                    .enumerate()
                    .map(|(r, sums)| RoundMetrics {
                        round: r as u32,
                        scores: sums.mean(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            final_: self.judged.then(|| self.finals.mean()),
            mean_rounds: self.rounds_run as f64 / self.done.max(1) as f64,
            seconds: elapsed.as_secs_f64(),
        }
    }
}

/// A progress bar on a terminal, a log line every tenth of the run otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    start: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} prompts · {per_sec} · ETA {eta} · {msg}",
                )
                .expect("a valid template"),
            );
            b
        });
        Progress {
            bar,
            total,
            start: Instant::now(),
        }
    }

    fn tick(&self, c: &Collector) {
        let n = (c.done + c.failed) as u64;
        let rounds = c.rounds_run as f64 / c.done.max(1) as f64;
        match &self.bar {
            Some(b) => {
                b.set_position(n);
                b.set_message(format!("{rounds:.2} rounds/prompt, {} failed", c.failed));
            }
            None => {
                let step = (self.total / 10).max(1);
                if n.is_multiple_of(step) || n == self.total {
                    let rate = n as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "{n}/{} prompts · {rate:.1}/s · {rounds:.2} rounds/prompt · {} failed",
                        self.total, c.failed
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// The run's summary line and, when judged, its metrics table.
fn print_table(out: &mut String, m: &RunMetrics, dir: &Path) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "run {}: {} done, {} failed, {:.1} s",
        dir.display(),
        m.done,
        m.failed,
        m.seconds
    );
    if m.retries > 0 || m.restarts > 0 {
        let plural =
            |n: u64, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        let _ = write!(
            out,
            "; {} {}, {} replica {}",
            m.retries,
            plural(m.retries, "retry", "retries"),
            m.restarts,
            plural(m.restarts, "restart", "restarts")
        );
    }
    let _ = writeln!(out);
    if m.rounds.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "judged by the oracle: means over the {} done trajectories",
        m.done
    );
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>8} {:>11} {:>13} {:>10}",
        "round", "n", "SG-IoU", "Entity-IoU", "Relation-IoU", "rel. acc."
    );
    let mut row = |label: String, s: &MeanScores| {
        let _ = writeln!(
            out,
            "{label:<8} {:>6} {:>8.4} {:>11.4} {:>13.4} {:>10}",
            s.n,
            s.mean.sg_iou,
            s.mean.entity_iou,
            s.mean.relation_iou,
            s.relation_accuracy
                .map_or("-".into(), |a| format!("{a:.4}"))
        );
    };
    for r in &m.rounds {
        row(r.round.to_string(), &r.scores);
    }
    if let Some(f) = &m.final_ {
        row("final".into(), f);
    }
}
