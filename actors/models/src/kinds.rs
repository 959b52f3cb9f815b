//! The neural kinds under their flow names, and the GRPO learners of the three that can be
//! trained: [`register`] adds them to the engine's registry.
//!
//! | kind | role | learner |
//! |---|---|---|
//! | `neural.diffuser` | diffuser | Flow-GRPO's [`FlowLearner`] (the RL-tuned generator) |
//! | `neural.editor` | editor | Flow-GRPO's [`FlowLearner`] (phase 2) |
//! | `neural.checker` | checker | — |
//! | `neural.policy` | policy | GRPO's [`Learner`] (phase 1) |

use rlrig_contract::GrpoLearner;
use rlrig_engine::{ActorContext, LearnerProblem, Registry};
use rlrig_flow::TrainSettings;

use crate::flow_grpo::{FlowLearner, FlowLearnerConfig};
use crate::grpo::{GrpoConfig, Learner, LearnerConfig, LossType};
use crate::vlm_policy::PolicyNet;
use crate::{
    CheckerSettings, NeuralChecker, NeuralDiffuser, NeuralEditor, NeuralPolicy, NeuralSettings,
    PolicySettings,
};

/// Registers `neural.diffuser`, `neural.editor`, `neural.checker` and `neural.policy`, and the
/// learners of `neural.policy` (phase 1), `neural.editor` (phase 2) and `neural.diffuser`.
pub fn register(r: &mut Registry) {
    r.add_diffuser(
        "neural.diffuser",
        "the trained text-to-image DiT (rectified flow, Euler sampler); `weights` names its safetensors file",
        |c: &NeuralSettings| Ok(c.check()?),
        |c, ctx| Ok(Box::new(NeuralDiffuser::new(&c, &ctx.device)?)),
    );
    r.add_editor(
        "neural.editor",
        "the trained image editor (DiT conditioned on the source image and the edit prompt)",
        |c: &EditorSettings| Ok(c.0.check()?),
        |c, ctx| Ok(Box::new(NeuralEditor::new(&c.0, &ctx.device)?)),
    );
    r.add_checker(
        "neural.checker",
        "the trained Checker VLM: verdicts per prompt item and relation, score and reflection; `weights` (default weights/checker.safetensors)",
        |c: &CheckerSettings| Ok(c.check()?),
        |c, ctx| Ok(Box::new(NeuralChecker::new(&c, &ctx.device)?)),
    );
    r.add_policy(
        "neural.policy",
        "the trained Policy VLM (the paper's Actor): writes the edit prompt token by token; `weights`, `greedy`, `temperature`, `top_k`, `max_tokens`",
        |c: &PolicySettings| Ok(c.check()?),
        |c, ctx| Ok(Box::new(NeuralPolicy::new(&c, &ctx.device)?)),
    );
    r.add_learner("neural.policy", check_policy_learner, policy_learner);
    r.add_learner(
        "neural.editor",
        |_: &EditorSettings, _| Ok(()),
        |s: EditorSettings, _, t| flow_learner(&s.0, true, t),
    );
    r.add_learner(
        "neural.diffuser",
        |_: &NeuralSettings, _| Ok(()),
        |s: NeuralSettings, _, t| flow_learner(&s, false, t),
    );
}

/// The neural editor's settings: the diffuser's, with its own default weights file.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct EditorSettings(#[serde(with = "editor_defaults")] NeuralSettings);

mod editor_defaults {
    use serde::{Deserialize, Deserializer};

    use crate::NeuralSettings;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NeuralSettings, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Partial {
            weights: Option<std::path::PathBuf>,
            steps: Option<usize>,
            guidance: Option<f64>,
            explore_steps: Option<usize>,
            noise_scale: Option<f64>,
            sde_window: Option<usize>,
        }
        let p = Partial::deserialize(d)?;
        let base = NeuralSettings::with_weights("weights/editor.safetensors");
        Ok(NeuralSettings {
            weights: p.weights.unwrap_or(base.weights),
            steps: p.steps.unwrap_or(base.steps),
            guidance: p.guidance.unwrap_or(base.guidance),
            explore_steps: p.explore_steps.unwrap_or(base.explore_steps),
            noise_scale: p.noise_scale.unwrap_or(base.noise_scale),
            sde_window: p.sde_window,
        })
    }
}

/// The trained Policy must sample from its whole distribution at `[train]`'s temperature: the
/// learner's log-probs are of the full softmax at the temperature they were sampled at.
fn check_policy_learner(s: &PolicySettings, t: &TrainSettings) -> Result<(), LearnerProblem> {
    if s.greedy {
        return Err(LearnerProblem::Settings(
            String::new(),
            "the trained policy must sample: set `greedy = false`".into(),
        ));
    }
    if s.top_k > 0 {
        return Err(LearnerProblem::Settings(
            "top_k".into(),
            format!(
                "{}: the trained policy must sample from its whole distribution (`top_k = 0`): the learner's log-probs are of the full softmax, and a truncated sampler would bias the gradient",
                s.top_k
            ),
        ));
    }
    if (s.temperature - t.temperature).abs() > 1e-12 {
        return Err(LearnerProblem::Train(
            "temperature".into(),
            format!(
                "{} differs from the policy's sampling temperature {}: the log-probs must be taken at the temperature they were sampled at",
                t.temperature, s.temperature
            ),
        ));
    }
    Ok(())
}

