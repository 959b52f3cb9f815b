//! Generated inputs for the flow loader: thousands of damaged flow files and `--set`
//! overrides, each loaded or refused with an error, never a panic or a runaway allocation.

use std::path::Path;

use proptest::prelude::*;
use rlrig_fuzz::{largest_allocation, mutated_text};

#[global_allocator]
static METER: rlrig_fuzz::Meter = rlrig_fuzz::Meter;

/// No flow file, however damaged, may make the loader ask for more than this at once.
const MAX_ALLOCATION: usize = 64 << 20;

const FLOWS: &[&str] = &[
    include_str!("../../../flows/infer.toml"),
    include_str!("../../../flows/infer-baseline.toml"),
    include_str!("../../../flows/infer-cluster.toml"),
    include_str!("../../../flows/train.toml"),
    include_str!("../../../flows/train-editor.toml"),
    include_str!("../../../flows/train-diffuser.toml"),
    include_str!("../../../tests/flows/valid/two_checkers.toml"),
    include_str!("../../../tests/flows/valid/placed_on_nodes.toml"),
];

/// Words of the flow format, inserted among the generic tokens.
const WORDS: &[&str] = &[
    "[actors.x]",
    "[cycle]",
    "[train]",
    "[cluster]",
    "[engine]",
    "role",
    "kind",
    "batch",
    "settings",
    "replicas",
    "node",
    "round",
    "start",
    "answer",
    "max_rounds",
    "reward_funcs",
    "reward_weights",
    "checker",
    "policy",
    "editor",
    "diffuser",
    "trainer",
    "count",
    "seed",
];

const OVERRIDES: &[&str] = &[
    "prompts.count=500",
    "actors.policy.settings.weights=\"weights/policy.safetensors\"",
    "cycle.reward_weights=[1.0, 2.0]",
    "engine.seed=3",
    "cycle.answer=best",
];

fn load(text: &str, overrides: &[String]) -> Result<(), String> {
    match rlrig_flow::load_str(Path::new("generated.toml"), text, overrides) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

proptest! {
    #![proptest_config(rlrig_fuzz::config(3000))]

    #[test]
    fn damaged_flow_files_load_or_are_refused(text in mutated_text(FLOWS, WORDS)) {
        let (loaded, largest) = largest_allocation(|| load(&text, &[]));
        if let Err(message) = loaded {
            prop_assert!(message.contains("generated.toml"), "unlocated error: {message}");
        }
        prop_assert!(largest <= MAX_ALLOCATION, "allocated {largest} bytes at once");
    }

    #[test]
    fn damaged_overrides_apply_or_are_refused(set in mutated_text(OVERRIDES, WORDS)) {
        let (loaded, largest) = largest_allocation(|| load(FLOWS[0], &[set]));
        if let Err(message) = loaded {
            prop_assert!(!message.trim().is_empty());
        }
        prop_assert!(largest <= MAX_ALLOCATION, "allocated {largest} bytes at once");
    }
}

/// The seeds themselves load: the generated inputs start from valid flows.
#[test]
fn the_seeds_load() {
    for (i, text) in FLOWS.iter().enumerate() {
        load(text, &[]).unwrap_or_else(|e| panic!("seed {i}: {e}"));
    }
    for set in OVERRIDES {
        load(FLOWS[0], &[(*set).to_owned()]).unwrap_or_else(|e| panic!("{set}: {e}"));
    }
}
