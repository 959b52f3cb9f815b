//! The coordinator side of the cluster: connections to `rlrig node`s (reachability, the shared
//! secret, the protocol version) and the local proxy of each remote replica.
//!
//! A remote replica looks like any other to its router: the proxy is a local actor taking
//! [`WorkerMsg`]s, supervised by the router. It forwards each request as a timed remote call
//! and pings the remote replica every `heartbeat_ms`; when the node is lost (its process died,
//! the connection dropped, a ping or call timed out) the proxy fails with no request blamed, so
//! the router re-dispatches what it held to the remaining replicas and tries the lost one again
//! every `rejoin_ms` (a node that comes back rejoins).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, pg};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    ClientConnectErr, IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use rlrig_flow::{ClusterSettings, LoadedFlow, NodeSpec, Transport};

use crate::messages::{BatchFailed, RouterMsg, WorkerMsg, spawn_err};
use crate::tls::{self, Tls, TlsPaths};
use crate::wire::{
    self, HOSTS_GROUP, Hello, HostMsg, MAX_FRAME_BYTES, NodeInfo, PROTOCOL_VERSION, REPLICAS_GROUP,
    ReplicaMsg, ReplicaSpec, Spawned,
};

/// What this process saw of one session (ractor_cluster's node id).
#[derive(Clone, Debug, Default)]
struct Seen {
    peer_addr: String,
    authenticated: bool,
    disconnected: bool,
}

type Sessions = Arc<Mutex<HashMap<u64, Seen>>>;

struct SessionLog(Sessions);

impl SessionLog {
    fn with(&self, ses: &NodeServerSessionInformation, f: impl FnOnce(&mut Seen)) {
        let mut map = self.0.lock().expect("session log poisoned");
        let seen = map.entry(ses.node_id).or_insert_with(|| Seen {
            peer_addr: ses.peer_addr.clone(),
            ..Seen::default()
        });
        f(seen);
    }
}

impl NodeEventSubscription for SessionLog {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.with(&ses, |_| {});
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.with(&ses, |s| s.authenticated = true);
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(peer = %ses.peer_addr, "node session ended");
        self.with(&ses, |s| s.disconnected = true);
    }
}

/// This process's place in the cluster: its own endpoint and its connections to the flow's nodes.
pub(crate) struct Cluster {
    server: ActorRef<NodeServerMessage>,
    /// This process's cluster name, as nodes see it.
    me: String,
    settings: ClusterSettings,
    nodes: BTreeMap<String, NodeSpec>,
    sessions: Sessions,
    hosts: tokio::sync::Mutex<HashMap<String, ActorRef<HostMsg>>>,
    /// Mutual TLS with every node; `None` with `transport = "plain"`.
    tls: Option<Tls>,
}

