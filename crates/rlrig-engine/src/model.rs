//! One object-safe interface over the four role traits, so that the engine's actors are
//! role-agnostic.

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Diffuser, EditPolicy, EditProposal, EditRequest, Editor,
    GenerateRequest, Image, ProposeRequest, Role, RoleError, SampledImage, WeightsUpdate,
};
use serde::{Deserialize, Serialize};

/// A request to any role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// To a diffuser.
    Generate(GenerateRequest),
    /// To a checker.
    Check(CheckRequest),
    /// To a policy.
    Propose(ProposeRequest),
    /// To an editor.
    Edit(EditRequest),
}

/// An answer from any role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// From a diffuser or editor.
    Image(Image),
    /// From a checker.
    Report(CheckReport),
    /// From a policy.
    Proposal(EditProposal),
    /// From a diffuser or editor asked to explore (Flow-GRPO): the image with its denoising
    /// chain.
    Sampled(SampledImage),
}

impl Request {
    /// The role that answers it.
    pub fn role(&self) -> Role {
        match self {
            Request::Generate(_) => Role::Diffuser,
            Request::Check(_) => Role::Checker,
            Request::Propose(_) => Role::Policy,
            Request::Edit(_) => Role::Editor,
        }
    }
}

/// A role implementation behind one interface: a batch of requests in, one response each out.
pub trait RoleModel: Send {
    /// Answers a batch, in order.
    fn call(&mut self, batch: Vec<Request>) -> Result<Vec<Response>, RoleError>;

    /// Takes new weights from the trainer (policies, editors and diffusers; checkers refuse).
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        Err(RoleError(format!(
            "only a policy, an editor or a diffuser takes new weights (version {})",
            update.version
        )))
    }
}

fn wrong(expected: Role, got: &Request) -> RoleError {
    RoleError(format!("a {expected} was sent a {} request", got.role()))
}

