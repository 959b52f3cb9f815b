//! rlrig's flow files: the declarative description of a reflect-edit run.
//!
//! A flow names its actors (role, kind, settings, device, batching, replicas), the cycle that
//! wires them (which actor follows which, the round limit, the stop condition, which image is
//! the answer), where prompts come from, where the run is written and what is stored. The
//! cycle is data: a flow without an editor, or with two checkers, is just another flow.
//!
//! [`load`] reads a flow file, applies `--set dotted.key=value` overrides and checks it; every
//! error names the file, line, column and key ([`FlowError`]). [`schema`] is the JSON Schema of
//! the format, generated from these types (committed as `flows/flow.schema.json`).
//!
//! This crate knows the *shape* of a flow only. Which kinds exist and what settings they take is
//! the registry's business; it reports its errors through [`LoadedFlow::error_at`] so that they
//! point into the file too.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use rlrig_contract::{Reward, RewardFunc, Role};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod cluster;
mod load;
mod pretrain;
mod train_settings;
mod validate;

pub use cluster::{ClusterSettings, LOCAL, NodeSpec, Placement, TlsFiles, Transport, used_nodes};
pub use load::{
    Checked, CopyError, FlowError, FlowKind, FlowProblem, Loaded, LoadedFlow, base_dir_record,
    did_you_mean, flow_kind, load, load_as, load_str, parse_as, parse_str, settings_into,
    write_copy,
};
pub use pretrain::{PretrainFlow, PretrainModel, PretrainSettings};
pub use train_settings::TrainSettings;

/// A whole flow file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Name of the run; its directory is `<run_dir>/<name>`.
    pub name: String,
    /// Parent directory of runs, relative to the working directory.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Where prompts come from.
    pub prompts: Prompts,
    /// The actors, by name. Cycle steps refer to these names.
    pub actors: BTreeMap<String, ActorSpec>,
    /// How the actors follow each other.
    pub cycle: Cycle,
    /// Flow control and fault handling.
    #[serde(default)]
    pub engine: EngineSettings,
    /// What is stored.
    #[serde(default)]
    pub store: StoreSettings,
    /// Present in training flows: Reflection-GRPO of the Policy (`rlrig run` then trains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainSettings>,
    /// `rlrig node` processes that actors may be placed on (`actors.<name>.node`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeSpec>,
    /// How this process reaches its nodes: the shared secret, timeouts.
    #[serde(default)]
    pub cluster: ClusterSettings,
}

/// The flow text without one top-level table (e.g. `train`, for the inference variant of a
/// training flow); the rest is kept as written.
pub fn without_table(text: &str, table: &str) -> Result<String, toml_edit::TomlError> {
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    doc.remove(table);
    Ok(doc.to_string())
}

impl Flow {
    /// How many ways the trained role samples per round: `train.num_generations`, else 1.
    pub fn num_generations(&self) -> u32 {
        self.train.as_ref().map_or(1, |t| t.num_generations)
    }

    /// The role whose step a round branches at when training: the trained actor's (`Policy`
    /// in phase 1, `Editor` in phase 2, `Diffuser` in round 0). `None` without `[train]`.
    pub fn branch_role(&self) -> Option<Role> {
        let t = self.train.as_ref()?;
        self.actors.get(&t.actor).map(|a| a.role)
    }
}

pub(crate) fn default_run_dir() -> PathBuf {
    PathBuf::from("runs")
}

/// Where prompts come from: the built-in world's sampler, or a LAION-SG JSON/JSONL file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    /// `world` (the seeded sampler) or `file` (LAION-SG records).
    pub source: PromptSourceKind,
    /// World: sampler seed.
    #[serde(default)]
    pub seed: u64,
    /// World: how many prompts (required). File: at most this many (all when absent).
    #[serde(default)]
    pub count: Option<u64>,
    /// File: path of the records (`.json` or `.jsonl`), relative to the working directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// The kinds of prompt source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptSourceKind {
    /// The built-in world's seeded sampler.
    World,
    /// A LAION-SG JSON or JSONL file.
    File,
}

