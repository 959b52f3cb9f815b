//! Where the finished trajectories of `rlrig run` and of a training run go: the trajectory
//! store (when the flow keeps one), the chain files under the run's `trajectories/`, then the
//! command's own use of each (scores and progress for a run, a nudge to the trainer when
//! training).

use std::path::Path;

use anyhow::Result;
use rlrig_contract::Trajectory;
use rlrig_flow::StoredImages;
use rlrig_store::TrajectoryStore;
use tokio::sync::mpsc;

use crate::chain::write_chain;

/// Takes trajectories until the engine closes the channel (call it on a blocking thread): each
/// one `keep` accepts is put into `store` (when given), written as chain files into `out_dir`
/// and handed to `then`. The store is flushed at the end. A store or file error ends the loop
/// and is returned: the engine's sends then fail and the run stops. Returns how many were
/// kept.
pub(crate) fn take_trajectories(
    mut rx: mpsc::Receiver<Trajectory>,
    store: Option<&TrajectoryStore>,
    out_dir: &Path,
    images: StoredImages,
    mut keep: impl FnMut(&Trajectory) -> bool,
    mut then: impl FnMut(&Trajectory) -> Result<()>,
) -> Result<u64> {
    let mut kept = 0;
    while let Some(t) = rx.blocking_recv() {
        if !keep(&t) {
            continue;
        }
        if let Some(store) = store {
            store.put(&t)?;
        }
        kept += 1;
        write_chain(out_dir, &t, images)?;
        then(&t)?;
    }
    if let Some(store) = store {
        store.flush()?;
    }
    Ok(kept)
}
