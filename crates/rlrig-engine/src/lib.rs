//! rlrig's dataflow engine.
//!
//! Every actor of a flow runs as ractor actors: a **router** per flow actor supervises its
//! **replicas**; each replica owns one model (a role implementation from the [`Registry`]),
//! gathers requests into batches (up to `batch`, or until `max_wait_ms`), and runs each batch
//! on a blocking thread, never on tokio's workers. A replica whose batch fails or panics is
//! restarted by its router, and the requests it held are retried up to `max_attempts`; after
//! that the trajectory is recorded as failed with the error.
//!
//! [`Engine::run`] drives prompts through the flow's cycle as trajectories, at most
//! `max_in_flight` at a time (credits), so that queues and memory stay bounded whatever the
//! relative speed of the stages. Each trajectory waits for one answer at a time, so no actor
//! ever has more than `max_in_flight` requests outstanding.
//!
//! The engine knows no model: the role traits and messages come from `rlrig-contract`, the
//! implementations from the registry. Queue and delivery semantics: `docs/engine.md`.

#![warn(missing_docs)]

mod cluster;
mod engine;
mod messages;
mod model;
mod node;
mod registry;
mod router;
mod tls;
pub mod wire;
mod worker;

pub use engine::{
    Engine, EngineError, EngineStats, NotRunning, RunSummary, StopSignal, WeightsUpdater, mix_seed,
};
pub use model::{
    Request, Response, RoleModel, any_role_model, checker_model, diffuser_model, editor_model,
    policy_model,
};
pub use node::{Node, NodeError, NodeOptions, TLS_HANDSHAKE_TIMEOUT};
pub use registry::{ActorContext, KindError, LearnerError, LearnerProblem, Registry};
pub use tls::{Tls, TlsError, TlsPaths};