macro_rules! adapter {
    ($name:ident, $tr:ident, $role:expr, $variant:ident, $method:ident, $resp:ident $(, $update:ident)?) => {
        struct $name(Box<dyn $tr>);
        impl RoleModel for $name {
            fn call(&mut self, batch: Vec<Request>) -> Result<Vec<Response>, RoleError> {
                let reqs = batch
                    .into_iter()
                    .map(|r| match r {
                        Request::$variant(x) => Ok(x),
                        other => Err(wrong($role, &other)),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(self
                    .0
                    .$method(&reqs)?
                    .into_iter()
                    .map(Response::$resp)
                    .collect())
            }
            $(
                fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
                    self.0.$update(update)
                }
            )?
        }
    };
}

adapter!(CheckerModel, Checker, Role::Checker, Check, check, Report);
adapter!(
    PolicyModel,
    EditPolicy,
    Role::Policy,
    Propose,
    propose,
    Proposal,
    update
);

/// Answers a batch of an image role's requests to `model`: plain ones with `plain`, exploring
/// ones (Flow-GRPO) with `explore`; a batch that mixes both is answered in its order.
fn plain_or_explore<M: ?Sized, R: Clone>(
    model: &mut M,
    reqs: Vec<R>,
    is_explore: fn(&R) -> bool,
    plain: fn(&mut M, &[R]) -> Result<Vec<Image>, RoleError>,
    explore: fn(&mut M, &[R]) -> Result<Vec<SampledImage>, RoleError>,
) -> Result<Vec<Response>, RoleError> {
    // The usual batches are all of one kind: no copies of their images.
    if reqs.iter().all(|r| !is_explore(r)) {
        return Ok(plain(model, &reqs)?
            .into_iter()
            .map(Response::Image)
            .collect());
    }
    if reqs.iter().all(is_explore) {
        return Ok(explore(model, &reqs)?
            .into_iter()
            .map(Response::Sampled)
            .collect());
    }
    let (explored, plained): (Vec<R>, Vec<R>) = reqs.iter().cloned().partition(is_explore);
    let mut sampled = explore(model, &explored)?.into_iter();
    let mut images = plain(model, &plained)?.into_iter();
    let short = || RoleError("the model answered fewer images than it was asked".into());
    reqs.iter()
        .map(|r| {
            Ok(if is_explore(r) {
                Response::Sampled(sampled.next().ok_or_else(short)?)
            } else {
                Response::Image(images.next().ok_or_else(short)?)
            })
        })
        .collect()
}

/// A diffuser: plain requests go to [`Diffuser::generate`], exploring ones to
/// [`Diffuser::generate_explore`].
struct DiffuserModel(Box<dyn Diffuser>);

impl RoleModel for DiffuserModel {
    fn call(&mut self, batch: Vec<Request>) -> Result<Vec<Response>, RoleError> {
        let reqs = batch
            .into_iter()
            .map(|r| match r {
                Request::Generate(x) => Ok(x),
                other => Err(wrong(Role::Diffuser, &other)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        plain_or_explore(
            &mut *self.0,
            reqs,
            |r| r.explore,
            |m, b| m.generate(b),
            |m, b| m.generate_explore(b),
        )
    }

    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.0.update(update)
    }
}

/// An editor: plain requests go to [`Editor::edit`], exploring ones (phase 2) to
/// [`Editor::edit_explore`].
struct EditorModel(Box<dyn Editor>);

impl RoleModel for EditorModel {
    fn call(&mut self, batch: Vec<Request>) -> Result<Vec<Response>, RoleError> {
        let reqs = batch
            .into_iter()
            .map(|r| match r {
                Request::Edit(x) => Ok(x),
                other => Err(wrong(Role::Editor, &other)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        plain_or_explore(
            &mut *self.0,
            reqs,
            |r| r.explore,
            |m, b| m.edit(b),
            |m, b| m.edit_explore(b),
        )
    }

    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        self.0.update(update)
    }
}

/// A diffuser as a [`RoleModel`].
pub fn diffuser_model(d: Box<dyn Diffuser>) -> Box<dyn RoleModel> {
    Box::new(DiffuserModel(d))
}

/// A checker as a [`RoleModel`].
pub fn checker_model(c: Box<dyn Checker>) -> Box<dyn RoleModel> {
    Box::new(CheckerModel(c))
}

/// A policy as a [`RoleModel`].
pub fn policy_model(p: Box<dyn EditPolicy>) -> Box<dyn RoleModel> {
    Box::new(PolicyModel(p))
}

/// An editor as a [`RoleModel`].
pub fn editor_model(e: Box<dyn Editor>) -> Box<dyn RoleModel> {
    Box::new(EditorModel(e))
}

/// Something that can play every role (such as an external process) as a [`RoleModel`] for
/// `role`. A trainer is not a model role: `None`.
pub fn any_role_model<T>(role: Role, t: T) -> Option<Box<dyn RoleModel>>
where
    T: Diffuser + Checker + EditPolicy + Editor + 'static,
{
    Some(match role {
        Role::Diffuser => diffuser_model(Box::new(t)),
        Role::Checker => checker_model(Box::new(t)),
        Role::Policy => policy_model(Box::new(t)),
        Role::Editor => editor_model(Box::new(t)),
        Role::Trainer => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlrig_contract::DenoisingChain;

    /// Plain edits answer a 1-pixel image of the seed; exploring ones a chain whose one
    /// log-prob is the seed.
    struct Stamp;

    impl Editor for Stamp {
        fn edit(&mut self, batch: &[EditRequest]) -> Result<Vec<Image>, RoleError> {
            assert!(batch.iter().all(|r| !r.explore));
            Ok(batch
                .iter()
                .map(|r| Image::filled(1, 1, [r.seed as u8, 0, 0]))
                .collect())
        }

        fn edit_explore(&mut self, batch: &[EditRequest]) -> Result<Vec<SampledImage>, RoleError> {
            assert!(batch.iter().all(|r| r.explore));
            Ok(batch
                .iter()
                .map(|r| SampledImage {
                    image: Image::filled(1, 1, [r.seed as u8, 0, 0]),
                    chain: DenoisingChain::new(
                        0,
                        0.7,
                        1.0,
                        [1, 1, 1],
                        &[0.0, 0.0],
                        vec![r.seed as f32],
                    )
                    .unwrap(),
                })
                .collect())
        }
    }

    impl Diffuser for Stamp {
        fn generate(&mut self, batch: &[GenerateRequest]) -> Result<Vec<Image>, RoleError> {
            assert!(batch.iter().all(|r| !r.explore));
            Ok(batch
                .iter()
                .map(|r| Image::filled(1, 1, [r.seed as u8, 0, 0]))
                .collect())
        }

        fn generate_explore(
            &mut self,
            batch: &[GenerateRequest],
        ) -> Result<Vec<SampledImage>, RoleError> {
            assert!(batch.iter().all(|r| r.explore));
            Ok(batch
                .iter()
                .map(|r| SampledImage {
                    image: Image::filled(1, 1, [r.seed as u8, 0, 0]),
                    chain: DenoisingChain::new(
                        0,
                        0.7,
                        1.0,
                        [1, 1, 1],
                        &[0.0, 0.0],
                        vec![r.seed as f32],
                    )
                    .unwrap(),
                })
                .collect())
        }
    }

    fn seeds_answered(out: &[Response]) -> Vec<(u64, bool)> {
        out.iter()
            .map(|r| match r {
                Response::Image(i) => (u64::from(i.get(0, 0)[0]), false),
                Response::Sampled(s) => (s.chain.log_probs[0] as u64, true),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_mixed_diffuser_batch_is_answered_in_order() {
        let mut m = diffuser_model(Box::new(Stamp));
        let batch: Vec<Request> = [(1, true), (2, false), (3, true)]
            .iter()
            .map(|&(seed, explore)| {
                Request::Generate(GenerateRequest {
                    prompt: rlrig_contract::sg::read_jsonl(
                        r#"{"items":[{"item_id":0,"label":"circle","attributes":["red"]}]}"#,
                        "t",
                    )
                    .unwrap()
                    .remove(0),
                    seed,
                    explore,
                })
            })
            .collect();
        let out = m.call(batch).unwrap();
        assert_eq!(seeds_answered(&out), vec![(1, true), (2, false), (3, true)]);
    }

    #[test]
    fn a_mixed_editor_batch_is_answered_in_order() {
        let mut m = editor_model(Box::new(Stamp));
        let batch: Vec<Request> = [(1, false), (2, true), (3, false), (4, true)]
            .iter()
            .map(|&(seed, explore)| {
                Request::Edit(EditRequest {
                    image: Image::filled(1, 1, [0, 0, 0]),
                    edit_prompt: "remove the red circle".into(),
                    seed,
                    explore,
                })
            })
            .collect();
        let out = m.call(batch).unwrap();
        assert_eq!(
            seeds_answered(&out),
            vec![(1, false), (2, true), (3, false), (4, true)]
        );
    }
}
