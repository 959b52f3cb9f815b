//! A pre-training run killed with SIGKILL at random moments — between checkpoints, while a
//! checkpoint is written and swapped in, and left as a kill between the swap's two renames
//! leaves it — resumes each time (`rlrig run … --resume`, the real binary) and finishes with a
//! loss log that holds every step once, in order.
//!
//! The kills are drawn from a seed printed by the test; `RLRIG_CRASH_SEED=N` repeats a draw
//! and `RLRIG_CRASH_KILLS=N` kills more often (default 5).
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// Steps of the tiny run (a few milliseconds each): long enough to be killed five times.
const STEPS: u64 = 800;

/// A tiny Diffuser pre-training flow (a one-block DiT 16 wide) that checkpoints every other
/// step, writing its run into `dir/runs/crash/`.
fn write_flow(dir: &Path) -> PathBuf {
    let flow = dir.join("crash.toml");
    let runs = dir.join("runs");
    std::fs::write(
        &flow,
        format!(
            r#"name = "crash"
run_dir = "{}"

[pretrain]
model = "diffuser"
architecture = {{ patch = 8, width = 16, depth = 1, heads = 2 }}
steps = {STEPS}
batch = 2
lr = 1e-3
warmup = 2
seed = 3
checkpoint_every = 2
sample_every = 100000
"#,
            runs.display()
        ),
    )
    .unwrap();
    flow
}

/// Starts `rlrig run FLOW`, resuming when the run has a checkpoint (or, after a kill mid-swap,
/// only `checkpoint.old`), else starting afresh over what an early kill left.
fn start(flow: &Path, run: &Path, log: &Path) -> Child {
    let resume = run.join("checkpoint").exists() || run.join("checkpoint.old").exists();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlrig"));
    c.arg("run").arg(flow);
    c.arg(if resume { "--resume" } else { "--overwrite" });
    c.current_dir(flow.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starts rlrig")
}

/// The step of the whole checkpoint a resume would read, if any.
fn checkpointed_step(run: &Path) -> Option<u64> {
    ["checkpoint", "checkpoint.old"].iter().find_map(|d| {
        let text = std::fs::read_to_string(run.join(d).join("state.json")).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        state["step"].as_u64()
    })
}

/// The steps of `loss.jsonl`, in file order.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("loss.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("a torn line {l:?}: {e}"))["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// When a kill comes.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// After a random delay from the start.
    Random,
    /// Within a few milliseconds of a checkpoint's scratch directory appearing: while the
    /// checkpoint is written, synced or swapped in.
    AtCheckpoint,
    /// At a random moment after the invocation's first checkpoint, then the checkpoint is left
    /// as a kill between the swap's two renames leaves it: `checkpoint.old/` only.
    MidSwap,
}

#[test]
fn sigkill_at_random_moments_then_resume_logs_every_step_once() {
    let seed = std::env::var("RLRIG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let kills_wanted: usize = std::env::var("RLRIG_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    eprintln!("RLRIG_CRASH_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let flow = write_flow(tmp.path());
    let run = tmp.path().join("runs/crash");
    let log = tmp.path().join("stderr.log");
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let plan = [Moment::Random, Moment::AtCheckpoint, Moment::MidSwap];
    let (mut kills, mut mid_swaps, mut best) = (0, 0, None::<u64>);
    for attempt in 0..kills_wanted {
        let moment = plan[attempt % plan.len()];
        let mut child = start(&flow, &run, &log);
        let started = Instant::now();
        match moment {
            Moment::Random => {
                let ms = rng.random_range(20..500);
                while started.elapsed() < Duration::from_millis(ms)
                    && child.try_wait().unwrap().is_none()
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Moment::MidSwap => {
                // Once this invocation has checkpointed, at a random moment after.
                let before = checkpointed_step(&run);
                while started.elapsed() < Duration::from_secs(30)
                    && child.try_wait().unwrap().is_none()
                    && checkpointed_step(&run) <= before
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
            }
            Moment::AtCheckpoint => {
                // The next checkpoint after a random number of them.
                let mut skip = rng.random_range(0..4);
                let mut seen = run.join("checkpoint.tmp").exists();
                while started.elapsed() < Duration::from_secs(30)
                    && child.try_wait().unwrap().is_none()
                {
                    let now = run.join("checkpoint.tmp").exists();
                    if now && !seen {
                        if skip == 0 {
                            std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
                            break;
                        }
                        skip -= 1;
                    }
                    seen = now;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        let killed = match child.try_wait().unwrap() {
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                true
            }
            Some(status) => {
                assert!(status.success(), "attempt {attempt}: {}", show_log());
                false
            }
        };
        // A whole checkpoint is always there once one was, and never older than the last one.
        let step = checkpointed_step(&run);
        if let Some(b) = best {
            assert!(
                step.is_some_and(|s| s >= b),
                "attempt {attempt} ({moment:?}): checkpoint at step {b} lost (now {step:?})"
            );
        }
        best = step.or(best);
        let left: Vec<&str> = ["checkpoint", "checkpoint.tmp", "checkpoint.old"]
            .into_iter()
            .filter(|d| run.join(d).exists())
            .collect();
        eprintln!(
            "attempt {attempt}: {moment:?}, {} ms, {}, checkpoint at step {step:?}, left {left:?}",
            started.elapsed().as_millis(),
            if killed { "killed" } else { "finished" },
        );
        // (Not once the last checkpoint is written: a resume would have nothing left to swap.)
        if matches!(moment, Moment::MidSwap)
            && killed
            && step.is_some_and(|s| s < STEPS)
            && run.join("checkpoint").exists()
        {
            // A leftover `checkpoint.old` (a kill just after a swap's second rename) is what
            // the next swap removes before its first rename.
            let _ = std::fs::remove_dir_all(run.join("checkpoint.old"));
            std::fs::rename(run.join("checkpoint"), run.join("checkpoint.old")).unwrap();
            mid_swaps += 1;
        }
    }

    // The last resume runs to the end.
    let status = start(&flow, &run, &log).wait().unwrap();
    assert!(status.success(), "{}", show_log());
    assert!(
        kills >= kills_wanted.min(3),
        "the test must really kill pre-training ({kills} kills of {kills_wanted})"
    );
    if kills_wanted >= 3 {
        assert!(mid_swaps >= 1, "no run was left mid-swap");
    }
    assert_eq!(
        logged_steps(&run),
        (1..=STEPS).collect::<Vec<_>>(),
        "every step logged once, in order"
    );
    assert_eq!(checkpointed_step(&run), Some(STEPS));
    assert!(run.join("model.safetensors").is_file());
    assert!(!run.join("checkpoint.old").exists() && !run.join("loss.jsonl.tmp").exists());
}
