//! `rlrig node`: a worker process that hosts actors for flows run elsewhere.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rlrig_engine::{Node, NodeOptions, Registry, Tls, TlsPaths};

use crate::outcome::refused;

/// Arguments of `rlrig node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Where to listen, `host:port`: 127.0.0.1:4701 for this machine only, 0.0.0.0:4701 for
    /// every interface; port 0 picks a free one (printed).
    #[arg(long)]
    listen: String,
    /// The node's name in logs and in coordinators' messages (default: node-<port>).
    #[arg(long)]
    name: Option<String>,
    /// A file holding the cluster's shared secret. Without it the secret is read from
    /// $RLRIG_CLUSTER_SECRET. (Never on the command line, where `ps` would show it.)
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// This node's certificate chain (PEM), signed by --tls-ca; it must name the host that
    /// coordinators use in the node's address (DNS name or IP address).
    #[arg(long, requires_all = ["tls_key", "tls_ca"], conflicts_with = "plain_tcp")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): only coordinators with a certificate it signed are
    /// let in.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Accept connections in the clear instead of TLS: on a trusted network only (the secret
    /// authenticates, but anyone on the path can read and alter the traffic).
    #[arg(long)]
    plain_tcp: bool,
}

/// Runs a node until SIGINT or SIGTERM.
pub fn run(registry: Registry, args: NodeArgs) -> anyhow::Result<i32> {
    let secret = match &args.secret_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the cluster secret {}", f.display()))?,
        None => std::env::var("RLRIG_CLUSTER_SECRET").map_err(|_| {
            anyhow::anyhow!("no cluster secret: give --secret-file or set $RLRIG_CLUSTER_SECRET")
        })?,
    };
    let secret = secret.trim().to_string();
    anyhow::ensure!(!secret.is_empty(), "the cluster secret is empty");
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            Tls::load(&TlsPaths {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })
            .map_err(refused)?,
        ),
        _ if args.plain_tcp => None,
        _ => {
            return Err(refused(anyhow::anyhow!(
                "rlrig node encrypts its traffic: give --tls-cert, --tls-key and --tls-ca (PEM \
                 files; scripts/cluster-certs.sh makes a CA and certificates), or --plain-tcp to \
                 accept connections in the clear on a trusted network"
            )));
        }
    };
    let mut listen: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&args.listen)
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("--listen {:?} is not a host:port address", args.listen))?;
    if listen.port() == 0 {
        // ractor_cluster cannot report the port it bound: pick a free one first.
        listen = std::net::TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .with_context(|| format!("cannot listen on {listen}"))?;
    }
    let name = args
        .name
        .unwrap_or_else(|| format!("node-{}", listen.port()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let opts = NodeOptions {
            name: name.clone(),
            listen,
            secret,
            tls: tls.clone(),
        };
        let node = Node::start(Arc::new(registry), opts).await?;
        println!(
            "rlrig node {name} listening on {listen} (cluster protocol {}, {})",
            rlrig_engine::wire::PROTOCOL_VERSION,
            if tls.is_some() {
                "mutual TLS"
            } else {
                "plain TCP"
            }
        );
        std::io::stdout().flush()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        node.stop().await;
        eprintln!("rlrig node {name}: stopped");
        Ok(0)
    })
}
