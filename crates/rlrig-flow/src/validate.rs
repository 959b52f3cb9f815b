//! The checks a flow must pass beyond its shape: names, references, the cycle's step order.

use rlrig_contract::Role;

use crate::cluster::{Transport, valid_address, valid_node_name};
use crate::load::did_you_mean;
use crate::{
    Answer, Checked, Flow, FlowProblem, LOCAL, Loaded, LoadedFlow, Placement, PromptSourceKind,
};

impl Checked for Flow {
    fn check(loaded: &Loaded<Self>) -> Vec<FlowProblem> {
        check(loaded)
    }
}

/// Every problem of a parsed flow, located.
fn check(loaded: &LoadedFlow) -> Vec<FlowProblem> {
    let flow = &loaded.flow;
    let mut out = Vec::new();
    let mut problem = |key: &str, message: String| out.push(loaded.problem_at(key, message));

    if flow.name.is_empty()
        || !flow
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || flow.name.starts_with('.')
    {
        problem(
            "name",
            format!(
                "{:?} is not a run name: use letters, digits, `-`, `_`, `.`",
                flow.name
            ),
        );
    }

    let p = &flow.prompts;
    match p.source {
        PromptSourceKind::World => {
            if p.count.is_none() {
                problem(
                    "prompts",
                    "`source = \"world\"` needs `count`, the number of prompts".into(),
                );
            }
            if p.path.is_some() {
                problem("prompts.path", "`path` is for `source = \"file\"`".into());
            }
        }
        PromptSourceKind::File => {
            if p.path.is_none() {
                problem(
                    "prompts",
                    "`source = \"file\"` needs `path`, a LAION-SG .json or .jsonl file".into(),
                );
            }
        }
    }

    check_actors(flow, &mut problem);
    check_nodes(flow, &mut problem);

    if flow.engine.max_in_flight == 0 {
        problem("engine.max_in_flight", "must be at least 1".into());
    }
    if flow.engine.max_attempts == 0 {
        problem("engine.max_attempts", "must be at least 1".into());
    }
    if let Some(s) = flow.cycle.stop_score
        && !(0.0..=1.0).contains(&s)
    {
        problem(
            "cycle.stop_score",
            format!("{s} is not a score: expected a number in [0, 1]"),
        );
    }
    if flow.cycle.reward_funcs.is_empty() {
        problem(
            "cycle.reward_funcs",
            "must name at least one reward function (`score`, `sg_iou`, `entity_iou`, `relation_iou`)"
                .into(),
        );
    }
    if let Some(w) = &flow.cycle.reward_weights {
        if w.len() != flow.cycle.reward_funcs.len() {
            problem(
                "cycle.reward_weights",
                format!(
                    "{} weights for {} reward functions: give one weight per entry of `reward_funcs`",
                    w.len(),
                    flow.cycle.reward_funcs.len()
                ),
            );
        } else if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().all(|x| *x == 0.0) {
            problem(
                "cycle.reward_weights",
                format!("{w:?}: weights must be finite numbers ≥ 0, not all 0"),
            );
        }
    }
    if let Some(t) = &flow.train {
        check_train(flow, t, &mut problem);
    }
    out.extend(check_cycle(loaded));
    out
}

