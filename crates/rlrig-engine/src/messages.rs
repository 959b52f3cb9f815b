//! What the engine's actors say to each other: the messages between a router and its
//! replicas (local workers and remote replicas' proxies), the jobs they carry, and how a failed
//! spawn reads.

use ractor::ActorRef;
use tokio::sync::oneshot;

use rlrig_contract::WeightsUpdate;

use crate::model::{Request, Response};

/// The answer to a submitted request.
#[derive(Debug)]
pub(crate) struct Served {
    pub response: Response,
    pub attempts: u32,
}

/// Messages to a router.
pub(crate) enum RouterMsg {
    /// Answer this request; the reply says how it went.
    Submit(Request, oneshot::Sender<Result<Served, String>>),
    /// A replica answered a job.
    Done { job_id: u64, response: Response },
    /// A remote replica gave up on a job (after the node's own retries).
    Failed { job_id: u64, error: String },
    /// Try again to start the lost replica `.0` (its node may be back).
    Revive(usize),
    /// The lost replica `.0` runs again.
    Revived(usize, ActorRef<WorkerMsg>),
    /// New Policy weights for every replica (and for replicas restarted later).
    Update(Box<WeightsUpdate>),
}

// Local only: remote replicas are reached through a local proxy (`cluster::RemoteReplica`).
impl ractor::Message for RouterMsg {}

/// A request as the engine tracks it.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub id: u64,
    pub attempt: u32,
    pub request: Request,
}

/// Messages to a replica.
pub(crate) enum WorkerMsg {
    /// A request to answer.
    Job(Box<Job>),
    /// Run the partial batch gathered so far, if it is still generation `.0`.
    Flush(u64),
    /// Take new Policy weights before the next batch.
    Update(Box<WeightsUpdate>),
    /// The replica is lost (a remote replica's node is gone): stop with this error, blaming
    /// none of the requests it held.
    Lost(String),
}

// Local only (a remote replica's proxy takes the same messages and forwards them).
impl ractor::Message for WorkerMsg {}

/// A batch failed: the replica stops with this error and its router restarts it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct BatchFailed {
    pub job_ids: Vec<u64>,
    pub message: String,
}

/// A spawn error's message (a failed `pre_start`'s own error, not ractor's wrapper).
pub(crate) fn spawn_err(e: &ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
