//! Checkpoints that survive a crash at any moment, shared by rlrig's training loops (the GRPO
//! trainer and the models' pre-training).
//!
//! A checkpoint is a directory, `checkpoint/` say. A new one is written aside, into
//! [`scratch`] (`checkpoint.tmp/`), then [`swap_in`] puts it in place with two renames:
//! `checkpoint → checkpoint.old`, `checkpoint.tmp → checkpoint`, and removes
//! `checkpoint.old`. At every moment one whole checkpoint exists: a process killed between the
//! two renames leaves only `checkpoint.old/`, which [`to_resume`] then picks. A directory is
//! known whole by its *marker*, the file a loop writes last (`state.json`, `trainer.json`).
//!
//! A log of one JSON line per step (`loss.jsonl`, `metrics.jsonl`) runs ahead of the last
//! checkpoint; a resume drops the lines of the steps it takes again with [`truncate_jsonl`],
//! which replaces the file atomically ([`write_atomic`]): a crash during the rewrite leaves the
//! old log or the new one, never a truncated one.

#![warn(missing_docs)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a checkpoint or a log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing, syncing or removing `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Renaming `from` to `to` failed.
    #[error("renaming {from} to {to}: {source}")]
    Rename {
        /// The old name.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An I/O error on `path`, for `map_err`.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `path` with `.suffix` appended to its file name (`checkpoint` → `checkpoint.old`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Where the previous checkpoint waits during a swap: `<ckpt>.old`.
pub fn old_path(ckpt: &Path) -> PathBuf {
    sibling(ckpt, "old")
}

/// Where a new checkpoint is written before [`swap_in`]: `<ckpt>.tmp`.
pub fn scratch_path(ckpt: &Path) -> PathBuf {
    sibling(ckpt, "tmp")
}

/// Makes an empty scratch directory for the next checkpoint of `ckpt` (removing what a crash
/// left there) and returns its path.
pub fn scratch(ckpt: &Path) -> Result<PathBuf, CheckpointError> {
    let tmp = scratch_path(ckpt);
    remove_dir_if_there(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
    Ok(tmp)
}

/// Makes the whole directory `tmp` the checkpoint `ckpt`: syncs its files to disk, renames
/// `ckpt` to `<ckpt>.old`, `tmp` to `ckpt`, and removes `<ckpt>.old`. When `ckpt` is missing
/// (a crash came between the two renames of the last swap), `<ckpt>.old` is the only whole
/// checkpoint and stays until `tmp` is in place.
pub fn swap_in(tmp: &Path, ckpt: &Path) -> Result<(), CheckpointError> {
    sync_tree(tmp)?;
    let old = old_path(ckpt);
    if ckpt.exists() {
        // `ckpt` is whole, so what `<ckpt>.old` holds is garbage.
        remove_dir_if_there(&old)?;
        rename(ckpt, &old)?;
    }
    rename(tmp, ckpt)?;
    sync_parent(ckpt)?;
    // A leftover `<ckpt>.old` is harmless: resume prefers `ckpt`, the next swap removes it.
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// The checkpoint to resume from: `ckpt`, or `<ckpt>.old` when a crash came between the two
/// renames of a swap; whichever holds the `marker` file. `None` when neither does.
pub fn to_resume(ckpt: &Path, marker: &str) -> Option<PathBuf> {
    [ckpt.to_path_buf(), old_path(ckpt)]
        .into_iter()
        .find(|p| p.join(marker).is_file())
}

/// Whether `ckpt` or `<ckpt>.old` exists: a fresh start must not write over either.
pub fn exists(ckpt: &Path) -> bool {
    ckpt.exists() || old_path(ckpt).exists()
}

/// Keeps the lines of the JSON-lines log `path` that `keep` accepts (a resume drops those of
/// the steps it takes again; a torn last line should fail `keep`'s parse), replacing the file
/// atomically. A missing file is left missing.
pub fn truncate_jsonl(
    path: &Path,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<(), CheckpointError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(path)(e)),
    };
    let kept: String = String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| keep(l))
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

/// Replaces the file `path` with `contents` atomically and durably: writes `<path>.tmp`, syncs
/// it, renames it over `path` and syncs the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    let tmp = sibling(path, "tmp");
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(contents).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    drop(f);
    rename(&tmp, path)?;
    sync_parent(path)
}

fn rename(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    fs::rename(from, to).map_err(|source| CheckpointError::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    })
}

fn remove_dir_if_there(dir: &Path) -> Result<(), CheckpointError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(dir)(e)),
        _ => Ok(()),
    }
}

/// Syncs every file under `dir`, then the directories, so that a renamed checkpoint is whole
/// on disk and not only in the page cache.
fn sync_tree(dir: &Path) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_at(&path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_at(&path))?;
        }
    }
    sync_dir(dir)
}

/// Syncs the directory holding `path` (the record of a rename).
fn sync_parent(path: &Path) -> Result<(), CheckpointError> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_at(dir))
}

