//! The router of one actor: a ractor actor that supervises the actor's replicas, sends each
//! request to the least loaded one, and on a replica's failure restarts it and retries the
//! requests it held.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use rlrig_contract::WeightsUpdate;

use crate::cluster::{Cluster, RemoteArgs, RemoteReplica};
use crate::messages::{BatchFailed, Job, RouterMsg, Served, WorkerMsg, spawn_err};
use crate::registry::{ActorContext, Build};
use crate::wire::ReplicaSpec;
use crate::worker::{Worker, WorkerArgs};

pub(crate) struct RouterArgs {
    pub contexts: Vec<ActorContext>,
    pub build: Build,
    pub batch: usize,
    pub max_wait: Duration,
    pub max_attempts: u32,
    /// Largest number of requests outstanding at once, for flow-control checks.
    pub outstanding_max: Arc<AtomicUsize>,
    /// Replica restarts.
    pub restarts: Arc<AtomicUsize>,
    /// Connections to other nodes, for replicas placed on them.
    pub cluster: Option<Arc<Cluster>>,
}

/// What starting a replica takes; cloned into the task that revives a lost remote one.
#[derive(Clone)]
struct Spawner {
    build: Build,
    batch: usize,
    max_wait: Duration,
    max_attempts: u32,
    cluster: Option<Arc<Cluster>>,
}

struct Slot {
    ctx: ActorContext,
    worker: Option<ActorRef<WorkerMsg>>,
    outstanding: HashMap<u64, Job>,
}

pub(crate) struct RouterState {
    name: String,
    slots: Vec<Slot>,
    waiting: HashMap<u64, oneshot::Sender<Result<Served, String>>>,
    next_id: u64,
    spawner: Spawner,
    max_attempts: u32,
    outstanding_max: Arc<AtomicUsize>,
    restarts: Arc<AtomicUsize>,
    latest: Option<WeightsUpdate>,
}

pub(crate) struct Router;

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        let name = args
            .contexts
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let mut st = RouterState {
            name,
            slots: Vec::new(),
            waiting: HashMap::new(),
            next_id: 0,
            spawner: Spawner {
                build: args.build,
                batch: args.batch,
                max_wait: args.max_wait,
                max_attempts: args.max_attempts,
                cluster: args.cluster,
            },
            max_attempts: args.max_attempts,
            outstanding_max: args.outstanding_max,
            restarts: args.restarts,
            latest: None,
        };
        for ctx in args.contexts {
            st.slots.push(Slot {
                ctx,
                worker: None,
                outstanding: HashMap::new(),
            });
        }
        for i in 0..st.slots.len() {
            let worker = st
                .spawner
                .spawn(&myself, &st.slots[i].ctx, None)
                .await
                .map_err(|e| format!("actor {:?} replica {i}: {e}", st.name))?;
            st.slots[i].worker = Some(worker);
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Submit(request, reply) => {
                let id = st.next_id;
                st.next_id += 1;
                st.waiting.insert(id, reply);
                dispatch(
                    st,
                    Job {
                        id,
                        attempt: 1,
                        request,
                    },
                );
            }
            RouterMsg::Done {
                job_id, response, ..
            } => {
                let mut attempts = 1;
                for slot in &mut st.slots {
                    if let Some(job) = slot.outstanding.remove(&job_id) {
                        attempts = job.attempt;
                    }
                }
                if let Some(reply) = st.waiting.remove(&job_id) {
                    let _ = reply.send(Ok(Served { response, attempts }));
                }
            }
            RouterMsg::Failed { job_id, error } => {
                for slot in &mut st.slots {
                    slot.outstanding.remove(&job_id);
                }
                if let Some(reply) = st.waiting.remove(&job_id) {
                    let _ = reply.send(Err(format!("actor {:?}: {error}", st.name)));
                }
            }
            RouterMsg::Revive(i) => {
                if st.slots[i].worker.is_none() {
                    let (spawner, ctx, update) = (
                        st.spawner.clone(),
                        st.slots[i].ctx.clone(),
                        st.latest.clone(),
                    );
                    let (router, name) = (myself.clone(), st.name.clone());
                    // Off the router: reaching a lost node may take the connect timeout.
                    tokio::spawn(async move {
                        match spawner.spawn(&router, &ctx, update).await {
                            Ok(w) => {
                                if router.cast(RouterMsg::Revived(i, w.clone())).is_err() {
                                    w.stop(None);
                                }
                            }
                            Err(e) => {
                                tracing::debug!(actor = %name, replica = i, error = %e, "replica still lost");
                                router.send_after(spawner.rejoin(), move || RouterMsg::Revive(i));
                            }
                        }
                    });
                }
            }
            RouterMsg::Revived(i, w) => {
                if st.slots[i].worker.is_none() {
                    tracing::info!(actor = %st.name, replica = i, "replica back");
                    st.slots[i].worker = Some(w);
                } else {
                    w.stop(None);
                }
            }
            RouterMsg::Update(update) => {
                if st
                    .latest
                    .as_ref()
                    .is_some_and(|l| l.version >= update.version)
                {
                    return Ok(());
                }
                for w in st.slots.iter().filter_map(|s| s.worker.as_ref()) {
                    // A send fails only if the replica just died; its restart applies `latest`.
                    let _ = w.cast(WorkerMsg::Update(update.clone()));
                }
                st.latest = Some(*update);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, message, failed_ids) = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let ids = err.downcast_ref::<BatchFailed>().map(|b| b.job_ids.clone());
                (cell.clone(), err.to_string(), ids)
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell.clone(),
                format!(
                    "stopped: {}",
                    reason.clone().unwrap_or_else(|| "no reason".into())
                ),
                None,
            ),
            _ => return Ok(()),
        };
        let Some(i) = st.slots.iter().position(|s| {
            s.worker
                .as_ref()
                .is_some_and(|w| w.get_id() == cell.get_id())
        }) else {
            return Ok(());
        };
        tracing::warn!(actor = %st.name, replica = i, error = %message, "replica failed; restarting it");
        st.restarts.fetch_add(1, Ordering::Relaxed);
        st.slots[i].worker = None;
        let jobs: Vec<Job> = st.slots[i].outstanding.drain().map(|(_, j)| j).collect();
        if st.slots[i].ctx.node.is_some() {
            // A remote replica: its node is likely gone. Its requests go to the others now,
            // and it is started again in the background until its node is back.
            let _ = myself.cast(RouterMsg::Revive(i));
        } else {
            match st
                .spawner
                .spawn(&myself, &st.slots[i].ctx, st.latest.clone())
                .await
            {
                Ok(w) => st.slots[i].worker = Some(w),
                Err(e) => {
                    tracing::error!(actor = %st.name, replica = i, error = %e, "replica could not be restarted");
                }
            }
        }
        let mut jobs = jobs;
        jobs.sort_by_key(|j| j.id);
        for mut job in jobs {
            let blamed = failed_ids.as_ref().is_none_or(|ids| ids.contains(&job.id));
            if blamed {
                if job.attempt >= st.max_attempts {
                    if let Some(reply) = st.waiting.remove(&job.id) {
                        let _ = reply.send(Err(format!(
                            "actor {:?} failed {} times: {message}",
                            st.name, job.attempt
                        )));
                    }
                    continue;
                }
                job.attempt += 1;
            }
            dispatch(st, job);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RouterMsg>,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        for slot in &mut st.slots {
            if let Some(w) = slot.worker.take() {
                w.stop(None);
            }
        }
        for (_, reply) in st.waiting.drain() {
            let _ = reply.send(Err("the engine stopped".into()));
        }
        Ok(())
    }
}

