//! The node side of the cluster: an `rlrig node` process listens for coordinators (`rlrig run`
//! with actors placed on it), authenticates them with the shared secret (ractor_cluster's
//! challenge; the secret never crosses the wire), and hosts replicas of any registered kind on
//! request. Each hosted replica is a one-replica router of the engine's own, so batching,
//! restarts and retries on the node are the local ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent, pg};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use tokio::sync::oneshot;

use crate::messages::{RouterMsg, spawn_err};
use crate::registry::Registry;
use crate::router::{Router, RouterArgs};
use crate::tls::Tls;
use crate::wire::{
    HOSTS_GROUP, HostMsg, JobReply, MAX_FRAME_BYTES, NodeInfo, PROTOCOL_VERSION, REPLICAS_GROUP,
    ReplicaMsg, ReplicaSpec, Spawned,
};

/// How an `rlrig node` runs.
#[derive(Clone)]
pub struct NodeOptions {
    /// Its name, as coordinators and logs show it.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The cluster's shared secret.
    pub secret: String,
    /// Mutual TLS for every connection; `None`: TCP in the clear.
    pub tls: Option<Tls>,
}

impl std::fmt::Debug for NodeOptions {
    // The secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("secret", &"<hidden>")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {message}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        message: String,
    },
    /// The actor that hosts replicas did not start.
    #[error("cannot start the host actor: {0}")]
    Host(String),
    /// The cluster server stopped while the node started.
    #[error("the node server stopped: {0}")]
    Stopped(String),
}

/// A running node.
pub struct Node {
    server: ActorRef<NodeServerMessage>,
    host: ActorRef<HostMsg>,
    host_done: tokio::task::JoinHandle<()>,
    /// rlrig's own accept loop, with TLS.
    accepting: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts listening and hosting. Fails if the address cannot be bound.
    ///
    /// With TLS, rlrig accepts connections itself and runs each handshake in a task of its own
    /// with a deadline ([`TLS_HANDSHAKE_TIMEOUT`]) before handing the session to
    /// ractor_cluster: its listener awaits each handshake in turn, so one peer that connects
    /// and says nothing would shut every coordinator out. ractor_cluster's own listener then
    /// serves loopback only, on a port nobody is told.
    pub async fn start(registry: Arc<Registry>, opts: NodeOptions) -> Result<Node, NodeError> {
        let listen_err = |message: String| NodeError::Listen {
            address: opts.listen,
            message,
        };
        let own_listener = match &opts.tls {
            Some(_) => Some(
                tokio::net::TcpListener::bind(opts.listen)
                    .await
                    .map_err(|e| listen_err(e.to_string()))?,
            ),
            None => None,
        };
        let internal = match opts.tls {
            Some(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
            None => opts.listen,
        };
        let server = NodeServer::new(
            internal.port(),
            opts.secret.clone(),
            opts.name.clone(),
            opts.listen.ip().to_string(),
            opts.tls
                .as_ref()
                .map(|t| IncomingEncryptionMode::Tls(t.acceptor())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(internal.ip())
        .with_max_inbound_frame_size(MAX_FRAME_BYTES);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| listen_err(spawn_err(&e)))?;
        let accepting = match (own_listener, &opts.tls) {
            (Some(listener), Some(tls)) => Some(tokio::spawn(accept_tls(
                listener,
                tls.acceptor(),
                server.clone(),
            ))),
            _ => None,
        };
        let host_args = HostArgs {
            registry,
            name: opts.name.clone(),
        };
        let (host, host_done) = match Actor::spawn(None, Host, host_args).await {
            Ok(x) => x,
            Err(e) => {
                if let Some(a) = &accepting {
                    a.abort();
                }
                server.stop(None);
                return Err(NodeError::Host(spawn_err(&e)));
            }
        };
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "rlrig.host".into(),
                subscription: Box::new(PeerWatch(host.clone())),
            })
            .map_err(|e| NodeError::Stopped(e.to_string()))?;
        tracing::info!(node = %opts.name, listen = %opts.listen, "node up");
        Ok(Node {
            server,
            host,
            host_done,
            accepting,
        })
    }

    /// Stops hosting (every replica) and listening.
    pub async fn stop(self) {
        if let Some(a) = &self.accepting {
            a.abort();
        }
        self.host.stop(None);
        let _ = self.host_done.await;
        self.server.stop(None);
    }
}

/// How long a peer may take over its TLS handshake before a node drops the connection.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener`, each handshake in a task of its own with
/// [`TLS_HANDSHAKE_TIMEOUT`], and hands every encrypted session to ractor_cluster's `server`.
async fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on accepting.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, server) = (acceptor.clone(), server.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(local) = stream.local_addr() else {
                return;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = server.cast(NodeServerMessage::ConnectionOpened {
                        stream: Box::new(NetworkStream::TlsServer {
                            peer_addr: peer,
                            local_addr: local,
                            stream,
                        }),
                        is_server: true,
                    });
                }
                Ok(Err(e)) if e.to_string().contains("certificate") => tracing::warn!(
                    "refused a connection from {peer}: its TLS certificate is not one of this \
                     cluster's (not signed by the CA this node trusts): {e}"
                ),
                Ok(Err(e)) => tracing::warn!(
                    "refused a connection from {peer}: TLS handshake failed ({e}); does it \
                     run with TLS?"
                ),
                Err(_) => tracing::warn!(
                    "dropped a connection from {peer}: no TLS handshake within {} s",
                    TLS_HANDSHAKE_TIMEOUT.as_secs()
                ),
            }
        });
    }
}

/// Tells the host when a coordinator's session ends, so that its replicas stop.
struct PeerWatch(ActorRef<HostMsg>);