/// One actor of the flow: a role played by an implementation `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorSpec {
    /// The role it plays.
    pub role: Role,
    /// The implementation, as registered (`baseline.renderer`, `external`, `my.checker`, …).
    pub kind: String,
    /// A TOML file of settings for the kind (relative to the flow file); `settings` override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// Settings for the kind, inline.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Device: `cpu`, `wgpu`, `wgpu:N` (a build with the `wgpu` feature) or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Largest batch one model call takes.
    #[serde(default = "one")]
    pub batch: usize,
    /// How long a partial batch may wait for more requests, in milliseconds.
    #[serde(default)]
    pub max_wait_ms: u64,
    /// Copies of the actor; requests go to the least loaded.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Where the replicas run: a node of `[nodes]` for all, or a list with one entry per
    /// replica; `local` (the default) is this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Placement>,
}

pub(crate) fn default_device() -> String {
    "cpu".into()
}

fn one() -> usize {
    1
}

/// The reflect-edit cycle.
///
/// Round 0 runs the `start` steps (a diffuser, then usually checkers); each further round runs
/// the `round` steps (usually policy, editor, checkers), at most `max_rounds` times, until the
/// checkers' score reaches `stop_score`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cycle {
    /// Actor names run in round 0, in order; the first is a diffuser.
    pub start: Vec<String>,
    /// Actor names run in every further round, in order.
    #[serde(default)]
    pub round: Vec<String>,
    /// How many further rounds at most (0: generate and check only).
    #[serde(default)]
    pub max_rounds: u32,
    /// Stop a trajectory once the checkers' score is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_score: Option<f64>,
    /// Which image is the answer.
    #[serde(default)]
    pub answer: Answer,
    /// The intrinsic reward, as TRL names it: a weighted sum of reward functions of the
    /// Checker's report — `score` (the share of the prompt's requirements met), `sg_iou`,
    /// `entity_iou`, `relation_iou` (the Checker's estimates from the scene graph it sees).
    /// `answer = "best"` ranks images by it, and a `[train]` flow's learner is rewarded with it.
    /// Default `["score"]`.
    #[serde(default = "default_reward_funcs")]
    pub reward_funcs: Vec<RewardFunc>,
    /// One weight per reward function; default 1 for each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_weights: Option<Vec<f64>>,
}

fn default_reward_funcs() -> Vec<RewardFunc> {
    vec![RewardFunc::Score]
}

impl Cycle {
    /// The reward the cycle's answer rule and the learner use.
    pub fn reward(&self) -> Reward {
        Reward {
            funcs: self.reward_funcs.clone(),
            weights: self
                .reward_weights
                .clone()
                .unwrap_or_else(|| vec![1.0; self.reward_funcs.len()]),
        }
    }
}

/// Which image of a trajectory is its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The last image.
    #[default]
    Last,
    /// The image with the best reward ([`Cycle::reward_funcs`]; the latest among equals).
    Best,
}

/// Flow control and fault handling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Trajectories in flight at once (credits): bounds memory and queues.
    pub max_in_flight: usize,
    /// Attempts per request before its trajectory is recorded as failed.
    pub max_attempts: u32,
    /// Seed of the per-trajectory sampling seeds.
    pub seed: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_in_flight: 16,
            max_attempts: 3,
            seed: 0,
        }
    }
}

/// What a run stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Write every trajectory to the run's sled store.
    pub trajectories: bool,
    /// Which images go into the store and the run directory.
    pub images: StoredImages,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            trajectories: true,
            images: StoredImages::All,
        }
    }
}

/// Which images are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoredImages {
    /// Every round's image.
    #[default]
    All,
    /// Only each trajectory's answer.
    Answer,
}

/// Any flow file: a reflect-edit cycle or a pre-training job.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum AnyFlow {
    /// A reflect-edit cycle.
    Cycle(Box<Flow>),
    /// Pre-training of a built-in model.
    Pretrain(Box<PretrainFlow>),
}

/// The JSON Schema of the flow formats (a cycle flow or a pre-training flow), pretty-printed.
pub fn schema() -> String {
    let schema = schemars::schema_for!(AnyFlow);
    serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
}
