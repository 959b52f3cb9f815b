//! The trajectory store: every trajectory of a run, persisted in a sled database.
//!
//! * **An append-only commit log.** [`TrajectoryStore::put`] appends: in one sled transaction it
//!   writes the trajectory, the images it references and a log entry under the next sequence
//!   number (0, 1, 2, … gap-free, in commit order, also with concurrent writers). A reader sees
//!   all of it or none of it, and a crash never leaves half a trajectory visible.
//! * **Read by cursor.** A consumer (the asynchronous GRPO trainer) keeps the last sequence
//!   number it has read and asks [`TrajectoryStore::committed_after`] for what came after it.
//! * **Ids are unique.** Putting a trajectory whose id is already stored is
//!   [`StoreError::Duplicate`] and writes nothing: stored trajectories never change.
//! * **Content-addressed images.** Images are stored once as PNG under the BLAKE3 hash of their
//!   PNG bytes; trajectories hold the hash.
//! * **Versioned.** The store records its format name and schema version on creation and checks
//!   them on open: an old or foreign database is a clear error, never read as garbage.
//!
//! Trees: `meta` (format, schema version, next sequence number), `trajectories` (id, u64
//! big-endian → JSON record), `images` (BLAKE3 hex → PNG), `log` (sequence number, u64
//! big-endian → id, u64 big-endian).

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rlrig_contract::{Branch, Image, Outcome, Step, StepOutput, Trajectory};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// The format name written into every store.
pub const FORMAT: &str = "rlrig-trajectories";
/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// How long [`TrajectoryStore::open`] waits for the database lock. sled releases a closed
/// database's lock only when its background threads let go of it, a few milliseconds after the
/// last handle drops, so a store closed and reopened at once must wait briefly.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The file beside sled's own, outside the database, that records how many trajectories were
/// committed at the last [`TrajectoryStore::flush`] (decimal text). sled recovers damaged
/// files by dropping everything after the damage, which leaves a consistent but shorter store;
/// this count, kept where sled's recovery cannot roll it back, tells such a store from a whole one.
const FLUSHED_FILE: &str = "rlrig-flushed";

/// sled's page cache, in bytes. sled's default (1 GiB) lets a long run's resident memory grow
/// with every trajectory it stores; trajectories are written once and read rarely, so a small
/// cache costs little.
const CACHE_BYTES: u64 = 8 << 20;

/// The `meta` key holding the next sequence number (u64 big-endian; absent means 0).
const NEXT_SEQ: &str = "next_seq";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed, e.g. on a full disk. The cause is part of the message (not a `source()`),
    /// so a printed error chain names it once.
    #[error("trajectory store {path}: {cause}")]
    Sled {
        /// The store's directory.
        path: PathBuf,
        /// The sled error.
        cause: sled::Error,
    },
    /// The database is not an rlrig trajectory store, or of another schema version.
    #[error("trajectory store {path}: {message}")]
    Incompatible {
        /// The store's directory.
        path: PathBuf,
        /// What was found instead.
        message: String,
    },
    /// A record could not be encoded or decoded.
    #[error("trajectory store {path}: trajectory {id}: {message}")]
    Record {
        /// The store's directory.
        path: PathBuf,
        /// The trajectory id.
        id: u64,
        /// What failed.
        message: String,
    },
    /// sled found corrupt data in the store's files (truncated or overwritten); what they hold
    /// cannot be read.
    #[error("trajectory store {path} is damaged: {detail}")]
    Damaged {
        /// The store's directory.
        path: PathBuf,
        /// What sled found.
        detail: String,
    },
    /// The committed count beside the database (see [`TrajectoryStore::flush`]) could not be
    /// written. The cause is part of the message.
    #[error("trajectory store {path}: recording the committed count: {cause}")]
    Count {
        /// The store's directory.
        path: PathBuf,
        /// What failed.
        cause: rlrig_checkpoint::CheckpointError,
    },
    /// Another handle, usually another process, holds the store's lock and kept it for the
    /// whole wait.
    #[error(
        "trajectory store {path} is in use by another process (its lock was still held after {waited_ms} ms)"
    )]
    InUse {
        /// The store's directory.
        path: PathBuf,
        /// How long `open` waited for the lock, in milliseconds.
        waited_ms: u128,
    },
    /// A trajectory with this id is already stored; nothing was written.
    #[error("trajectory store {path}: trajectory {id} is already stored")]
    Duplicate {
        /// The store's directory.
        path: PathBuf,
        /// The trajectory id.
        id: u64,
    },
}