impl NodeEventSubscription for PeerWatch {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        tracing::info!(peer = %ses.peer_addr, name = ?ses.peer_name.map(|n| n.name), "coordinator connected");
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        match ses.peer_name {
            Some(n) => {
                tracing::info!(peer = %ses.peer_addr, name = %n.name, "coordinator disconnected");
                let _ = self.0.cast(HostMsg::PeerGone(n.name));
            }
            // Never authenticated (e.g. a wrong secret): it has no replicas here.
            None => tracing::warn!(peer = %ses.peer_addr, "a peer left before authenticating"),
        }
    }
}

struct HostArgs {
    registry: Arc<Registry>,
    name: String,
}

struct HostState {
    registry: Arc<Registry>,
    name: String,
    /// Replicas by the coordinator that asked for them.
    replicas: HashMap<String, Vec<ActorRef<ReplicaMsg>>>,
}

struct Host;

impl Actor for Host {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HostMsg>,
        args: HostArgs,
    ) -> Result<HostState, ActorProcessingErr> {
        pg::join(HOSTS_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(HostState {
            registry: args.registry,
            name: args.name,
            replicas: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HostMsg>,
        msg: HostMsg,
        st: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Hello(_hello, reply) => {
                let _ = reply.send(NodeInfo {
                    protocol: PROTOCOL_VERSION,
                    version: env!("CARGO_PKG_VERSION").into(),
                    name: st.name.clone(),
                    kinds: st.registry.kinds().map(|(k, _, _)| k.to_string()).collect(),
                });
            }
            HostMsg::Spawn(spec, reply) => {
                let coordinator = spec.coordinator.clone();
                let what = format!("{} replica {}", spec.name, spec.replica);
                let args = ReplicaArgs {
                    registry: st.registry.clone(),
                    spec,
                };
                let answer = match Actor::spawn_linked(None, NodeReplica, args, myself.get_cell())
                    .await
                {
                    Ok((r, _)) => {
                        let pid = r.get_id().pid();
                        st.replicas.entry(coordinator).or_default().push(r);
                        tracing::info!(node = %st.name, replica = %what, pid, "replica started");
                        Ok(pid)
                    }
                    Err(e) => Err(format!("node {:?}: {what}: {}", st.name, spawn_err(&e))),
                };
                let _ = reply.send(Spawned(answer));
            }
            HostMsg::PeerGone(coordinator) => {
                for r in st.replicas.remove(&coordinator).unwrap_or_default() {
                    r.stop(Some("the coordinator disconnected".into()));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<HostMsg>,
        evt: SupervisionEvent,
        st: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(cell, ..)
        | SupervisionEvent::ActorFailed(cell, _) = &evt
        {
            for list in st.replicas.values_mut() {
                list.retain(|r| r.get_id() != cell.get_id());
            }
            st.replicas.retain(|_, l| !l.is_empty());
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HostMsg>,
        st: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        for r in st.replicas.drain().flat_map(|(_, l)| l) {
            r.stop(Some("the node is stopping".into()));
        }
        Ok(())
    }
}

struct ReplicaArgs {
    registry: Arc<Registry>,
    spec: ReplicaSpec,
}

struct ReplicaState {
    router: ActorRef<RouterMsg>,
}

/// A replica hosted for a coordinator: forwards its requests to a local one-replica router.
struct NodeReplica;

impl Actor for NodeReplica {
    type Msg = ReplicaMsg;
    type State = ReplicaState;
    type Arguments = ReplicaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReplicaMsg>,
        args: ReplicaArgs,
    ) -> Result<ReplicaState, ActorProcessingErr> {
        let spec = args.spec;
        let build = args
            .registry
            .builder(&spec.kind)
            .ok_or_else(|| format!("this node has no actor kind {:?}", spec.kind))?;
        let router_args = RouterArgs {
            contexts: vec![spec.context()],
            build,
            batch: spec.batch.max(1),
            max_wait: Duration::from_millis(spec.max_wait_ms),
            max_attempts: spec.max_attempts.max(1),
            outstanding_max: Arc::new(AtomicUsize::new(0)),
            restarts: Arc::new(AtomicUsize::new(0)),
            cluster: None,
        };
        let (router, _) = Actor::spawn_linked(None, Router, router_args, myself.get_cell())
            .await
            .map_err(|e| spawn_err(&e))?;
        if let Some(u) = spec.update {
            router.cast(RouterMsg::Update(Box::new(u)))?;
        }
        pg::join(REPLICAS_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(ReplicaState { router })
    }

    async fn handle(
        &self,
        myself: ActorRef<ReplicaMsg>,
        msg: ReplicaMsg,
        st: &mut ReplicaState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReplicaMsg::Run(job, reply) => {
                let (tx, rx) = oneshot::channel();
                st.router.cast(RouterMsg::Submit(*job.0, tx))?;
                // Answered when the router answers; meanwhile this actor takes more requests
                // (and pings).
                tokio::spawn(async move {
                    let answer = match rx.await {
                        Ok(Ok(a)) => Ok(a.response),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err("the replica stopped".into()),
                    };
                    let _ = reply.send(JobReply(answer));
                });
            }
            ReplicaMsg::Update(u) => st.router.cast(RouterMsg::Update(Box::new(u.0)))?,
            ReplicaMsg::Ping(x, reply) => {
                let _ = reply.send(x);
            }
            ReplicaMsg::Stop(reason) => myself.stop(Some(reason)),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ReplicaMsg>,
        evt: SupervisionEvent,
        _st: &mut ReplicaState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, e) = &evt {
            myself.stop(Some(format!("its router failed: {e}")));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ReplicaMsg>,
        st: &mut ReplicaState,
    ) -> Result<(), ActorProcessingErr> {
        st.router.stop(None);
        Ok(())
    }
}