impl Cluster {
    /// Reads the secret, starts this process's endpoint and connects to every node the flow
    /// places an actor on, checking the protocol version and the kinds each must host.
    /// Errors are located in the flow.
    pub(crate) async fn start(loaded: &LoadedFlow) -> Result<Cluster, String> {
        let flow = &loaded.flow;
        let settings = flow.cluster.clone();
        let at = |key: &str, msg: String| loaded.problem_at(key, msg).to_string();
        let secret = read_secret(loaded, &settings).map_err(|m| at("cluster", m))?;
        let tls = load_tls(loaded, &settings).map_err(|m| at("cluster.tls", m))?;
        let listen: SocketAddr = tokio::net::lookup_host(&settings.listen)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                at(
                    "cluster.listen",
                    format!("cannot resolve {:?}", settings.listen),
                )
            })?;
        let name = format!("rlrig-run-{}", std::process::id());
        let host = listen.ip().to_string();
        let server = NodeServer::new(
            listen.port(),
            secret,
            name.clone(),
            host.clone(),
            tls.as_ref()
                .map(|t| IncomingEncryptionMode::Tls(t.acceptor())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(listen.ip())
        .with_max_inbound_frame_size(MAX_FRAME_BYTES);
        let (server, _) = Actor::spawn(None, server, ()).await.map_err(|e| {
            at(
                "cluster.listen",
                format!("cannot listen on {listen}: {}", spawn_err(&e)),
            )
        })?;
        let sessions = Sessions::default();
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "rlrig.coordinator".into(),
                subscription: Box::new(SessionLog(sessions.clone())),
            })
            .map_err(|e| format!("the cluster endpoint stopped: {e}"))?;
        let cluster = Cluster {
            server,
            me: format!("{name}@{host}"),
            settings,
            nodes: flow.nodes.clone(),
            sessions,
            hosts: Default::default(),
            tls,
        };
        let used = rlrig_flow::used_nodes(flow);
        for node in used.keys() {
            let info = match cluster.connect(node).await {
                Ok((h, info)) => {
                    cluster.hosts.lock().await.insert(node.clone(), h);
                    info
                }
                Err(e) => {
                    cluster.stop();
                    return Err(at(&format!("nodes.{node}"), e));
                }
            };
            for (actor, spec) in &flow.actors {
                let placed = (0..spec.replicas)
                    .any(|r| spec.node.as_ref().and_then(|p| p.node_of(r)) == Some(node));
                if placed && !info.kinds.contains(&spec.kind) {
                    cluster.stop();
                    return Err(at(
                        &format!("actors.{actor}.node"),
                        format!(
                            "node {node:?} ({}) has no actor kind {:?}: it is rlrig {} with other kinds registered",
                            info.name, spec.kind, info.version
                        ),
                    ));
                }
            }
            tracing::info!(node = %node, name = %info.name, "node connected");
        }
        Ok(cluster)
    }

    /// Stops this process's endpoint (every session with it).
    pub(crate) fn stop(&self) {
        self.server.stop(None);
    }

    pub(crate) fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The host actor of `node`, reconnecting if the last connection was lost.
    async fn host(&self, node: &str) -> Result<ActorRef<HostMsg>, String> {
        let mut hosts = self.hosts.lock().await;
        if let Some(h) = hosts.get(node)
            && h.get_status() != ActorStatus::Stopped
        {
            return Ok(h.clone());
        }
        let (h, _) = self.connect(node).await?;
        hosts.insert(node.to_string(), h.clone());
        Ok(h)
    }

    /// Connects to `node`: TCP, authentication with the shared secret, the protocol check.
    async fn connect(&self, node: &str) -> Result<(ActorRef<HostMsg>, NodeInfo), String> {
        let spec = self
            .nodes
            .get(node)
            .ok_or_else(|| format!("no node {node:?} in [nodes]"))?;
        let what = format!("node {node:?} at {}", spec.address);
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        let addr = tokio::time::timeout(timeout, tokio::net::lookup_host(&spec.address))
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("cannot resolve the address of {what}"))?;
        let peer = addr.to_string();
        let before: HashSet<u64> = self.sessions_for(&peer).into_iter().map(|x| x.0).collect();
        let connected = match &self.tls {
            None => {
                tokio::time::timeout(timeout, ractor_cluster::client_connect(&self.server, addr))
                    .await
            }
            Some(tls) => {
                let name = tls::server_name(&spec.address)
                    .map_err(|e| format!("cannot check the TLS certificate of {what}: {e}"))?;
                tokio::time::timeout(
                    timeout,
                    ractor_cluster::client_connect_enc(&self.server, addr, tls.connector(), name),
                )
                .await
            }
        };
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.connect_problem(&what, &spec.address, e)),
            Err(_) => {
                return Err(format!(
                    "cannot reach {what}: no connection within {} ms{}",
                    self.settings.connect_timeout_ms,
                    if self.tls.is_some() {
                        " (is the node started with TLS, `--tls-cert`?)"
                    } else {
                        ""
                    }
                ));
            }
        }
        let deadline = Instant::now() + timeout;
        let host = loop {
            let newest = self
                .sessions_for(&peer)
                .into_iter()
                .filter(|(id, _)| !before.contains(id))
                .max_by_key(|(id, _)| *id);
            if let Some((id, seen)) = newest {
                if seen.disconnected && !seen.authenticated {
                    return Err(match self.tls {
                        None => format!(
                            "{what} refused this process during authentication: the shared \
                             secrets differ (this process reads cluster.secret_file, else ${}), \
                             or the node expects TLS",
                            self.settings.secret_env
                        ),
                        Some(_) => format!(
                            "{what} refused this process during authentication: the node does \
                             not trust this process's certificate (cluster.tls.cert is not \
                             signed by the CA the node was given), or the shared secrets differ \
                             (this process reads cluster.secret_file, else ${}); the node's log \
                             says which",
                            self.settings.secret_env
                        ),
                    });
                }
                if seen.disconnected {
                    return Err(format!("{what} closed the connection"));
                }
                if seen.authenticated
                    && let Some(cell) = pg::get_members(&HOSTS_GROUP.to_string())
                        .into_iter()
                        .find(|c| on_node(c.get_id(), id))
                {
                    break ActorRef::<HostMsg>::from(cell);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what} accepted the connection but did not complete the handshake within \
                     {} ms: is it an rlrig node, and is it responsive?",
                    self.settings.connect_timeout_ms
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let info = match host.call(|p| HostMsg::Hello(hello, p), Some(timeout)).await {
            Ok(CallResult::Success(info)) => info,
            other => {
                return Err(format!(
                    "{what} did not answer the protocol check: {}",
                    call_problem(&other)
                ));
            }
        };
        if info.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "{what} speaks cluster protocol {} (rlrig {}), this process speaks {} (rlrig {}): \
                 run the same rlrig on both",
                info.protocol,
                info.version,
                PROTOCOL_VERSION,
                env!("CARGO_PKG_VERSION")
            ));
        }
        Ok((host, info))
    }

    /// Why connecting to a node failed, in words that point at the setting to fix.
    fn connect_problem(&self, what: &str, address: &str, e: ClientConnectErr) -> String {
        match e {
            ClientConnectErr::Socket(e) => format!("cannot reach {what}: {e}"),
            ClientConnectErr::Messaging(_) => {
                format!("cannot reach {what}: this process's cluster endpoint stopped")
            }
            ClientConnectErr::Encryption(e) => {
                let text = e.to_string();
                let hint = if text.contains("certificate") {
                    format!(
                        ": the node's certificate must be signed by the CA of cluster.tls.ca \
                         and name the host of its address {address:?}"
                    )
                } else if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.kind() == std::io::ErrorKind::ConnectionReset
                    || text.contains("corrupt message")
                {
                    " (is the node started with TLS, `--tls-cert`?)".to_string()
                } else {
                    String::new()
                };
                format!("the TLS handshake with {what} failed: {text}{hint}")
            }
        }
    }

    fn sessions_for(&self, peer: &str) -> Vec<(u64, Seen)> {
        self.sessions
            .lock()
            .expect("session log poisoned")
            .iter()
            .filter(|(_, s)| s.peer_addr == peer)
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    }

    /// Starts a replica on `node` and returns a reference to it.
    async fn spawn_replica(
        &self,
        node: &str,
        spec: ReplicaSpec,
    ) -> Result<ActorRef<ReplicaMsg>, String> {
        let host = self.host(node).await?;
        let node_id = match host.get_id() {
            ActorId::Remote { node_id, .. } => node_id,
            ActorId::Local(_) => return Err("a node's host actor is local".into()),
        };
        // The build may load weights: allow it the call timeout.
        let timeout = Duration::from_millis(self.settings.call_timeout_ms);
        let pid = match host.call(|p| HostMsg::Spawn(spec, p), Some(timeout)).await {
            Ok(CallResult::Success(Spawned(Ok(pid)))) => pid,
            Ok(CallResult::Success(Spawned(Err(e)))) => return Err(e),
            other => {
                return Err(format!(
                    "node {node:?} did not start the replica: {}",
                    call_problem(&other)
                ));
            }
        };
        // The node announces its new actor on the same ordered session as the reply, so it
        // is normally known already; allow a moment.
        let deadline = Instant::now() + Duration::from_millis(self.settings.connect_timeout_ms);
        loop {
            if let Some(cell) = pg::get_members(&REPLICAS_GROUP.to_string())
                .into_iter()
                .find(|c| on_node(c.get_id(), node_id) && c.get_id().pid() == pid)
            {
                return Ok(ActorRef::from(cell));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {node:?} started a replica but never announced it"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The name nodes know this process by.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }
}

fn on_node(id: ActorId, node_id: u64) -> bool {
    matches!(id, ActorId::Remote { node_id: n, .. } if n == node_id)
}

fn call_problem<T>(r: &Result<CallResult<T>, ractor::MessagingErr<impl Sized>>) -> String {
    match r {
        Ok(CallResult::Success(_)) => "answered".into(),
        Ok(CallResult::Timeout) => "timed out".into(),
        Ok(CallResult::SenderError) | Err(_) => "the connection was lost".into(),
    }
}

/// The secret: `cluster.secret_file` (relative to the flow file), else the environment
/// variable `cluster.secret_env`. Surrounding whitespace is not part of it.
fn read_secret(loaded: &LoadedFlow, settings: &ClusterSettings) -> Result<String, String> {
    let secret = match &settings.secret_file {
        Some(f) => {
            let path = loaded.base_dir().join(f);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the cluster secret {}: {e}", path.display()))?
        }
        None => std::env::var(&settings.secret_env).map_err(|_| {
            format!(
                "the flow places actors on nodes, so it needs the cluster's shared secret: set \
                 ${} or `cluster.secret_file`",
                settings.secret_env
            )
        })?,
    };
    let secret = secret.trim().to_string();
    if secret.is_empty() {
        return Err("the cluster secret is empty".into());
    }
    Ok(secret)
}

/// The TLS files of `cluster.tls` (relative to the flow file), for `transport = "tls"`.
fn load_tls(loaded: &LoadedFlow, settings: &ClusterSettings) -> Result<Option<Tls>, String> {
    match (settings.transport, &settings.tls) {
        (Transport::Plain, _) => Ok(None),
        (Transport::Tls, None) => Err("node traffic is encrypted unless asked otherwise: give \
             `cluster.tls = { cert = ..., key = ..., ca = ... }`, or set \
             `cluster.transport = \"plain\"`"
            .into()),
        (Transport::Tls, Some(files)) => {
            let base = loaded.base_dir();
            let paths = TlsPaths {
                cert: base.join(&files.cert),
                key: base.join(&files.key),
                ca: base.join(&files.ca),
            };
            Tls::load(&paths).map(Some).map_err(|e| e.to_string())
        }
    }
}

pub(crate) struct RemoteArgs {
    pub cluster: Arc<Cluster>,
    pub node: String,
    pub spec: ReplicaSpec,
    pub router: ActorRef<RouterMsg>,
}

pub(crate) struct RemoteState {
    node: String,
    replica: ActorRef<ReplicaMsg>,
    router: ActorRef<RouterMsg>,
    call_timeout: Duration,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// The local stand-in of a replica on a node.
pub(crate) struct RemoteReplica;

impl Actor for RemoteReplica {
    type Msg = WorkerMsg;
    type State = RemoteState;
    type Arguments = RemoteArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: RemoteArgs,
    ) -> Result<RemoteState, ActorProcessingErr> {
        let replica = args.cluster.spawn_replica(&args.node, args.spec).await?;
        let s = args.cluster.settings();
        let (every, patience) = (
            Duration::from_millis(s.heartbeat_ms),
            Duration::from_millis(s.connect_timeout_ms),
        );
        let (target, me, node) = (replica.clone(), myself.clone(), args.node.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = target
                    .call(|p| ReplicaMsg::Ping(0, p), Some(patience))
                    .await;
                if !matches!(r, Ok(CallResult::Success(_))) {
                    let _ = me.cast(WorkerMsg::Lost(format!(
                        "node {node:?} lost: a heartbeat {}",
                        match r {
                            Ok(CallResult::Timeout) => "timed out",
                            _ => "found the connection gone",
                        }
                    )));
                    break;
                }
            }
        });
        Ok(RemoteState {
            node: args.node,
            replica,
            router: args.router,
            call_timeout: Duration::from_millis(s.call_timeout_ms),
            heartbeat,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut RemoteState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Job(job) => {
                let (replica, router, node) =
                    (st.replica.clone(), st.router.clone(), st.node.clone());
                let timeout = st.call_timeout;
                let (job_id, request) = (job.id, job.request);
                tokio::spawn(async move {
                    let r = replica
                        .call(
                            |p| ReplicaMsg::Run(wire::Job(Box::new(request)), p),
                            Some(timeout),
                        )
                        .await;
                    // A failed send: the router or this proxy stopped; the router re-dispatches
                    // what a lost proxy held.
                    match r {
                        Ok(CallResult::Success(wire::JobReply(Ok(response)))) => {
                            let _ = router.cast(RouterMsg::Done { job_id, response });
                        }
                        Ok(CallResult::Success(wire::JobReply(Err(error)))) => {
                            let _ = router.cast(RouterMsg::Failed {
                                job_id,
                                error: format!("{error} (on node {node:?})"),
                            });
                        }
                        other => drop(myself.cast(WorkerMsg::Lost(format!(
                            "node {node:?} lost: a request {}",
                            match other {
                                Ok(CallResult::Timeout) => "timed out (cluster.call_timeout_ms)",
                                _ => "found the connection gone",
                            }
                        )))),
                    }
                });
            }
            WorkerMsg::Update(u) => {
                if st
                    .replica
                    .cast(ReplicaMsg::Update(wire::Update(*u)))
                    .is_err()
                {
                    return Err(lost(format!("node {:?} lost", st.node)));
                }
            }
            WorkerMsg::Flush(_) => {}
            WorkerMsg::Lost(message) => return Err(lost(message)),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerMsg>,
        st: &mut RemoteState,
    ) -> Result<(), ActorProcessingErr> {
        st.heartbeat.abort();
        let _ = st
            .replica
            .cast(ReplicaMsg::Stop("its coordinator let it go".into()));
        Ok(())
    }
}

/// A lost node blames none of the requests its replica held.
fn lost(message: String) -> ActorProcessingErr {
    Box::new(BatchFailed {
        job_ids: Vec::new(),
        message,
    })
}
