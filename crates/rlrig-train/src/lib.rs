//! rlrig's GRPO trainer: the learner side of Reflection-GRPO, as a ractor actor.
//!
//! The rollout (the engine running the cycle with the Policy sampling `G` edit prompts per
//! round) and learning meet only in the trajectory store. The [`Trainer`] actor is told that
//! trajectories were committed; it reads them **from the store in commit order** (the store's
//! sequence numbers) from its cursor, turns them into GRPO groups
//! ([`rlrig_contract::GrpoGroup`]), skips groups sampled by weights more than
//! `max_staleness` versions old (counted), and steps a [`GrpoLearner`]. After each step it
//! publishes the new weights with their version (by a callback: the run layer sends them to the
//! Policy actors), appends a line to `metrics.jsonl`, and every `checkpoint_every` steps writes a
//! checkpoint.
//!
//! **Exactly once.** A step takes whole trajectories, in commit order, until it holds at least
//! `groups_per_step` groups that are young enough and whose rewards differ (the others are
//! dropped on the way, and counted: DAPO's dynamic sampling); the checkpoint stores the learner's state and the sequence number
//! of the last trajectory used, together, replaced atomically. A resumed trainer restores both
//! and reads on from there: a committed trajectory is used by exactly one step, whether it was
//! committed before or after the checkpoint, and a step taken after the checkpoint but before a
//! crash is taken again (its `metrics.jsonl` lines are dropped on resume).

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rlrig_contract::{GrpoGroup, GrpoLearner, LearnStats, Reward, WeightsUpdate};
use rlrig_store::TrajectoryStore;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The trainer's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerConfig {
    /// Learner steps to take.
    pub steps: u64,
    /// Groups a step needs at least (it takes whole trajectories).
    pub groups_per_step: usize,
    /// Groups sampled by weights more than this many versions old are skipped.
    pub max_staleness: u64,
    /// Checkpoint every this many steps (and after the last).
    pub checkpoint_every: u64,
    /// Where `metrics.jsonl` and `checkpoint/` go.
    pub dir: PathBuf,
    /// The reward of a sample: of the combined Checker report on its branch's last image.
    pub reward: Reward,
}

/// Sends new weights to the trained actor's replicas; fails with any error (e.g. the actor
/// stopped), which stops the trainer.
pub type Publish = Box<
    dyn Fn(WeightsUpdate) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

/// Why `metrics.jsonl` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a step's metrics.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

/// What the trainer is started with.
pub struct TrainerArgs {
    /// The learner, built from the starting weights (its KL reference).
    pub learner: Box<dyn GrpoLearner>,
    /// The run's store.
    pub store: Arc<TrajectoryStore>,
    /// Settings.
    pub config: TrainerConfig,
    /// Where new weights go.
    pub publish: Publish,
    /// Continue from `dir/checkpoint` if there is one.
    pub resume: bool,
    /// Told once when the trainer stops: after the last step, or why not.
    pub done: oneshot::Sender<Result<TrainSummary, String>>,
}

/// Messages to the trainer.
#[derive(Debug)]
pub enum TrainerMsg {
    /// Trajectories were committed to the store.
    Committed,
    /// No more trajectories will come: stop (reporting how far training got).
    Finish,
}

// Local only: never sent to another node.
impl ractor::Message for TrainerMsg {}

/// How training ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Learner steps taken, in all (resumed runs included).
    pub steps: u64,
    /// The policy version reached.
    pub version: u64,
    /// Whether `steps` was reached.
    pub complete: bool,
    /// Trajectories used.
    pub trajectories: u64,
    /// Groups given to the learner.
    pub groups: u64,
    /// Groups skipped as stale.
    pub stale_groups: u64,
    /// Groups filtered by the learner (equal rewards).
    pub filtered_groups: u64,
    /// The step resumed from (0 for a fresh run).
    pub resumed_from: u64,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The step (1-based).
    pub step: u64,
    /// Seconds since this trainer started.
    pub seconds: f64,
    /// Sequence numbers of the trajectories used: `first..=last`.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// Trajectories used.
    pub trajectories: usize,
    /// Groups skipped as stale.
    pub stale_groups: usize,
    /// Mean age of the groups used, in versions.
    pub staleness: f64,
    /// Trajectories committed per second since the trainer started.
    pub trajectories_per_s: f64,
    /// Mean reward over every fresh group of the step, those filtered for equal rewards
    /// included (the learner's `reward_mean` covers the groups it trained on only).
    #[serde(default)]
    pub reward_mean_all: f64,
    /// Standard deviation of the rewards of `reward_mean_all`.
    #[serde(default)]
    pub reward_std_all: f64,
    /// The learner's report.
    #[serde(flatten)]
    pub learn: LearnStats,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// The trainer's own state in a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    /// Sequence number of the last trajectory used.
    cursor: Option<u64>,
    summary: TrainSummary,
}