impl Spawner {
    /// Starts the replica of `ctx` under `router`: a local [`Worker`], or on its node a
    /// replica with a local [`RemoteReplica`] proxy.
    async fn spawn(
        &self,
        router: &ActorRef<RouterMsg>,
        ctx: &ActorContext,
        update: Option<WeightsUpdate>,
    ) -> Result<ActorRef<WorkerMsg>, String> {
        let started = match &ctx.node {
            None => {
                let args = WorkerArgs {
                    ctx: ctx.clone(),
                    build: self.build.clone(),
                    router: router.clone(),
                    batch: self.batch,
                    max_wait: self.max_wait,
                    update,
                };
                Actor::spawn_linked(None, Worker, args, router.get_cell()).await
            }
            Some(node) => {
                let cluster = self
                    .cluster
                    .clone()
                    .ok_or("placed on a node, but the engine has no cluster")?;
                let spec = ReplicaSpec {
                    coordinator: cluster.me().to_string(),
                    name: ctx.name.clone(),
                    role: ctx.role,
                    kind: ctx.kind.clone(),
                    settings: ctx.settings.clone(),
                    device: ctx.device.clone(),
                    replica: ctx.replica,
                    base_dir: ctx.base_dir.clone(),
                    batch: self.batch,
                    max_wait_ms: self.max_wait.as_millis() as u64,
                    max_attempts: self.max_attempts,
                    update,
                };
                let args = RemoteArgs {
                    cluster,
                    node: node.clone(),
                    spec,
                    router: router.clone(),
                };
                Actor::spawn_linked(None, RemoteReplica, args, router.get_cell()).await
            }
        };
        started
            .map(|(w, _)| w)
            .map_err(|e| format!("could not start: {}", spawn_err(&e)))
    }

    fn rejoin(&self) -> Duration {
        self.cluster.as_ref().map_or(Duration::from_secs(2), |c| {
            Duration::from_millis(c.settings().rejoin_ms)
        })
    }
}

/// Sends a job to the live replica with the fewest outstanding jobs; with none alive, fails it.
fn dispatch(st: &mut RouterState, job: Job) {
    let best = st
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.worker.is_some())
        .min_by_key(|(_, s)| s.outstanding.len())
        .map(|(i, _)| i);
    let Some(i) = best else {
        if let Some(reply) = st.waiting.remove(&job.id) {
            let _ = reply.send(Err(format!("actor {:?} has no live replica", st.name)));
        }
        return;
    };
    let slot = &mut st.slots[i];
    let worker = slot.worker.clone().expect("filtered on live replicas");
    slot.outstanding.insert(job.id, job.clone());
    let total: usize = st.slots.iter().map(|s| s.outstanding.len()).sum();
    st.outstanding_max.fetch_max(total, Ordering::Relaxed);
    // A send fails only if the replica just died; its supervision event re-dispatches the job.
    let _ = worker.cast(WorkerMsg::Job(Box::new(job)));
}
