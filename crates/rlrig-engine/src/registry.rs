//! The registry of actor kinds: which implementation a flow's `kind` names, what settings it
//! takes, and how to build it; and, for the kinds that can be trained, how to build their GRPO
//! learner.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rlrig_contract::{Checker, Diffuser, EditPolicy, Editor, GrpoLearner, Role};
use rlrig_flow::{
    ActorSpec, FlowError, FlowProblem, LoadedFlow, TrainSettings, did_you_mean, settings_into,
};
use serde::de::DeserializeOwned;

use crate::model::{RoleModel, checker_model, diffuser_model, editor_model, policy_model};

/// What an actor kind is told when it is built.
#[derive(Clone, Debug)]
pub struct ActorContext {
    /// The actor's name in the flow.
    pub name: String,
    /// The role it plays.
    pub role: Role,
    /// Its kind.
    pub kind: String,
    /// Its settings: the `config` file's table with the inline `settings` over it.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Its device (`cpu`, `cuda:0`, …).
    pub device: String,
    /// Which replica this is (0-based).
    pub replica: usize,
    /// The flow file's directory, for relative paths in settings.
    pub base_dir: PathBuf,
    /// The node this replica is placed on (`None`: this process). A model is always built
    /// where it runs, so a kind's `build` sees `None`.
    pub node: Option<String>,
}

/// The error a kind's `check` or `build` returns: any error type (a kind's own typed error, an
/// I/O error, …), or a message (`String` and `&str` convert with `?` and `.into()`). The engine
/// reports it with the actor's name; it never inspects it.
pub type KindError = Box<dyn std::error::Error + Send + Sync>;

type Validate = Arc<dyn Fn(&ActorContext) -> Result<(), (String, String)> + Send + Sync>;
/// Builds a model for an actor.
pub(crate) type Build =
    Arc<dyn Fn(&ActorContext) -> Result<Box<dyn RoleModel>, KindError> + Send + Sync>;

struct Kind {
    role: Option<Role>,
    about: String,
    validate: Validate,
    build: Build,
}

/// What a learner kind finds wrong with a training flow, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerProblem {
    /// At a key of the trained actor's settings (`""`: the settings table).
    Settings(String, String),
    /// At a key of the flow's `[train]` table.
    Train(String, String),
    /// Elsewhere: a weights file that does not load, …
    Other(String),
}

/// Why [`Registry::learner`] could not build a flow's learner.
#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    /// The flow is refused: the trained actor's kind has no learner, or the learner rejects its
    /// settings or `[train]` (located in the flow).
    #[error("{0}")]
    Flow(FlowError),
    /// The learner could not be built (a weights file that does not load, …).
    #[error("{0}")]
    Build(String),
}

type CheckLearner =
    Arc<dyn Fn(&ActorContext, &TrainSettings) -> Result<(), LearnerProblem> + Send + Sync>;
type BuildLearner = Arc<
    dyn Fn(&ActorContext, &TrainSettings) -> Result<Box<dyn GrpoLearner>, LearnerProblem>
        + Send
        + Sync,
>;

struct Learner {
    check: CheckLearner,
    build: BuildLearner,
}

/// The actor kinds a flow may name, and the learners of those that can be trained. Users add
/// their own with the `add_*` methods and reuse rlrig's command line with them.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<String, Kind>,
    learners: BTreeMap<String, Learner>,
}