/// A reference to a stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// BLAKE3 hash (hex) of the PNG bytes.
    pub blake3: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// A step as stored: images by reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredStep {
    round: u32,
    actor: String,
    role: rlrig_contract::Role,
    output: StoredOutput,
    attempts: u32,
    elapsed_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    branch: Option<Branch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<rlrig_contract::DenoisingChain>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredOutput {
    Image(ImageRef),
    Report(rlrig_contract::CheckReport),
    Edit(rlrig_contract::EditProposal),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredTrajectory {
    id: u64,
    prompt: rlrig_contract::SceneGraph,
    seed: u64,
    steps: Vec<StoredStep>,
    outcome: Outcome,
    started_unix_ms: u64,
    elapsed_ms: u64,
}

/// A sled error as a [`StoreError`]: corruption is [`StoreError::Damaged`].
fn sled_error(path: &Path, source: sled::Error) -> StoreError {
    match source {
        sled::Error::Corruption { at, .. } => StoreError::Damaged {
            path: path.to_path_buf(),
            detail: match at {
                Some(at) => format!("sled found corrupt data at {at}"),
                None => "sled found corrupt data in its files".into(),
            },
        },
        cause => StoreError::Sled {
            path: path.to_path_buf(),
            cause,
        },
    }
}

/// Opens the sled database at `path`, retrying while its lock is held, for at most `wait`.
fn open_locked(path: &Path, wait: Duration) -> Result<sled::Db, StoreError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled 0.34 reports a held lock only as this message (config.rs).
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if start.elapsed() >= wait {
                    return Err(StoreError::InUse {
                        path: path.to_path_buf(),
                        waited_ms: start.elapsed().as_millis(),
                    });
                }
                std::thread::sleep(pause.min(wait.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(source) => return Err(sled_error(path, source)),
        }
    }
}

/// Why a `put` transaction aborted.
enum Abort {
    Duplicate,
    Counter,
}

/// A sled database of trajectories.
pub struct TrajectoryStore {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    trajectories: sled::Tree,
    images: sled::Tree,
    log: sled::Tree,
    /// Held while [`FLUSHED_FILE`] is written.
    flushing: std::sync::Mutex<()>,
}

impl TrajectoryStore {
    /// Opens the store at `path`, creating it if the directory does not exist. An existing
    /// database must carry this format and schema version. A held lock is waited for up to
    /// [`LOCK_WAIT`], then [`StoreError::InUse`]. Damaged files are [`StoreError::Damaged`]:
    /// sled's own checksums, a commit log that does not end at the sequence counter, or fewer
    /// trajectories than the last [`TrajectoryStore::flush`] recorded.
    pub fn open(path: &Path) -> Result<TrajectoryStore, StoreError> {
        TrajectoryStore::open_waiting(path, LOCK_WAIT)
    }

