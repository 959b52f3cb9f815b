//! `rlrig node`: a worker process that hosts actors for flows run elsewhere.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rlrig_engine::{Node, NodeOptions, Registry};

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
        };
        let node = Node::start(Arc::new(registry), opts)
            .await
            .map_err(anyhow::Error::msg)?;
        println!(
            "rlrig node {name} listening on {listen} (cluster protocol {})",
            rlrig_engine::wire::PROTOCOL_VERSION
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
