//! The actor kinds rlrig ships, registered under their flow names.

use rlrig_baseline::{
    MistakenRenderer, MistakenRendererConfig, OracleChecker, OracleCheckerConfig, RulePolicy,
    RulePolicyConfig, SceneEditor, SceneEditorConfig,
};
use rlrig_engine::{LearnerProblem, Registry, any_role_model};
use rlrig_external::{ExternalActor, ExternalConfig};
use rlrig_qwen::kinds::{CheckerSettings, PolicySettings, QwenChecker, QwenPolicy};
use rlrig_sd::kinds::{Ip2pEditor, Sd3Diffuser, Sd3Settings, SdDiffuser, SdSettings};

/// A registry with every built-in kind:
///
/// | kind | role | what |
/// |---|---|---|
/// | `baseline.renderer` | diffuser | baseline: draws the prompt exactly, then makes a spatial mistake at a set rate |
/// | `oracle.checker` | checker | baseline/test instrument: the world's oracle as a checker (never a training reward) |
/// | `rules.policy` | policy | baseline: the paper's Actor as fixed rules |
/// | `baseline.editor` | editor | baseline: applies the edit to the parsed scene and redraws, with context loss |
/// | `neural.diffuser` | diffuser | the trained DiT (`weights`, default `weights/diffuser.safetensors`, relative to the working directory) |
/// | `neural.editor` | editor | the trained editor DiT (`weights`, default `weights/editor.safetensors`) |
/// | `neural.checker` | checker | the trained Checker VLM (`weights`, default `weights/checker.safetensors`) |
/// | `neural.policy` | policy | the trained Policy VLM, the paper's Actor (`weights`, default `weights/policy.safetensors`; decoding settings) |
/// | `judge.checker` | checker | a VLM judge over an OpenAI-compatible endpoint (`base_url`, `model`, the key from `api_key_env`) |
/// | `diffuser.sd` | diffuser | Stable Diffusion 1.x / 2.x from a diffusers directory |
/// | `diffuser.sd3` | diffuser | Stable Diffusion 3 / 3.5 from a diffusers directory; trains with Flow-GRPO through LoRA |
/// | `editor.instruct-pix2pix` | editor | InstructPix2Pix from a diffusers directory |
/// | `checker.qwen2-vl` | checker | Qwen2.5-VL from a transformers directory, asked LAION-SG's extraction question |
/// | `policy.qwen2-vl` | policy | Qwen2.5-VL from a transformers directory writing edit prompts; trains with GRPO through LoRA |
/// | `external` | any | a child process speaking rlrig's line-delimited JSON protocol (docs/external-protocol.md) |
///
/// The `neural.*` kinds, and the learners that train `neural.policy` and `neural.editor`, come
/// from the `rlrig-models` crate, which registers them itself.
pub fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    rlrig_models::register(&mut r);
    r.add_diffuser(
        "baseline.renderer",
        "baseline: draws the prompt with the world's solver, then makes a spatial mistake at `mistake_rate`",
        |c: &MistakenRendererConfig| Ok(MistakenRenderer::new(c.clone()).map(drop)?),
        |c, _| Ok(Box::new(MistakenRenderer::new(c)?)),
    );
    r.add_checker(
        "oracle.checker",
        "baseline and test instrument: the world's oracle parser as a checker; never a training reward",
        |c: &OracleCheckerConfig| Ok(OracleChecker::new(c.clone()).map(drop)?),
        |c, _| Ok(Box::new(OracleChecker::new(c)?)),
    );
    r.add_policy(
        "rules.policy",
        "baseline: the paper's Actor as fixed rules (add the first missing item, else move the first violated relation)",
        |c: &RulePolicyConfig| Ok(RulePolicy::new(c.clone()).map(drop)?),
        |c, _| Ok(Box::new(RulePolicy::new(c)?)),
    );
    r.add_editor(
        "baseline.editor",
        "baseline: applies the edit prompt to the oracle-parsed scene and redraws, losing context at `context_loss`",
        |c: &SceneEditorConfig| Ok(SceneEditor::new(c.clone()).map(drop)?),
        |c, _| Ok(Box::new(SceneEditor::new(c)?)),
    );
    r.add_diffuser(
        "diffuser.sd",
        "Stable Diffusion (1.x / 2.x) from a diffusers directory: `path`, `steps`, `guidance`, `negative_prompt`, `variant`",
        |c: &SdSettings| Ok(c.check()?),
        |c, ctx| {
            let device = rlrig_models::device::select(&ctx.device)?;
            Ok(Box::new(SdDiffuser::new(&c, &ctx.base_dir, &device)?))
        },
    );
    r.add_diffuser(
        "diffuser.sd3",
        "Stable Diffusion 3 / 3.5 (MMDiT, two CLIPs, T5) from a diffusers directory; Flow-GRPO through LoRA: `path`, `steps`, `guidance`, `negative_prompt`, `max_sequence_length`, `t5`, `size`, `explore_steps`, `sde_window`, `noise_scale`, `lora_rank`, `lora_alpha`, `lora_targets`, `adapter`",
        |c: &Sd3Settings| Ok(c.check()?),
        |c, ctx| {
            let device = rlrig_models::device::select(&ctx.device)?;
            Ok(Box::new(Sd3Diffuser::new(&c, &ctx.base_dir, &device)?))
        },
    );
    r.add_learner(
        "diffuser.sd3",
        |_: &Sd3Settings, _| Ok(()),
        |c, ctx, t| {
            let device = rlrig_models::kinds::learner_device(t)?;
            let config = rlrig_models::flow_grpo::FlowLearnerConfig {
                grpo: rlrig_models::kinds::grpo_config(t),
                lr: t.learning_rate,
                max_grad_norm: t.max_grad_norm as f32,
                ..Default::default()
            };
            let learner = c
                .learner(&ctx.base_dir, &device, config)
                .map_err(|e| LearnerProblem::Other(e.to_string()))?;
            Ok(Box::new(learner))
        },
    );
    r.add_editor(
        "editor.instruct-pix2pix",
        "InstructPix2Pix from a diffusers directory: `path` (or `unet`, `scheduler` beside it), `steps`, `guidance`, `image_guidance`",
        |c: &SdSettings| Ok(c.check()?),
        |c, ctx| {
            let device = rlrig_models::device::select(&ctx.device)?;
            Ok(Box::new(Ip2pEditor::new(&c, &ctx.base_dir, &device)?))
        },
    );
    r.add_checker(
        "checker.qwen2-vl",
        "Qwen2.5-VL from a transformers directory, asked LAION-SG's extraction question about the image: `path`, `template` ({question}), `max_new_tokens`, `unreadable` (error | nothing_seen), `adapter`",
        |c: &CheckerSettings| Ok(c.check()?),
        |c, ctx| {
            let device = rlrig_models::device::select(&ctx.device)?;
            Ok(Box::new(QwenChecker::new(&c, &ctx.base_dir, &device)?))
        },
    );
    r.add_policy(
        "policy.qwen2-vl",
        "Qwen2.5-VL from a transformers directory as the paper's Actor; GRPO through LoRA: `path`, `template` ({prompt}, {reflection}), `max_new_tokens`, `temperature`, `lora_rank`, `lora_alpha`, `lora_targets`, `adapter`",
        |c: &PolicySettings| Ok(c.check()?),
        |c, ctx| {
            let device = rlrig_models::device::select(&ctx.device)?;
            Ok(Box::new(QwenPolicy::new(&c, &ctx.base_dir, &device)?))
        },
    );
    r.add_learner(
        "policy.qwen2-vl",
        |c: &PolicySettings, t| {
            if c.temperature <= 0.0 {
                return Err(LearnerProblem::Settings(
                    "temperature".into(),
                    "the trained policy must sample: set `temperature` above 0".into(),
                ));
            }
            if (c.temperature - t.temperature).abs() > 1e-12 {
                return Err(LearnerProblem::Train(
                    "temperature".into(),
                    format!(
                        "{} differs from the policy's sampling temperature {}: the log-probs must be taken at the temperature they were sampled at",
                        t.temperature, c.temperature
                    ),
                ));
            }
            Ok(())
        },
        |c, ctx, t| {
            let device = rlrig_models::kinds::learner_device(t)?;
            let config = rlrig_models::grpo::LearnerConfig {
                grpo: rlrig_models::kinds::grpo_config(t),
                lr: t.learning_rate,
                max_grad_norm: t.max_grad_norm as f32,
                temperature: t.temperature,
            };
            let learner = c
                .learner(&ctx.base_dir, &device, config)
                .map_err(|e| LearnerProblem::Other(e.to_string()))?;
            Ok(Box::new(learner))
        },
    );
    r.add_checker(
        "judge.checker",
        "a VLM judge over an OpenAI-compatible chat-completions endpoint (LAION-SG's extraction): `base_url`, `model`, `api_key_env`, `timeout_ms`, `max_attempts`, `backoff_ms`",
        |c: &rlrig_judge::JudgeSettings| Ok(c.check()?),
        |c, _| Ok(Box::new(rlrig_judge::JudgeChecker::new(c)?)),
    );
    r.add_any_role(
        "external",
        "any role, played by a child process speaking rlrig's line-delimited JSON protocol over stdio",
        |c: &ExternalConfig| if c.command.is_empty() { Err("`command` must name a program".into()) } else { Ok(()) },
        |c, ctx| {
            // Paths in a flow are relative to the flow file: the program (when it is a path)
            // and `cwd`; the process still runs in rlrig's working directory by default.
            let mut c = c.relative_to(&ctx.base_dir);
            if c.cwd.is_none() {
                c.cwd = Some(std::env::current_dir()?);
            }
            let actor = ExternalActor::spawn(&ctx.name, ctx.role, &c)?;
            any_role_model(ctx.role, actor).ok_or_else(|| format!("the {} role cannot be external", ctx.role).into())
        },
    );
    r
}
