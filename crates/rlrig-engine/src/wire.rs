//! What crosses between this process and an `rlrig node`: ractor_cluster messages whose fields
//! are MessagePack (`rmp-serde`) encodings of the engine's serde types. Images and weights are
//! byte strings there, not arrays of numbers.

use std::path::PathBuf;

use ractor::{BytesConvertable, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use rlrig_contract::{Role, WeightsUpdate};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Request, Response};
use crate::registry::ActorContext;

/// The cluster protocol's version: a coordinator and a node must agree on it exactly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message a node or coordinator accepts (weights updates travel as one message).
pub(crate) const MAX_FRAME_BYTES: u64 = 512 << 20;

/// The process group every node's host actor joins.
pub(crate) const HOSTS_GROUP: &str = "rlrig.hosts";
/// The process group every remote replica joins.
pub(crate) const REPLICAS_GROUP: &str = "rlrig.replicas";

/// Encodes a value as MessagePack (struct fields by name, so optional fields may be added).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("engine messages always encode")
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

macro_rules! wire {
    ($($t:ty),*) => {$(
        impl BytesConvertable for $t {
            fn into_bytes(self) -> Vec<u8> {
                encode(&self)
            }
            // ractor_cluster's decoding cannot fail: a panic here is caught by the derived
            // code and the message dropped, which the sender sees as a failed call.
            fn from_bytes(bytes: Vec<u8>) -> Self {
                decode(&bytes).unwrap_or_else(|e| panic!("undecodable {}: {e}", stringify!($t)))
            }
        }
    )*};
}

/// The coordinator introduces itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the coordinator.
    pub protocol: u32,
    /// The coordinator's rlrig version.
    pub version: String,
}

/// What a node says of itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// [`PROTOCOL_VERSION`] of the node.
    pub protocol: u32,
    /// The node's rlrig version.
    pub version: String,
    /// The node's name (`rlrig node --name`).
    pub name: String,
    /// The actor kinds it can host.
    pub kinds: Vec<String>,
}

/// Start one replica on a node: everything its model build and its batching need.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaSpec {
    /// The coordinator's cluster name: the node stops the replica if that session ends.
    pub coordinator: String,
    /// The actor's name in the flow.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its kind.
    pub kind: String,
    /// Its settings.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Its device on the node.
    pub device: String,
    /// Which replica of the actor.
    pub replica: usize,
    /// The flow file's directory on the coordinator: relative paths in settings resolve
    /// against it, so the node must see the same path (a shared or mirrored filesystem).
    pub base_dir: PathBuf,
    /// Largest batch.
    pub batch: usize,
    /// How long a partial batch waits, in milliseconds.
    pub max_wait_ms: u64,
    /// Attempts per request on the node before it answers an error.
    pub max_attempts: u32,
    /// The latest weights, applied right after the build (a replica restarted mid-run).
    pub update: Option<WeightsUpdate>,
}

impl ReplicaSpec {
    /// The build context on the node.
    pub(crate) fn context(&self) -> ActorContext {
        ActorContext {
            name: self.name.clone(),
            role: self.role,
            kind: self.kind.clone(),
            settings: self.settings.clone(),
            device: self.device.clone(),
            replica: self.replica,
            base_dir: self.base_dir.clone(),
            node: None,
        }
    }
}

/// A node's answer to [`HostMsg::Spawn`]: the replica's pid, or why it could not start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spawned(pub Result<u64, String>);

/// One request for a remote replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job(pub Box<Request>);

/// A remote replica's answer: the response, or the error after the node's own retries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobReply(pub Result<Response, String>);

/// New weights for a remote replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Update(pub WeightsUpdate);

wire!(Hello, NodeInfo, ReplicaSpec, Spawned, Job, JobReply, Update);

/// Messages to a node's host actor.
#[derive(RactorClusterMessage)]
pub enum HostMsg {
    /// Protocol check.
    #[rpc]
    Hello(Hello, RpcReplyPort<NodeInfo>),
    /// Start a replica.
    #[rpc]
    Spawn(ReplicaSpec, RpcReplyPort<Spawned>),
    /// (Local, from the node's event subscription.) The session of this coordinator ended:
    /// stop its replicas.
    PeerGone(String),
}

/// Messages to a replica on a node.
#[derive(RactorClusterMessage)]
pub enum ReplicaMsg {
    /// Answer one request.
    #[rpc]
    Run(Job, RpcReplyPort<JobReply>),
    /// Take new weights before the next batch.
    Update(Update),
    /// Liveness: answers its argument at once, whatever the model is doing.
    #[rpc]
    Ping(u64, RpcReplyPort<u64>),
    /// Stop (the run is over or the coordinator replaced this replica).
    Stop(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlrig_contract::{EditRequest, Image};

    fn image() -> Image {
        let pixels: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
        Image::from_raw(32, 32, pixels).unwrap()
    }

    #[test]
    fn requests_and_answers_round_trip_with_images_as_bytes() {
        let job = Job(Box::new(Request::Edit(EditRequest {
            image: image(),
            edit_prompt: "move the red circle left of the blue square".into(),
            seed: 42,
            explore: false,
        })));
        let bytes = job.clone().into_bytes();
        // 3,072 pixel bytes and a few dozen of framing: a byte string, not numbers in text.
        assert!(bytes.len() < 3072 + 128, "{} bytes", bytes.len());
        let back = Job::from_bytes(bytes);
        assert_eq!(back.0, job.0);

        let answer = JobReply(Ok(Response::Image(image())));
        let back = JobReply::from_bytes(answer.clone().into_bytes());
        assert_eq!(back.0, answer.0);
        let failed = JobReply(Err("the editor failed".into()));
        assert_eq!(
            JobReply::from_bytes(failed.clone().into_bytes()).0,
            failed.0
        );
    }

    #[test]
    fn weights_updates_cross_as_bytes() {
        let u = Update(WeightsUpdate {
            version: 7,
            weights: vec![1; 100_000],
        });
        let bytes = u.clone().into_bytes();
        assert!(bytes.len() < 100_000 + 64, "{} bytes", bytes.len());
        assert_eq!(Update::from_bytes(bytes).0, u.0);
    }

    #[test]
    fn garbage_is_a_decoding_error_not_a_value() {
        assert!(decode::<Job>(&[0xc1, 0x00]).is_err());
        let r = std::panic::catch_unwind(|| Job::from_bytes(vec![0xc1]));
        assert!(
            r.is_err(),
            "from_bytes panics (ractor_cluster drops the message)"
        );
    }
}