/// Each actor's name, batch, replicas, device and kind, and its placement on nodes.
fn check_actors(flow: &Flow, problem: &mut dyn FnMut(&str, String)) {
    for (name, a) in &flow.actors {
        let key = format!("actors.{name}");
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problem(
                &key,
                format!("actor name {name:?}: use letters, digits, `_` and `-`"),
            );
        }
        if a.batch == 0 {
            problem(&format!("{key}.batch"), "must be at least 1".into());
        }
        if a.replicas == 0 {
            problem(&format!("{key}.replicas"), "must be at least 1".into());
        }
        if !valid_device(&a.device) {
            problem(
                &format!("{key}.device"),
                format!(
                    "{:?} is not a device: expected `cpu`, `wgpu`, `wgpu:N` or `cuda:N`",
                    a.device
                ),
            );
        }
        if a.kind.trim().is_empty() {
            problem(&format!("{key}.kind"), "must name an actor kind".into());
        }
        if let Some(placement) = &a.node {
            if let Placement::PerReplica(v) = placement
                && v.len() != a.replicas
            {
                problem(
                    &format!("{key}.node"),
                    format!(
                        "{} entries for {} replicas: give one node per replica, or one name for all",
                        v.len(),
                        a.replicas
                    ),
                );
            }
            for n in placement.names() {
                if n != LOCAL && !flow.nodes.contains_key(n) {
                    let known: Vec<&str> = flow
                        .nodes
                        .keys()
                        .map(String::as_str)
                        .chain([LOCAL])
                        .collect();
                    problem(
                        &format!("{key}.node"),
                        format!(
                            "no node {n:?} in [nodes]{}",
                            did_you_mean(n, known.iter().copied())
                                .map(|b| format!("; did you mean {b:?}?"))
                                .unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
}

/// The nodes' names and addresses, and how this process reaches them (`[cluster]`).
fn check_nodes(flow: &Flow, problem: &mut dyn FnMut(&str, String)) {
    for (name, n) in &flow.nodes {
        let key = format!("nodes.{name}");
        if name == LOCAL || !valid_node_name(name) {
            problem(
                &key,
                format!(
                    "node name {name:?}: use letters, digits, `_`, `-` and `.`; `local` means this process"
                ),
            );
        }
        if !valid_address(&n.address) {
            problem(
                &format!("{key}.address"),
                format!("{:?} is not an address: expected `host:port`", n.address),
            );
        }
    }
    let c = &flow.cluster;
    for (k, v) in [
        ("connect_timeout_ms", c.connect_timeout_ms),
        ("call_timeout_ms", c.call_timeout_ms),
        ("heartbeat_ms", c.heartbeat_ms),
        ("rejoin_ms", c.rejoin_ms),
    ] {
        if v == 0 {
            problem(&format!("cluster.{k}"), "must be at least 1".into());
        }
    }
    if !valid_address(&c.listen) {
        problem(
            "cluster.listen",
            format!("{:?} is not an address: expected `host:port`", c.listen),
        );
    }
    match (c.transport, &c.tls) {
        (Transport::Tls, None) if !crate::used_nodes(flow).is_empty() => problem(
            "cluster.tls",
            "the flow places actors on nodes, and node traffic is encrypted unless asked \
             otherwise: give `cluster.tls = { cert = ..., key = ..., ca = ... }` (PEM files, \
             relative to the flow file), or set `cluster.transport = \"plain\"` to send it in \
             the clear on a trusted network"
                .into(),
        ),
        (Transport::Plain, Some(_)) => problem(
            "cluster.tls",
            "`cluster.transport = \"plain\"` sends traffic in the clear: remove `cluster.tls`, \
             or the `transport` line to use it"
                .into(),
        ),
        _ => {}
    }
}

/// `[train]`: the trained actor, the cycle it needs around it (a checker after its last image,
/// at least one round) and, through [`check_train_numbers`], the learner's numbers.
fn check_train(
    flow: &crate::Flow,
    t: &crate::TrainSettings,
    problem: &mut dyn FnMut(&str, String),
) {
    if t.eval_every > 0 && !crate::used_nodes(flow).is_empty() {
        // The evaluation's own engine would open a second connection to the same nodes,
        // which drops the training's: its rollouts in flight then fail.
        problem(
            "train.eval_every",
            format!(
                "{}: evaluating during training is not supported when actors run on `rlrig node`s; set `eval_every = 0` and evaluate the weights afterwards with the inference flow",
                t.eval_every
            ),
        );
    }
    let steps_of = |names: &[String]| -> Vec<Role> {
        names
            .iter()
            .filter_map(|n| flow.actors.get(n))
            .map(|a| a.role)
            .collect()
    };
    // The reward is the score of a checker after the trained role's last image.
    let checked_after = |roles: &[Role], role: Role| {
        roles
            .iter()
            .rposition(|r| *r == role)
            .is_some_and(|e| roles[e..].contains(&Role::Checker))
    };
    match flow.actors.get(&t.actor) {
        None => problem(
            "train.actor",
            format!("no actor named {:?} is defined under [actors]", t.actor),
        ),
        Some(a) if a.role == Role::Diffuser => {
            // Flow-GRPO on the generator: its groups are round 0's images.
            if !flow.cycle.start.contains(&t.actor) {
                problem(
                    "train.actor",
                    format!("{:?} is not a step of `cycle.start`", t.actor),
                );
            } else if !checked_after(&steps_of(&flow.cycle.start), Role::Diffuser) {
                problem(
                    "cycle.start",
                    "training the diffuser needs a checker after it in `cycle.start`: its score is the reward"
                        .into(),
                );
            }
        }
        Some(a) if !matches!(a.role, Role::Policy | Role::Editor) => problem(
            "train.actor",
            format!(
                "{:?} has role {:?}; the trained actor must have role \"policy\" (phase 1), \"editor\" (phase 2) or \"diffuser\"",
                t.actor,
                a.role.name()
            ),
        ),
        Some(_) if !flow.cycle.round.contains(&t.actor) => problem(
            "train.actor",
            format!("{:?} is not a step of `cycle.round`", t.actor),
        ),
        Some(_) => {}
    }
    // A policy's or an editor's groups are the rounds' (a diffuser's are round 0's).
    let trains_diffuser = flow
        .actors
        .get(&t.actor)
        .is_some_and(|a| a.role == Role::Diffuser);
    if !trains_diffuser {
        if !checked_after(&steps_of(&flow.cycle.round), Role::Editor) {
            problem(
                "cycle.round",
                "training needs a checker after the round's last editor: its score is the reward"
                    .into(),
            );
        }
        if flow.cycle.max_rounds == 0 {
            problem(
                "cycle.max_rounds",
                "training needs at least one round".into(),
            );
        }
    }
    check_train_numbers(flow, t, problem);
}

/// `[train]`'s numbers and device, each against its range.
fn check_train_numbers(
    flow: &crate::Flow,
    t: &crate::TrainSettings,
    problem: &mut dyn FnMut(&str, String),
) {
    if t.num_generations < 2 {
        problem(
            "train.num_generations",
            "must be at least 2: GRPO compares a group".into(),
        );
    }
    if t.steps == 0 {
        problem("train.steps", "must be at least 1".into());
    }
    if t.groups_per_step == 0 {
        problem("train.groups_per_step", "must be at least 1".into());
    }
    if t.checkpoint_every == 0 {
        problem("train.checkpoint_every", "must be at least 1".into());
    }
    // NaN fails every check below as well as the bad values.
    let positive = |x: f64| x.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater);
    if !positive(t.learning_rate) {
        problem("train.learning_rate", "must be positive".into());
    }
    if t.beta.is_nan() || t.beta < 0.0 {
        problem("train.beta", "must be at least 0".into());
    }
    if !(positive(t.epsilon) && t.epsilon < 1.0) {
        problem("train.epsilon", "must be in (0, 1)".into());
    }
    if !positive(t.epsilon_high) {
        problem("train.epsilon_high", "must be positive".into());
    }
    if !positive(t.temperature) {
        problem("train.temperature", "must be positive".into());
    }
    if !positive(t.max_grad_norm) {
        problem("train.max_grad_norm", "must be positive".into());
    }
    if !["token_mean", "sequence_mean"].contains(&t.loss_type.as_str()) {
        problem(
            "train.loss_type",
            format!(
                "{:?}: expected \"token_mean\" or \"sequence_mean\"",
                t.loss_type
            ),
        );
    }
    if t.eval_every > 0 && t.eval_prompts == 0 {
        problem(
            "train.eval_prompts",
            "must be at least 1 when `eval_every` is set".into(),
        );
    }
    if t.eval_every > 0 && t.eval_seed == flow.prompts.seed {
        problem(
            "train.eval_seed",
            "equals `prompts.seed`: held-out prompts must come from another seed".into(),
        );
    }
    if !valid_device(&t.device) {
        problem(
            "train.device",
            format!(
                "{:?} is not a device: expected `cpu`, `wgpu` or `wgpu:N`",
                t.device
            ),
        );
    }
}

pub(crate) fn valid_device(d: &str) -> bool {
    d == "cpu"
        || d == "wgpu"
        || ["cuda:", "wgpu:"].iter().any(|p| {
            d.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

/// What is known about a trajectory between steps.
#[derive(Clone, Copy, PartialEq, Eq)]
struct State {
    image: bool,
    report: bool,
    edit: bool,
}

/// Reports each step of the cycle that names no actor; true when there was one.
fn check_step_names(flow: &crate::Flow, problem: &mut dyn FnMut(String, String)) -> bool {
    let c = &flow.cycle;
    let mut unresolved = false;
    for (list, steps) in [("start", &c.start), ("round", &c.round)] {
        for (i, name) in steps.iter().enumerate() {
            if !flow.actors.contains_key(name) {
                unresolved = true;
                let mut m = format!("no actor named {name:?} is defined under [actors]");
                if let Some(best) = did_you_mean(name, flow.actors.keys().map(String::as_str)) {
                    m.push_str(&format!("; did you mean {best:?}?"));
                }
                problem(format!("cycle.{list}[{i}]"), m);
            }
        }
    }
    unresolved
}

fn check_cycle(loaded: &LoadedFlow) -> Vec<FlowProblem> {
    let flow = &loaded.flow;
    let c = &flow.cycle;
    let mut out = Vec::new();
    let mut problem = |key: String, message: String| out.push(loaded.problem_at(&key, message));

    // References first: a step naming no actor stops the order check.
    let unresolved = check_step_names(flow, &mut problem);
    if c.start.is_empty() {
        problem(
            "cycle.start".into(),
            "the cycle needs at least a diffuser to start".into(),
        );
        return out;
    }
    if unresolved {
        return out;
    }
    let role = |name: &String| flow.actors[name].role;
    let needs_score = c.stop_score.is_some() || c.answer == Answer::Best;

    let mut state = State {
        image: false,
        report: false,
        edit: false,
    };
    // Only the first order problem is reported: later ones usually follow from it.
    let mut order_ok = true;
    let mut step = |state: &mut State,
                    list: &str,
                    i: usize,
                    name: &String,
                    problem: &mut dyn FnMut(String, String)| {
        if !order_ok {
            return;
        }
        let mut problem = |k: String, m: String| {
            order_ok = false;
            problem(k, m)
        };
        let key = format!("cycle.{list}[{i}]");
        let r = role(name);
        match r {
            Role::Diffuser if list == "start" && i == 0 => {
                *state = State {
                    image: true,
                    report: false,
                    edit: false,
                }
            }
            Role::Diffuser => problem(
                key,
                format!("{name:?} is a diffuser: only the first step of `start` may be one"),
            ),
            _ if list == "start" && i == 0 => problem(
                key,
                format!("{name:?} is a {r}: the cycle must start with a diffuser"),
            ),
            Role::Checker => state.report = true,
            Role::Policy if !state.report => problem(
                key,
                format!(
                    "{name:?} is a policy and needs a checker's report on the current image: put a checker before it"
                ),
            ),
            Role::Policy => state.edit = true,
            Role::Editor if !state.edit => problem(
                key,
                format!("{name:?} is an editor and needs an edit prompt: put a policy before it"),
            ),
            Role::Editor => {
                *state = State {
                    image: true,
                    report: false,
                    edit: false,
                }
            }
            Role::Trainer => problem(
                key,
                format!(
                    "{name:?} is a trainer: it learns from stored trajectories and is not a cycle step"
                ),
            ),
        }
    };
    for (i, name) in c.start.iter().enumerate() {
        step(&mut state, "start", i, name, &mut problem);
    }
    if needs_score && !state.report {
        problem(
            "cycle.start".into(),
            "`stop_score` and `answer = \"best\"` need a checker after the last image of `start`"
                .into(),
        );
    }
    if c.max_rounds > 0 {
        if !c.round.iter().any(|n| role(n) == Role::Editor) {
            problem("cycle.round".into(), "a round without an editor cannot change the image: add one, or set `max_rounds = 0`".into());
        } else {
            // Two passes: the round must follow `start`, and follow itself.
            for _ in 0..2 {
                for (i, name) in c.round.iter().enumerate() {
                    step(&mut state, "round", i, name, &mut problem);
                }
            }
            if needs_score && !state.report {
                problem("cycle.round".into(), "`stop_score` and `answer = \"best\"` need a checker after the round's last editor".into());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}
