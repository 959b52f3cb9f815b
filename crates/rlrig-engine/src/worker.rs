//! A replica of one actor: a ractor actor owning one model, batching the requests it is sent
//! and running each batch on a blocking thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use rlrig_contract::WeightsUpdate;

use crate::messages::{BatchFailed, Job, RouterMsg, WorkerMsg};
use crate::model::{Request, Response, RoleModel};
use crate::registry::{ActorContext, Build};

pub(crate) struct WorkerArgs {
    pub ctx: ActorContext,
    pub build: Build,
    pub router: ActorRef<RouterMsg>,
    pub batch: usize,
    pub max_wait: Duration,
    /// The latest weights update, applied right after building (a restarted replica).
    pub update: Option<WeightsUpdate>,
}

pub(crate) struct WorkerState {
    model: Option<Box<dyn RoleModel>>,
    pending: Vec<Job>,
    generation: u64,
    router: ActorRef<RouterMsg>,
    batch: usize,
    max_wait: Duration,
}

pub(crate) struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        // Building may load weights: off the async executor.
        let (build, ctx, update) = (args.build.clone(), args.ctx.clone(), args.update);
        let model = tokio::task::spawn_blocking(move || {
            let mut model = build(&ctx).map_err(|e| e.to_string())?;
            if let Some(u) = update {
                model
                    .update(&u)
                    .map_err(|e| format!("applying weights version {}: {e}", u.version))?;
            }
            Ok::<_, String>(model)
        })
        .await
        .map_err(|e| format!("building the model panicked: {e}"))??;
        Ok(WorkerState {
            model: Some(model),
            pending: Vec::new(),
            generation: 0,
            router: args.router,
            batch: args.batch,
            max_wait: args.max_wait,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Job(job) => {
                st.pending.push(*job);
                if st.pending.len() >= st.batch {
                    run_batch(&myself, st).await?;
                } else if st.pending.len() == 1 {
                    schedule_flush(&myself, st);
                }
            }
            WorkerMsg::Flush(generation) => {
                if generation == st.generation && !st.pending.is_empty() {
                    run_batch(&myself, st).await?;
                }
            }
            WorkerMsg::Lost(message) => {
                return Err(Box::new(BatchFailed {
                    job_ids: Vec::new(),
                    message,
                }));
            }
            WorkerMsg::Update(update) => {
                let mut model = st
                    .model
                    .take()
                    .ok_or("the model was lost by an earlier failure")?;
                let (model, result) = tokio::task::spawn_blocking(move || {
                    let r = model.update(&update);
                    (
                        model,
                        r.map_err(|e| format!("weights version {}: {e}", update.version)),
                    )
                })
                .await
                .map_err(|e| format!("the update thread failed: {e}"))?;
                st.model = Some(model);
                result?;
            }
        }
        Ok(())
    }
}

/// A flush after `max_wait`; with no wait, a flush queued behind the requests already in the
/// mailbox, so that those still join the batch.
fn schedule_flush(myself: &ActorRef<WorkerMsg>, st: &WorkerState) {
    let generation = st.generation;
    if st.max_wait.is_zero() {
        let _ = myself.cast(WorkerMsg::Flush(generation));
    } else {
        myself.send_after(st.max_wait, move || WorkerMsg::Flush(generation));
    }
}

async fn run_batch(
    myself: &ActorRef<WorkerMsg>,
    st: &mut WorkerState,
) -> Result<(), ActorProcessingErr> {
    // A retried job runs alone, so that one bad request cannot fail its batch-mates again.
    let take = if st.pending[0].attempt > 1 {
        1
    } else {
        st.pending
            .iter()
            .take(st.batch)
            .take_while(|j| j.attempt == 1)
            .count()
    };
    let jobs: Vec<Job> = st.pending.drain(..take).collect();
    st.generation += 1;
    let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    let fail = |message: String| -> ActorProcessingErr {
        Box::new(BatchFailed {
            job_ids: ids.clone(),
            message,
        })
    };
    let mut model = st
        .model
        .take()
        .ok_or_else(|| fail("the model was lost by an earlier failure".into()))?;
    let requests: Vec<Request> = jobs.iter().map(|j| j.request.clone()).collect();
    let n = requests.len();
    let (model, result) = tokio::task::spawn_blocking(move || {
        let r = catch_unwind(AssertUnwindSafe(|| model.call(requests)));
        (model, r)
    })
    .await
    .map_err(|e| fail(format!("the batch thread failed: {e}")))?;
    let responses: Vec<Response> = match result {
        Ok(Ok(r)) if r.len() == n => r,
        Ok(Ok(r)) => {
            return Err(fail(format!(
                "answered {} results for a batch of {n}",
                r.len()
            )));
        }
        Ok(Err(e)) => return Err(fail(e.0)),
        Err(panic) => return Err(fail(format!("panicked: {}", panic_message(&panic)))),
    };
    st.model = Some(model);
    for (job, response) in jobs.into_iter().zip(responses) {
        st.router
            .cast(RouterMsg::Done {
                job_id: job.id,
                response,
            })
            .map_err(|e| fail(format!("router gone: {e}")))?;
    }
    if !st.pending.is_empty() {
        schedule_flush(myself, st);
    }
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}
