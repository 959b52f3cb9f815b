//! Nodes and placement: which actors run in other processes (`rlrig node`), and how this
//! process reaches them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The placement name meaning "this process".
pub const LOCAL: &str = "local";

/// An `rlrig node` process that actors may be placed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Where the node listens: `host:port`.
    pub address: String,
    /// Free-form labels (`gpu`, `a100`, …), for people and tools; placement is by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// Where an actor's replicas run: one node for all (`node = "gpu-box-1"`), or one entry per
/// replica (`node = ["local", "gpu-box-1"]`). `local` is this process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Placement {
    /// Every replica on this node.
    All(String),
    /// Replica `i` on entry `i`.
    PerReplica(Vec<String>),
}

impl Placement {
    /// The node of replica `replica`; `None` for this process.
    pub fn node_of(&self, replica: usize) -> Option<&str> {
        let name = match self {
            Placement::All(n) => n.as_str(),
            Placement::PerReplica(v) => v.get(replica)?.as_str(),
        };
        (name != LOCAL).then_some(name)
    }

    /// Every node name the placement uses (`local` included).
    pub fn names(&self) -> Vec<&str> {
        match self {
            Placement::All(n) => vec![n.as_str()],
            Placement::PerReplica(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// How this process talks to its nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// A file holding the cluster's shared secret (relative to the flow file). Without it, the
    /// secret is read from the environment variable `secret_env`. Never written in the flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The environment variable holding the secret when there is no `secret_file`.
    pub secret_env: String,
    /// Where this process's own cluster endpoint listens (`host:port`; port 0: any free one).
    pub listen: String,
    /// How long connecting to a node (TCP, authentication, protocol check) may take.
    pub connect_timeout_ms: u64,
    /// How long one remote request may take before its node is taken for lost.
    pub call_timeout_ms: u64,
    /// How often each remote replica is pinged; a ping unanswered for `connect_timeout_ms`
    /// marks the node down (a frozen or cut-off node sends no disconnect).
    pub heartbeat_ms: u64,
    /// How often a replica on a lost node is tried again (the node may come back).
    pub rejoin_ms: u64,
    /// How node traffic travels: `"tls"` (the default; needs `tls`) or `"plain"`.
    pub transport: Transport,
    /// This process's certificate and key and the cluster's CA, for `transport = "tls"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// How node traffic travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Mutual TLS: each side proves its certificate against the cluster's CA.
    #[default]
    Tls,
    /// TCP in the clear, for a trusted network only: the shared secret authenticates, but
    /// anyone on the path can read and alter images, prompts and weights.
    Plain,
}

/// PEM files for mutual TLS between nodes, relative to the flow file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM), signed by `ca`.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster's CA certificate(s) (PEM): only peers whose certificates it signed are let in.
    pub ca: PathBuf,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            secret_file: None,
            secret_env: "RLRIG_CLUSTER_SECRET".into(),
            listen: "127.0.0.1:0".into(),
            connect_timeout_ms: 5_000,
            call_timeout_ms: 600_000,
            heartbeat_ms: 1_000,
            rejoin_ms: 2_000,
            transport: Transport::Tls,
            tls: None,
        }
    }
}

/// Whether `s` is `host:port` with a port number.
pub(crate) fn valid_address(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

/// Node names as actor names: letters, digits, `_`, `-`, `.`.
pub(crate) fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// The nodes a flow's actors are placed on, by name (`local` left out).
pub fn used_nodes(flow: &crate::Flow) -> BTreeMap<String, NodeSpec> {
    let mut out = BTreeMap::new();
    for a in flow.actors.values() {
        for r in 0..a.replicas {
            if let Some(n) = a.node.as_ref().and_then(|p| p.node_of(r))
                && let Some(spec) = flow.nodes.get(n)
            {
                out.insert(n.to_string(), spec.clone());
            }
        }
    }
    out
}