fn typed<C, T, F>(
    check: impl Fn(&C) -> Result<(), KindError> + Send + Sync + 'static,
    build: F,
    wrap: fn(Box<T>) -> Box<dyn RoleModel>,
) -> (Validate, Build)
where
    C: DeserializeOwned + 'static,
    T: ?Sized + 'static,
    F: Fn(C, &ActorContext) -> Result<Box<T>, KindError> + Send + Sync + 'static,
{
    let check = Arc::new(check);
    let validate: Validate = {
        let check = check.clone();
        Arc::new(move |ctx: &ActorContext| {
            let c: C = settings_into(&ctx.settings)?;
            check(&c).map_err(|e| (String::new(), e.to_string()))
        })
    };
    let build: Build = Arc::new(move |ctx: &ActorContext| {
        let c: C = settings_into(&ctx.settings)
            .map_err(|(k, m)| KindError::from(format!("settings.{k}: {m}")))?;
        check(&c)?;
        build(c, ctx).map(wrap)
    });
    (validate, build)
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn insert(
        &mut self,
        kind: &str,
        role: Option<Role>,
        about: &str,
        (validate, build): (Validate, Build),
    ) {
        self.kinds.insert(
            kind.to_string(),
            Kind {
                role,
                about: about.to_string(),
                validate,
                build,
            },
        );
    }

    /// Registers a diffuser kind: settings deserialise into `C`, `check` vets them (it runs at
    /// validation, before any model starts), `build` makes the diffuser. Both may fail with
    /// any error ([`KindError`]), so a kind's typed errors pass through `?` unchanged.
    pub fn add_diffuser<C: DeserializeOwned + 'static>(
        &mut self,
        kind: &str,
        about: &str,
        check: impl Fn(&C) -> Result<(), KindError> + Send + Sync + 'static,
        build: impl Fn(C, &ActorContext) -> Result<Box<dyn Diffuser>, KindError> + Send + Sync + 'static,
    ) {
        self.insert(
            kind,
            Some(Role::Diffuser),
            about,
            typed(check, build, diffuser_model),
        );
    }

    /// Registers a checker kind (see [`Registry::add_diffuser`]).
    pub fn add_checker<C: DeserializeOwned + 'static>(
        &mut self,
        kind: &str,
        about: &str,
        check: impl Fn(&C) -> Result<(), KindError> + Send + Sync + 'static,
        build: impl Fn(C, &ActorContext) -> Result<Box<dyn Checker>, KindError> + Send + Sync + 'static,
    ) {
        self.insert(
            kind,
            Some(Role::Checker),
            about,
            typed(check, build, checker_model),
        );
    }

    /// Registers a policy kind — the paper's *Actor* (see [`Registry::add_diffuser`]).
    pub fn add_policy<C: DeserializeOwned + 'static>(
        &mut self,
        kind: &str,
        about: &str,
        check: impl Fn(&C) -> Result<(), KindError> + Send + Sync + 'static,
        build: impl Fn(C, &ActorContext) -> Result<Box<dyn EditPolicy>, KindError>
        + Send
        + Sync
        + 'static,
    ) {
        self.insert(
            kind,
            Some(Role::Policy),
            about,
            typed(check, build, policy_model),
        );
    }

    /// Registers an editor kind (see [`Registry::add_diffuser`]).
    pub fn add_editor<C: DeserializeOwned + 'static>(
        &mut self,
        kind: &str,
        about: &str,
        check: impl Fn(&C) -> Result<(), KindError> + Send + Sync + 'static,
        build: impl Fn(C, &ActorContext) -> Result<Box<dyn Editor>, KindError> + Send + Sync + 'static,
    ) {
        self.insert(
            kind,
            Some(Role::Editor),
            about,
            typed(check, build, editor_model),
        );
    }

    /// Registers a kind that can play any model role (the flow's `role` decides); `build`
    /// returns the model for `ctx.role`.
    pub fn add_any_role<C: DeserializeOwned + 'static>(
        &mut self,
        kind: &str,
        about: &str,
        check: impl Fn(&C) -> Result<(), KindError> + Send + Sync + 'static,
        build: impl Fn(C, &ActorContext) -> Result<Box<dyn RoleModel>, KindError>
        + Send
        + Sync
        + 'static,
    ) {
        self.insert(kind, None, about, typed(check, build, |b| b));
    }

    /// Registers the GRPO learner of a kind, so that a flow's `[train]` may name an actor of
    /// that kind: the actor's settings deserialise into `C` (as for the kind itself), `check`
    /// vets them against `[train]` before anything runs, and `build` makes the learner from the
    /// actor's starting weights on `[train]`'s device. The trainer sees only the
    /// [`GrpoLearner`].
    pub fn add_learner<C: DeserializeOwned + 'static>(
        &mut self,
        kind: &str,
        check: impl Fn(&C, &TrainSettings) -> Result<(), LearnerProblem> + Send + Sync + 'static,
        build: impl Fn(C, &ActorContext, &TrainSettings) -> Result<Box<dyn GrpoLearner>, LearnerProblem>
        + Send
        + Sync
        + 'static,
    ) {
        let check = Arc::new(check);
        let settings = |ctx: &ActorContext| -> Result<C, LearnerProblem> {
            settings_into(&ctx.settings).map_err(|(k, m)| LearnerProblem::Settings(k, m))
        };
        let learner = Learner {
            check: {
                let check = check.clone();
                Arc::new(move |ctx: &ActorContext, t: &TrainSettings| check(&settings(ctx)?, t))
            },
            build: Arc::new(move |ctx: &ActorContext, t: &TrainSettings| {
                let c = settings(ctx)?;
                check(&c, t)?;
                build(c, ctx, t)
            }),
        };
        self.learners.insert(kind.to_string(), learner);
    }

    /// The kinds that have a learner.
    pub fn learner_kinds(&self) -> impl Iterator<Item = &str> {
        self.learners.keys().map(String::as_str)
    }

    /// Checks a training flow's `[train]` against the registry without building anything: the
    /// trained actor's kind has a learner, and the learner accepts the actor's settings and
    /// `[train]`. A flow without `[train]` passes.
    pub fn check_learner(&self, loaded: &LoadedFlow) -> Result<(), FlowError> {
        let Some((learner, ctx, t)) = self.trained(loaded)? else {
            return Ok(());
        };
        (learner.check)(&ctx, t).map_err(|p| located(loaded, &ctx.name, p))
    }

    /// The GRPO learner of a training flow's trained actor, built by its kind's learner (see
    /// [`Registry::add_learner`]) after [`Registry::check_learner`]'s checks.
    pub fn learner(&self, loaded: &LoadedFlow) -> Result<Box<dyn GrpoLearner>, LearnerError> {
        let Some((learner, ctx, t)) = self.trained(loaded).map_err(LearnerError::Flow)? else {
            return Err(LearnerError::Build("the flow has no [train] table".into()));
        };
        (learner.build)(&ctx, t).map_err(|p| match p {
            LearnerProblem::Other(m) => LearnerError::Build(m),
            p => LearnerError::Flow(located(loaded, &ctx.name, p)),
        })
    }

    /// The trained actor's learner and context, with `[train]`; `None` without `[train]`.
    fn trained<'a>(
        &self,
        loaded: &'a LoadedFlow,
    ) -> Result<Option<(&Learner, ActorContext, &'a TrainSettings)>, FlowError> {
        let Some(t) = &loaded.flow.train else {
            return Ok(None);
        };
        let Some(spec) = loaded.flow.actors.get(&t.actor) else {
            return Err(loaded.error_at(
                "train.actor",
                format!("{:?} names no actor of the flow", t.actor),
            ));
        };
        let Some(learner) = self.learners.get(&spec.kind) else {
            let names: Vec<String> = self.learner_kinds().map(|k| format!("{k:?}")).collect();
            let which = if names.is_empty() {
                "no registered kind has one".to_string()
            } else {
                format!("the kinds with a learner are {}", names.join(", "))
            };
            return Err(loaded.error_at(
                &format!("actors.{}.kind", t.actor),
                format!("kind {:?} cannot be trained: {which}", spec.kind),
            ));
        };
        let ctx = Registry::context(loaded, &t.actor, spec, 0)?;
        Ok(Some((learner, ctx, t)))
    }

    /// `(kind, role it plays or None for any, description)` of every registered kind.
    pub fn kinds(&self) -> impl Iterator<Item = (&str, Option<Role>, &str)> {
        self.kinds
            .iter()
            .map(|(k, v)| (k.as_str(), v.role, v.about.as_str()))
    }

    /// The context an actor of the flow is built with: settings from its `config` file with
    /// the inline `settings` over them.
    pub fn context(
        loaded: &LoadedFlow,
        name: &str,
        spec: &ActorSpec,
        replica: usize,
    ) -> Result<ActorContext, FlowProblem> {
        let mut settings = serde_json::Map::new();
        if let Some(cfg) = &spec.config {
            let path = loaded.base_dir().join(cfg);
            let key = format!("actors.{name}.config");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                loaded.problem_at(&key, format!("cannot read {}: {e}", path.display()))
            })?;
            let table: serde_json::Map<String, serde_json::Value> = toml_to_json(&text)
                .map_err(|e| loaded.problem_at(&key, format!("{}: {e}", path.display())))?;
            settings = table;
        }
        for (k, v) in &spec.settings {
            settings.insert(k.clone(), v.clone());
        }
        Ok(ActorContext {
            name: name.to_string(),
            role: spec.role,
            kind: spec.kind.clone(),
            settings,
            device: spec.device.clone(),
            replica,
            base_dir: loaded.base_dir().to_path_buf(),
            node: spec
                .node
                .as_ref()
                .and_then(|p| p.node_of(replica))
                .map(str::to_string),
        })
    }

    /// Checks every actor of a flow against the registry — the kind exists and plays the
    /// actor's role, its settings are valid — without building anything.
    pub fn check_flow(&self, loaded: &LoadedFlow) -> Result<(), FlowError> {
        let mut problems = Vec::new();
        for (name, spec) in &loaded.flow.actors {
            let key = format!("actors.{name}");
            let Some(kind) = self.kinds.get(&spec.kind) else {
                let mut m = format!(
                    "unknown kind {:?}; registered kinds: {}",
                    spec.kind,
                    self.kind_names()
                );
                if let Some(best) = did_you_mean(&spec.kind, self.kinds.keys().map(String::as_str))
                {
                    m.push_str(&format!("; did you mean {best:?}?"));
                }
                problems.push(loaded.problem_at(&format!("{key}.kind"), m));
                continue;
            };
            if let Some(role) = kind.role
                && role != spec.role
            {
                problems.push(loaded.problem_at(
                    &format!("{key}.role"),
                    format!(
                        "kind {:?} plays the {role} role, not {}",
                        spec.kind, spec.role
                    ),
                ));
                continue;
            }
            let ctx = match Registry::context(loaded, name, spec, 0) {
                Ok(ctx) => ctx,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            if let Err((k, m)) = (kind.validate)(&ctx) {
                let at = if k.is_empty() {
                    format!("{key}.settings")
                } else {
                    format!("{key}.settings.{k}")
                };
                problems.push(loaded.problem_at(&at, m));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(FlowError { problems })
        }
    }

    pub(crate) fn builder(&self, kind: &str) -> Option<Build> {
        self.kinds.get(kind).map(|k| k.build.clone())
    }

    fn kind_names(&self) -> String {
        self.kinds
            .keys()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A learner's problem at its place in the flow.
fn located(loaded: &LoadedFlow, actor: &str, p: LearnerProblem) -> FlowError {
    let (key, message) = match p {
        LearnerProblem::Settings(k, m) if k.is_empty() => (format!("actors.{actor}.settings"), m),
        LearnerProblem::Settings(k, m) => (format!("actors.{actor}.settings.{k}"), m),
        LearnerProblem::Train(k, m) if k.is_empty() => ("train".to_string(), m),
        LearnerProblem::Train(k, m) => (format!("train.{k}"), m),
        LearnerProblem::Other(m) => (format!("actors.{actor}"), m),
    };
    loaded.error_at(&key, message)
}

fn toml_to_json(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let value: serde_json::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    match value {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err("expected a table".into()),
    }
}
