//! Generated inputs for the cluster wire: thousands of damaged MessagePack messages, as a
//! peer on the network could send them, each decoded or refused with an error, never a panic
//! or an allocation of what a length field claims.

use std::path::PathBuf;

use proptest::prelude::*;
use rlrig_contract::{
    CheckReport, CheckRequest, EditProposal, EditRequest, Image, ItemVerdict, ProposeRequest,
    RelationVerdict, Role, WeightsUpdate,
};
use rlrig_engine::wire::{
    Hello, Job, JobReply, NodeInfo, PROTOCOL_VERSION, ReplicaSpec, Spawned, Update, decode, encode,
};
use rlrig_engine::{Request, Response};
use rlrig_fuzz::{largest_allocation, mutated};

#[global_allocator]
static METER: rlrig_fuzz::Meter = rlrig_fuzz::Meter;

/// No message, however damaged, may make decoding ask for more than this at once.
const MAX_ALLOCATION: usize = 16 << 20;

fn report() -> CheckReport {
    CheckReport::new(
        vec![ItemVerdict::Present, ItemVerdict::Missing],
        vec![RelationVerdict::Violated],
        0.5,
        "the red circle is not left of the blue square".into(),
    )
}

fn seeds() -> Vec<Vec<u8>> {
    let prompt = rlrig_sg::read_jsonl(include_str!("../../../tests/data/world_prompts.jsonl"), "p")
        .unwrap()
        .remove(0);
    let image = Image::filled(8, 8, [1, 2, 3]);
    let spec = ReplicaSpec {
        coordinator: "coordinator".into(),
        name: "checker".into(),
        role: Role::Checker,
        kind: "neural.checker".into(),
        settings: serde_json::json!({"weights": "weights/checker.safetensors", "batch": 16})
            .as_object()
            .unwrap()
            .clone(),
        device: "cpu".into(),
        replica: 1,
        base_dir: PathBuf::from("/flows"),
        batch: 16,
        max_wait_ms: 5,
        max_attempts: 3,
        update: None,
    };
    vec![
        encode(&Hello {
            protocol: PROTOCOL_VERSION,
            version: "0.1.0".into(),
        }),
        encode(&NodeInfo {
            protocol: PROTOCOL_VERSION,
            version: "0.1.0".into(),
            name: "gpu-a".into(),
            kinds: vec!["neural.checker".into(), "neural.editor".into()],
        }),
        encode(&spec),
        encode(&Spawned(Ok(7))),
        encode(&Job(Box::new(Request::Check(CheckRequest {
            prompt: prompt.clone(),
            image: image.clone(),
        })))),
        encode(&Job(Box::new(Request::Propose(ProposeRequest {
            prompt,
            image: image.clone(),
            report: report(),
            seed: 3,
        })))),
        encode(&Job(Box::new(Request::Edit(EditRequest {
            image: image.clone(),
            edit_prompt: "swap the red circle and the blue square".into(),
            seed: 4,
            explore: true,
        })))),
        encode(&JobReply(Ok(Response::Image(image)))),
        encode(&JobReply(Ok(Response::Report(report())))),
        encode(&JobReply(Ok(Response::Proposal(EditProposal {
            edit_prompt: "remove the red circle".into(),
            token_ids: vec![4, 9, 2],
            logprobs: vec![-0.1, -0.5, -0.01],
            policy_version: 2,
        })))),
        encode(&JobReply(Err("out of memory".into()))),
        encode(&Update(WeightsUpdate {
            version: 3,
            weights: vec![7; 300],
        })),
    ]
}

/// Decodes `bytes` as every message type of the wire, as a node does with what it receives.
fn decode_all(bytes: &[u8]) -> usize {
    let oks = [
        decode::<Hello>(bytes).is_ok(),
        decode::<NodeInfo>(bytes).is_ok(),
        decode::<ReplicaSpec>(bytes).is_ok(),
        decode::<Spawned>(bytes).is_ok(),
        decode::<Job>(bytes).is_ok(),
        decode::<JobReply>(bytes).is_ok(),
        decode::<Update>(bytes).is_ok(),
    ];
    oks.into_iter().filter(|ok| *ok).count()
}

proptest! {
    #![proptest_config(rlrig_fuzz::config(3000))]

    #[test]
    fn damaged_messages_decode_or_are_refused(
        bytes in mutated(seeds(), &[])
    ) {
        let (_, largest) = largest_allocation(|| decode_all(&bytes));
        prop_assert!(largest <= MAX_ALLOCATION, "allocated {largest} bytes at once");
    }
}

/// Length fields that claim gigabytes, before a handful of bytes, are refused cheaply.
#[test]
fn lengths_that_claim_gigabytes_are_refused_without_allocating_them() {
    // array32, map32, bin32 and str32 headers claiming 2^31 - 1 entries or bytes.
    for marker in [0xdd, 0xdf, 0xc6, 0xdb] {
        let bytes = [marker, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
        let (decoded, largest) = largest_allocation(|| decode_all(&bytes));
        assert_eq!(decoded, 0, "marker {marker:#x}");
        assert!(
            largest < 1 << 20,
            "marker {marker:#x}: allocated {largest} bytes"
        );
    }
}

#[test]
fn the_seeds_decode() {
    for (i, bytes) in seeds().iter().enumerate() {
        assert!(decode_all(bytes) >= 1, "seed {i}");
    }
}