/// The trainer actor.
pub struct Trainer;

/// The trainer's state.
pub struct TrainerActorState {
    learner: Option<Box<dyn GrpoLearner>>,
    store: Arc<TrajectoryStore>,
    config: TrainerConfig,
    publish: Publish,
    done: Option<oneshot::Sender<Result<TrainSummary, String>>>,
    state: TrainerState,
    /// Read from the store, not yet used: (sequence number, its groups).
    buffer: VecDeque<(u64, Vec<GrpoGroup>)>,
    /// Sequence number of the last trajectory read into the buffer.
    read: Option<u64>,
    started: Instant,
    committed_at_start: u64,
    /// The step of the last checkpoint written.
    checkpointed: u64,
}

impl Actor for Trainer {
    type Msg = TrainerMsg;
    type State = TrainerActorState;
    type Arguments = TrainerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TrainerMsg>,
        args: TrainerArgs,
    ) -> Result<TrainerActorState, ActorProcessingErr> {
        let mut learner = args.learner;
        let mut state = TrainerState::default();
        let ckpt = args.config.dir.join("checkpoint");
        if args.resume
            && let Some(found) = checkpoint_to_resume(&ckpt)
        {
            let text = std::fs::read_to_string(found.join("trainer.json"))
                .map_err(|e| format!("{}: {e}", found.display()))?;
            state = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", found.display()))?;
            let dir = found.join("learner");
            let (l, r) = tokio::task::spawn_blocking(move || {
                let r = learner.restore(&dir);
                (learner, r)
            })
            .await?;
            learner = l;
            r?;
            state.summary.resumed_from = state.step;
            truncate_metrics(&args.config.dir.join("metrics.jsonl"), state.step)?;
            tracing::info!(
                step = state.step,
                version = learner.version(),
                "trainer resumed"
            );
            (args.publish)(learner.update()?)?;
        } else {
            std::fs::File::create(args.config.dir.join("metrics.jsonl"))?;
        }
        let committed_at_start = args.store.next_seq()?;
        let checkpointed_step = state.step;
        Ok(TrainerActorState {
            read: state.cursor,
            learner: Some(learner),
            store: args.store,
            config: args.config,
            publish: args.publish,
            done: Some(args.done),
            state,
            buffer: VecDeque::new(),
            started: Instant::now(),
            committed_at_start,
            checkpointed: checkpointed_step,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TrainerMsg>,
        msg: TrainerMsg,
        st: &mut TrainerActorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.state.step >= st.config.steps {
            st.finish(&myself, true);
            return Ok(());
        }
        match msg {
            TrainerMsg::Committed => {
                if let Err(e) = st.train(&myself).await {
                    st.fail(&myself, e);
                }
            }
            TrainerMsg::Finish => {
                let mut r = st.train(&myself).await;
                // Stopped before the last step (prompts ran out, Ctrl-C): keep every step taken,
                // so that a resume goes on from here rather than from the last periodic checkpoint.
                if r.is_ok() && st.state.step > st.checkpointed {
                    r = st.checkpoint().await;
                }
                match r {
                    Err(e) => st.fail(&myself, e),
                    Ok(()) => st.finish(&myself, st.state.step >= st.config.steps),
                }
            }
        }
        Ok(())
    }
}

impl TrainerActorState {
    /// Reads what was committed since the last read, then takes every step it can.
    async fn train(&mut self, myself: &ActorRef<TrainerMsg>) -> Result<(), String> {
        loop {
            let batch = self
                .store
                .committed_after(self.read, 256)
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            for (seq, t) in batch {
                let groups = t
                    .grpo_groups(&self.config.reward)
                    .map_err(|e| format!("trajectory {} (store sequence {seq}): {e}", t.id))?;
                self.read = Some(seq);
                self.buffer.push_back((seq, groups));
            }
        }
        while self.state.step < self.config.steps {
            // Whole trajectories in commit order until enough fresh groups are in hand; groups
            // older than `max_staleness` versions are dropped (and counted) on the way.
            let version = self
                .learner
                .as_ref()
                .ok_or("the learner was lost")?
                .version();
            let (mut need, mut fresh) = (0, 0);
            for (_, groups) in &self.buffer {
                need += 1;
                fresh += groups
                    .iter()
                    .filter(|g| {
                        fresh_enough(version, g.version(), self.config.max_staleness)
                            && informative(g)
                    })
                    .count();
                if fresh >= self.config.groups_per_step {
                    break;
                }
            }
            if fresh < self.config.groups_per_step {
                break;
            }
            let used: Vec<(u64, Vec<GrpoGroup>)> = self.buffer.drain(..need).collect();
            self.step(used).await?;
        }
        if self.state.step >= self.config.steps {
            self.finish(myself, true);
        }
        Ok(())
    }

    async fn step(&mut self, used: Vec<(u64, Vec<GrpoGroup>)>) -> Result<(), String> {
        let mut learner = self.learner.take().ok_or("the learner was lost")?;
        let version = learner.version();
        let (first_seq, last_seq) = (used[0].0, used[used.len() - 1].0);
        let trajectories = used.len();
        let mut stale = 0;
        let mut ages = Vec::new();
        let mut groups = Vec::new();
        let mut equal = 0;
        let mut all_rewards = Vec::new();
        for g in used.into_iter().flat_map(|(_, g)| g) {
            if !fresh_enough(version, g.version(), self.config.max_staleness) {
                stale += 1;
                continue;
            }
            let age = version - g.version();
            all_rewards.extend(g.samples.iter().map(|s| s.reward));
            if !informative(&g) {
                equal += 1;
            } else {
                ages.push(age as f64);
                groups.push(g);
            }
        }
        let (learner, result) = tokio::task::spawn_blocking(move || {
            let r = learner
                .step(&groups)
                .and_then(|s| Ok((s, learner.update()?)));
            (learner, r)
        })
        .await
        .map_err(|e| format!("the learner thread failed: {e}"))?;
        self.learner = Some(learner);
        let (mut stats, update) = result.map_err(|e| format!("learner step: {e}"))?;
        stats.filtered_groups += equal;
        if stats.version != version {
            (self.publish)(update).map_err(|e| e.to_string())?;
        }
        self.state.step += 1;
        self.state.cursor = Some(last_seq);
        let s = &mut self.state.summary;
        s.steps = self.state.step;
        s.version = stats.version;
        s.trajectories += trajectories as u64;
        s.groups += stats.groups as u64;
        s.stale_groups += stale as u64;
        s.filtered_groups += stats.filtered_groups as u64;
        let seconds = self.started.elapsed().as_secs_f64();
        let committed = self.store.next_seq().map_err(|e| e.to_string())?;
        let line = StepMetrics {
            step: self.state.step,
            seconds,
            first_seq,
            last_seq,
            trajectories,
            stale_groups: stale,
            staleness: if ages.is_empty() {
                0.0
            } else {
                ages.iter().sum::<f64>() / ages.len() as f64
            },
            trajectories_per_s: (committed - self.committed_at_start) as f64 / seconds.max(1e-9),
            reward_mean_all: mean(&all_rewards),
            reward_std_all: {
                let m = mean(&all_rewards);
                mean(
                    &all_rewards
                        .iter()
                        .map(|r| (r - m).powi(2))
                        .collect::<Vec<_>>(),
                )
                .sqrt()
            },
            learn: stats,
        };
        tracing::info!(
            step = line.step,
            reward = line.learn.reward_mean,
            kl = line.learn.kl,
            "learner step"
        );
        let path = self.config.dir.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{}", serde_json::to_string(&line).expect("serialises"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if self.state.step.is_multiple_of(self.config.checkpoint_every)
            || self.state.step >= self.config.steps
        {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Writes the learner and the trainer's state into a scratch directory, then swaps it in.
    async fn checkpoint(&mut self) -> Result<(), String> {
        // The cursor must never point past what is on disk: a crash may lose sled writes that
        // were not flushed, and their sequence numbers would be given out again.
        self.store.flush().map_err(|e| e.to_string())?;
        let ckpt = self.config.dir.join("checkpoint");
        let tmp = rlrig_checkpoint::scratch(&ckpt).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(tmp.join("learner"))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let learner = self.learner.take().ok_or("the learner was lost")?;
        let dir = tmp.join("learner");
        let (learner, r) = tokio::task::spawn_blocking(move || {
            let r = learner.save(&dir);
            (learner, r)
        })
        .await
        .map_err(|e| format!("the checkpoint thread failed: {e}"))?;
        self.learner = Some(learner);
        r.map_err(|e| e.to_string())?;
        std::fs::write(
            tmp.join("trainer.json"),
            serde_json::to_string_pretty(&self.state).expect("serialises"),
        )
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
        rlrig_checkpoint::swap_in(&tmp, &ckpt).map_err(|e| e.to_string())?;
        self.checkpointed = self.state.step;
        Ok(())
    }

    fn finish(&mut self, myself: &ActorRef<TrainerMsg>, complete: bool) {
        if let Some(done) = self.done.take() {
            let mut s = self.state.summary.clone();
            s.complete = complete;
            s.steps = self.state.step;
            if let Some(l) = &self.learner {
                s.version = l.version();
            }
            let _ = done.send(Ok(s));
        }
        myself.stop(None);
    }

    fn fail(&mut self, myself: &ActorRef<TrainerMsg>, error: String) {
        tracing::error!(%error, "trainer failed");
        if let Some(done) = self.done.take() {
            let _ = done.send(Err(error));
        }
        myself.stop(None);
    }
}

/// Whether a group's rewards differ: one whose rewards are all equal has no advantage to learn
/// from and is filtered (DAPO's dynamic sampling): a step waits for `groups_per_step` groups
/// that carry a signal.
fn informative(g: &GrpoGroup) -> bool {
    g.samples.iter().any(|s| s.reward != g.samples[0].reward)
}

/// Whether a group sampled by weights version `sampled` may train the learner at `version`: at
/// most `max_staleness` versions old, and not from a version the learner has not reached — such
/// a group was sampled by weights lost in a crash after the last checkpoint (the resumed learner
/// hands those version numbers out again for other weights), so it counts as stale.
fn fresh_enough(version: u64, sampled: u64, max_staleness: u64) -> bool {
    sampled <= version && version - sampled <= max_staleness
}

/// The checkpoint to resume from: `checkpoint/`, or `checkpoint.old/` when a crash came
/// between the two renames of a swap ([`rlrig_checkpoint::to_resume`]).
pub fn checkpoint_to_resume(ckpt: &Path) -> Option<PathBuf> {
    rlrig_checkpoint::to_resume(ckpt, "trainer.json")
}

/// Keeps the lines of `metrics.jsonl` up to step `step` (the later ones belong to steps that
/// will be taken again), rewriting the file atomically.
fn truncate_metrics(path: &Path, step: u64) -> Result<(), String> {
    rlrig_checkpoint::truncate_jsonl(path, |l| {
        serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= step)
    })
    .map_err(|e| e.to_string())
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| MetricsError::Line {
                path: path.to_owned(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64) -> String {
        let m = StepMetrics {
            step,
            seconds: 0.0,
            first_seq: step * 10,
            last_seq: step * 10 + 9,
            trajectories: 10,
            stale_groups: 0,
            staleness: 0.0,
            trajectories_per_s: 0.0,
            reward_mean_all: 0.0,
            reward_std_all: 0.0,
            learn: LearnStats::default(),
        };
        serde_json::to_string(&m).unwrap() + "\n"
    }

    #[test]
    fn resume_drops_the_metric_lines_of_steps_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            (1..=5).map(line).collect::<String>() + "{\"step\": 6, tor",
        )
        .unwrap();
        truncate_metrics(&path, 3).unwrap();
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(steps, vec![1, 2, 3]);
    }

    #[test]
    fn groups_from_versions_lost_in_a_crash_are_stale() {
        assert!(fresh_enough(5, 5, 2) && fresh_enough(5, 3, 2));
        assert!(!fresh_enough(5, 2, 2), "three versions old");
        assert!(
            !fresh_enough(5, 6, 2),
            "sampled by a version the learner has not reached"
        );
        assert!(fresh_enough(0, 0, 0));
    }

    #[test]
    fn a_crash_between_the_two_renames_resumes_from_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        assert_eq!(checkpoint_to_resume(&ckpt), None);
        let tmp = rlrig_checkpoint::scratch(&ckpt).unwrap();
        std::fs::write(tmp.join("trainer.json"), "{}").unwrap();
        rlrig_checkpoint::swap_in(&tmp, &ckpt).unwrap();
        assert_eq!(checkpoint_to_resume(&ckpt), Some(ckpt.clone()));
        // The state after `rename(checkpoint → checkpoint.old)` and before the second rename.
        std::fs::rename(&ckpt, ckpt.with_extension("old")).unwrap();
        assert_eq!(
            checkpoint_to_resume(&ckpt),
            Some(ckpt.with_extension("old"))
        );
        // A scratch directory alone (a crash while writing) is never resumed from.
        std::fs::remove_dir_all(ckpt.with_extension("old")).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("trainer.json"), "{}").unwrap();
        assert_eq!(checkpoint_to_resume(&ckpt), None);
    }
}