    /// [`TrajectoryStore::open`], waiting at most `wait` for the database lock.
    pub fn open_waiting(path: &Path, wait: Duration) -> Result<TrajectoryStore, StoreError> {
        let sled_err = |source| sled_error(path, source);
        let incompatible = |message: String| StoreError::Incompatible {
            path: path.to_path_buf(),
            message,
        };
        let db = open_locked(path, wait)?;
        let meta = db.open_tree("meta").map_err(sled_err)?;
        let format = meta.get("format").map_err(sled_err)?;
        let version = meta.get("schema_version").map_err(sled_err)?;
        match (format, version) {
            (None, None) => {
                let populated = db
                    .tree_names()
                    .iter()
                    .any(|n| n.as_ref() != b"__sled__default" && n.as_ref() != b"meta")
                    || !db.is_empty();
                if populated {
                    return Err(incompatible(
                        "not an rlrig trajectory store (no format marker)".into(),
                    ));
                }
                meta.insert("format", FORMAT).map_err(sled_err)?;
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(sled_err)?;
                meta.flush().map_err(sled_err)?;
            }
            (Some(f), _) if f.as_ref() != FORMAT.as_bytes() => {
                return Err(incompatible(format!(
                    "not an rlrig trajectory store (format {:?})",
                    String::from_utf8_lossy(&f)
                )));
            }
            (Some(_), Some(v)) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(incompatible(format!(
                        "schema version {found}; this rlrig reads version {SCHEMA_VERSION}"
                    )));
                }
            }
            _ => return Err(incompatible("damaged format marker".into())),
        }
        let trajectories = db.open_tree("trajectories").map_err(sled_err)?;
        let images = db.open_tree("images").map_err(sled_err)?;
        let log = db.open_tree("log").map_err(sled_err)?;
        let store = TrajectoryStore {
            path: path.to_path_buf(),
            db,
            meta,
            trajectories,
            images,
            log,
            flushing: std::sync::Mutex::new(()),
        };
        store.check_whole()?;
        Ok(store)
    }

    /// Refuses a store that holds fewer trajectories than its last flush recorded, or whose
    /// commit log does not end at its sequence counter.
    fn check_whole(&self) -> Result<(), StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            path: self.path.clone(),
            detail,
        };
        let next = self.next_seq()?;
        let last = self.log.last().map_err(|source| self.sled(source))?;
        let last = last.and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok());
        if last.map(|k| u64::from_be_bytes(k) + 1).unwrap_or(0) != next {
            return Err(damaged(format!(
                "its commit log does not end at its counter of {next} trajectories"
            )));
        }
        let flushed = match std::fs::read_to_string(self.path.join(FLUSHED_FILE)) {
            Ok(text) => text.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => None,
        };
        match flushed {
            Some(flushed) if next >= flushed => Ok(()),
            Some(flushed) => Err(damaged(format!(
                "it holds {next} trajectories, but {flushed} were committed and flushed; sled \
                 dropped the rest when it recovered its damaged files"
            ))),
            None => Err(damaged(format!("{FLUSHED_FILE} is unreadable"))),
        }
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a trajectory: writes it, its images and its log entry in one transaction and
    /// returns its sequence number. A trajectory with the same id already stored is
    /// [`StoreError::Duplicate`], and nothing is written.
    pub fn put(&self, t: &Trajectory) -> Result<u64, StoreError> {
        let record_err = |message: String| StoreError::Record {
            path: self.path.clone(),
            id: t.id,
            message,
        };
        let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut steps = Vec::with_capacity(t.steps.len());
        for s in &t.steps {
            let output = match &s.output {
                StepOutput::Image(img) => {
                    let png = img.to_png().map_err(|e| record_err(e.to_string()))?;
                    let hash = blake3::hash(&png).to_hex().to_string();
                    let r = ImageRef {
                        blake3: hash.clone(),
                        width: img.width(),
                        height: img.height(),
                    };
                    blobs.push((hash, png));
                    StoredOutput::Image(r)
                }
                StepOutput::Report(r) => StoredOutput::Report(r.clone()),
                StepOutput::Edit(e) => StoredOutput::Edit(e.clone()),
            };
            steps.push(StoredStep {
                round: s.round,
                actor: s.actor.clone(),
                role: s.role,
                output,
                attempts: s.attempts,
                elapsed_ms: s.elapsed_ms,
                branch: s.branch,
                chain: s.chain.clone(),
            });
        }
        let stored = StoredTrajectory {
            id: t.id,
            prompt: t.prompt.clone(),
            seed: t.seed,
            steps,
            outcome: t.outcome.clone(),
            started_unix_ms: t.started_unix_ms,
            elapsed_ms: t.elapsed_ms,
        };
        let record = serde_json::to_vec(&stored).map_err(|e| record_err(e.to_string()))?;
        let key = t.id.to_be_bytes();
        // sled serialises transactions, so reading and bumping the counter here gives
        // gap-free sequence numbers in commit order.
        (&self.trajectories, &self.images, &self.log, &self.meta)
            .transaction(|(tt, it, lt, mt)| {
                if tt.get(key)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(Abort::Duplicate));
                }
                let seq = match mt.get(NEXT_SEQ)? {
                    None => 0,
                    Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                        Ok(b) => u64::from_be_bytes(b),
                        Err(_) => return Err(ConflictableTransactionError::Abort(Abort::Counter)),
                    },
                };
                for (hash, png) in &blobs {
                    if it.get(hash.as_bytes())?.is_none() {
                        it.insert(hash.as_bytes(), png.as_slice())?;
                    }
                }
                tt.insert(&key, record.as_slice())?;
                lt.insert(&seq.to_be_bytes(), &key)?;
                mt.insert(NEXT_SEQ, &(seq + 1).to_be_bytes())?;
                Ok(seq)
            })
            .map_err(|e| match e {
                TransactionError::Storage(source) => self.sled(source),
                TransactionError::Abort(Abort::Duplicate) => StoreError::Duplicate {
                    path: self.path.clone(),
                    id: t.id,
                },
                TransactionError::Abort(Abort::Counter) => self.damaged_counter(),
            })
    }

    /// Whether a trajectory with this id is stored.
    pub fn contains(&self, id: u64) -> Result<bool, StoreError> {
        self.trajectories
            .contains_key(id.to_be_bytes())
            .map_err(|source| self.sled(source))
    }

    /// The next sequence number: how many trajectories have been committed.
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        match self
            .meta
            .get(NEXT_SEQ)
            .map_err(|source| self.sled(source))?
        {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| self.damaged_counter()),
        }
    }

    /// The trajectories committed after `cursor` (all when `None`) with their sequence
    /// numbers, ascending, at most `limit`. Pass the last sequence number returned as the next
    /// cursor.
    pub fn committed_after(
        &self,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Trajectory)>, StoreError> {
        let start = match cursor {
            None => 0,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(c) => c + 1,
        };
        let mut out = Vec::new();
        for entry in self.log.range(start.to_be_bytes()..).take(limit) {
            let (k, v) = entry.map_err(|source| self.sled(source))?;
            let (Ok(seq), Ok(id)) = (
                <[u8; 8]>::try_from(k.as_ref()),
                <[u8; 8]>::try_from(v.as_ref()),
            ) else {
                return Err(StoreError::Incompatible {
                    path: self.path.clone(),
                    message: "damaged commit log entry".into(),
                });
            };
            let (seq, id) = (u64::from_be_bytes(seq), u64::from_be_bytes(id));
            let t = self.get(id)?.ok_or_else(|| StoreError::Record {
                path: self.path.clone(),
                id,
                message: format!("logged at sequence number {seq} but not stored"),
            })?;
            out.push((seq, t));
        }
        Ok(out)
    }

    /// The trajectory with this id, images loaded.
    pub fn get(&self, id: u64) -> Result<Option<Trajectory>, StoreError> {
        let Some(bytes) = self
            .trajectories
            .get(id.to_be_bytes())
            .map_err(|source| self.sled(source))?
        else {
            return Ok(None);
        };
        self.decode(id, &bytes).map(Some)
    }

    /// The ids of all stored trajectories, ascending.
    pub fn ids(&self) -> Result<Vec<u64>, StoreError> {
        self.trajectories
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|source| self.sled(source))?;
                Ok(u64::from_be_bytes(
                    <[u8; 8]>::try_from(k.as_ref()).unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// How many trajectories are stored.
    pub fn len(&self) -> usize {
        self.trajectories.len()
    }

    /// Whether no trajectory is stored.
    pub fn is_empty(&self) -> bool {
        self.trajectories.is_empty()
    }

    /// How many distinct images are stored.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Waits until everything written is on disk, then records how many trajectories that is
    /// outside the database (see [`TrajectoryStore::open`]'s check for damage).
    pub fn flush(&self) -> Result<(), StoreError> {
        // Counted before flushing: a trajectory committed meanwhile may not be on disk yet.
        let next = self.next_seq()?;
        self.db.flush().map_err(|source| self.sled(source))?;
        let _one_writer = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        rlrig_checkpoint::write_atomic(
            &self.path.join(FLUSHED_FILE),
            format!("{next}\n").as_bytes(),
        )
        .map_err(|cause| StoreError::Count {
            path: self.path.clone(),
            cause,
        })
    }

    fn damaged_counter(&self) -> StoreError {
        StoreError::Incompatible {
            path: self.path.clone(),
            message: "damaged sequence counter".into(),
        }
    }

    fn sled(&self, source: sled::Error) -> StoreError {
        sled_error(&self.path, source)
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<Trajectory, StoreError> {
        let record_err = |message: String| StoreError::Record {
            path: self.path.clone(),
            id,
            message,
        };
        let s: StoredTrajectory =
            serde_json::from_slice(bytes).map_err(|e| record_err(e.to_string()))?;
        let mut steps = Vec::with_capacity(s.steps.len());
        for st in s.steps {
            let output = match st.output {
                StoredOutput::Image(r) => {
                    let png = self
                        .images
                        .get(r.blake3.as_bytes())
                        .map_err(|source| self.sled(source))?
                        .ok_or_else(|| record_err(format!("image {} is missing", r.blake3)))?;
                    StepOutput::Image(
                        Image::from_png(&png)
                            .map_err(|e| record_err(format!("image {}: {e}", r.blake3)))?,
                    )
                }
                StoredOutput::Report(r) => StepOutput::Report(r),
                StoredOutput::Edit(e) => StepOutput::Edit(e),
            };
            steps.push(Step {
                round: st.round,
                actor: st.actor,
                role: st.role,
                output,
                attempts: st.attempts,
                elapsed_ms: st.elapsed_ms,
                branch: st.branch,
                chain: st.chain,
            });
        }
        Ok(Trajectory {
            id: s.id,
            prompt: s.prompt,
            seed: s.seed,
            steps,
            outcome: s.outcome,
            started_unix_ms: s.started_unix_ms,
            elapsed_ms: s.elapsed_ms,
        })
    }
}