/// `[train]`'s device, with autodiff.
pub fn learner_device(t: &TrainSettings) -> Result<burn::tensor::Device, LearnerProblem> {
    let device = crate::device::select(&t.device)
        .map_err(|e| LearnerProblem::Train("device".into(), e.to_string()))?;
    Ok(device.autodiff())
}

/// GRPO's settings from `[train]`.
pub fn grpo_config(t: &TrainSettings) -> GrpoConfig {
    let loss_type = match t.loss_type.as_str() {
        "sequence_mean" => LossType::SequenceMean,
        _ => LossType::TokenMean,
    };
    GrpoConfig {
        num_generations: t.num_generations as usize,
        beta: t.beta,
        epsilon: t.epsilon,
        epsilon_high: t.epsilon_high,
        loss_type,
        scale_rewards: t.scale_rewards,
    }
}

/// Phase 1: the Policy's GRPO learner from its starting weights.
fn policy_learner(
    s: PolicySettings,
    _: &ActorContext,
    t: &TrainSettings,
) -> Result<Box<dyn GrpoLearner>, LearnerProblem> {
    let device = learner_device(t)?;
    let policy: PolicyNet = crate::weights::load_model(&s.weights, &device)
        .map_err(|e| LearnerProblem::Other(e.to_string()))?;
    Ok(Box::new(Learner::new(
        policy,
        LearnerConfig {
            grpo: grpo_config(t),
            lr: t.learning_rate,
            max_grad_norm: t.max_grad_norm as f32,
            temperature: t.temperature,
        },
    )))
}

/// The Flow-GRPO learner of the Editor (phase 2, `editor`) or the Diffuser from its starting
/// weights.
fn flow_learner(
    s: &NeuralSettings,
    editor: bool,
    t: &TrainSettings,
) -> Result<Box<dyn GrpoLearner>, LearnerProblem> {
    let device = learner_device(t)?;
    let weights = &s.weights;
    let model =
        crate::weights::load(weights, &device).map_err(|e| LearnerProblem::Other(e.to_string()))?;
    if (model.config().cond_channels() > 0) != editor {
        let (holds, wants) = if editor {
            ("a diffuser", "an editor")
        } else {
            ("an editor", "a diffuser")
        };
        return Err(LearnerProblem::Settings(
            "weights".into(),
            format!("{} holds {holds}, not {wants}", weights.display()),
        ));
    }
    Ok(Box::new(FlowLearner::new(
        model,
        FlowLearnerConfig {
            grpo: grpo_config(t),
            lr: t.learning_rate,
            max_grad_norm: t.max_grad_norm as f32,
            ..FlowLearnerConfig::default()
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: serde_json::Value) -> Result<EditorSettings, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn the_editor_defaults_to_its_own_weights_and_refuses_unknown_keys() {
        let s = settings(serde_json::json!({ "steps": 4 })).unwrap().0;
        assert_eq!(
            s.weights,
            std::path::Path::new("weights/editor.safetensors")
        );
        assert_eq!(s.steps, 4);
        assert_eq!(
            s.explore_steps,
            NeuralSettings::with_weights("x").explore_steps
        );
        assert!(settings(serde_json::json!({ "step": 4 })).is_err());
    }

    #[test]
    fn the_trained_policy_must_sample_its_full_distribution_at_the_train_temperature() {
        let t = TrainSettings {
            temperature: 1.0,
            ..serde_json::from_value(serde_json::json!({ "actor": "policy", "steps": 1 })).unwrap()
        };
        let s = PolicySettings {
            greedy: false,
            temperature: 1.0,
            top_k: 0,
            ..PolicySettings::default()
        };
        assert_eq!(check_policy_learner(&s, &t), Ok(()));
        let at = |s: PolicySettings| match check_policy_learner(&s, &t) {
            Err(LearnerProblem::Settings(k, _)) => format!("settings.{k}"),
            Err(LearnerProblem::Train(k, _)) => format!("train.{k}"),
            other => format!("{other:?}"),
        };
        let greedy = PolicySettings {
            greedy: true,
            ..s.clone()
        };
        let top_k = PolicySettings {
            top_k: 5,
            ..s.clone()
        };
        let hot = PolicySettings {
            temperature: 2.0,
            ..s.clone()
        };
        assert_eq!(
            (at(greedy), at(top_k), at(hot)),
            (
                "settings.".to_string(),
                "settings.top_k".to_string(),
                "train.temperature".to_string()
            )
        );
    }
}