/// Directories cannot be opened as files here; renames are as durable as the platform makes
/// them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), CheckpointError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "state.json";

    /// Writes a whole checkpoint of `step` into a fresh scratch directory and swaps it in.
    fn checkpoint(ckpt: &Path, step: u64) {
        let tmp = scratch(ckpt).unwrap();
        fs::create_dir_all(tmp.join("learner")).unwrap();
        fs::write(tmp.join("learner/weights.bin"), [step as u8; 16]).unwrap();
        fs::write(tmp.join(MARKER), step.to_string()).unwrap();
        swap_in(&tmp, ckpt).unwrap();
    }

    fn step_of(dir: &Path) -> u64 {
        fs::read_to_string(dir.join(MARKER))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_swap_replaces_the_checkpoint_and_leaves_nothing_aside() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        assert_eq!(to_resume(&ckpt, MARKER), None);
        assert!(!exists(&ckpt));
        checkpoint(&ckpt, 1);
        checkpoint(&ckpt, 2);
        assert_eq!(to_resume(&ckpt, MARKER), Some(ckpt.clone()));
        assert_eq!(step_of(&ckpt), 2);
        assert_eq!(fs::read(ckpt.join("learner/weights.bin")).unwrap(), [2; 16]);
        assert!(!old_path(&ckpt).exists() && !scratch_path(&ckpt).exists());
        assert_eq!(old_path(&ckpt), dir.path().join("checkpoint.old"));
    }

    #[test]
    fn a_crash_between_the_two_renames_resumes_from_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        checkpoint(&ckpt, 4);
        // The next checkpoint is written aside, then the process dies after
        // `rename(checkpoint → checkpoint.old)` and before `rename(checkpoint.tmp → checkpoint)`.
        let tmp = scratch(&ckpt).unwrap();
        fs::write(tmp.join(MARKER), "6").unwrap();
        fs::rename(&ckpt, old_path(&ckpt)).unwrap();

        let found = to_resume(&ckpt, MARKER).expect("the old checkpoint");
        assert_eq!(found, old_path(&ckpt));
        assert_eq!(step_of(&found), 4);
        assert!(exists(&ckpt), "a fresh start must not write over it");

        // The resumed run's next swap keeps `checkpoint.old` until the new one is in place.
        checkpoint(&ckpt, 5);
        assert_eq!(to_resume(&ckpt, MARKER), Some(ckpt.clone()));
        assert_eq!(step_of(&ckpt), 5);
        assert!(!old_path(&ckpt).exists());
    }

    #[test]
    fn a_swap_after_a_crash_mid_swap_never_leaves_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        checkpoint(&ckpt, 1);
        fs::rename(&ckpt, old_path(&ckpt)).unwrap();
        // The state just before the second rename of the resumed run's first swap.
        let tmp = scratch(&ckpt).unwrap();
        fs::write(tmp.join(MARKER), "2").unwrap();
        sync_tree(&tmp).unwrap();
        assert!(!ckpt.exists());
        assert_eq!(
            to_resume(&ckpt, MARKER),
            Some(old_path(&ckpt)),
            "checkpoint.old must survive until the new checkpoint is in place"
        );
    }

    #[test]
    fn a_scratch_directory_alone_is_never_resumed_from() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoint");
        let tmp = scratch(&ckpt).unwrap();
        fs::write(tmp.join(MARKER), "1").unwrap();
        assert_eq!(to_resume(&ckpt, MARKER), None);
        // Nor a directory without its marker (written last).
        fs::create_dir_all(&ckpt).unwrap();
        assert_eq!(to_resume(&ckpt, MARKER), None);
        // A new scratch directory starts empty.
        let tmp = scratch(&ckpt).unwrap();
        assert_eq!(fs::read_dir(tmp).unwrap().count(), 0);
    }

    #[test]
    fn truncating_a_log_keeps_the_accepted_lines_and_drops_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.jsonl");
        truncate_jsonl(&path, |_| true).unwrap();
        assert!(!path.exists(), "a missing log stays missing");
        let lines: String = (1..=5).map(|s| format!("{{\"step\":{s}}}\n")).collect();
        fs::write(&path, lines + "{\"step\":6,\"lo").unwrap();
        let step = |l: &str| {
            l.strip_prefix("{\"step\":")
                .and_then(|r| r.strip_suffix('}'))
                .and_then(|s| s.parse::<u64>().ok())
        };
        truncate_jsonl(&path, |l| step(l).is_some_and(|s| s <= 3)).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n"
        );
        assert!(!dir.path().join("loss.jsonl.tmp").exists());
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, "a long old content\n").unwrap();
        write_atomic(&path, b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        let e = write_atomic(&dir.path().join("missing/x.jsonl"), b"").unwrap_err();
        assert!(e.to_string().contains("missing/x.jsonl.tmp"), "{e}");
    }
}
