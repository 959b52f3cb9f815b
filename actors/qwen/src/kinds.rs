//! Qwen2.5-VL as rlrig roles: `checker.qwen2-vl` asks LAION-SG's extraction question about the
//! image and reads the answer as `rlrig-judge` reads a judge's; `policy.qwen2-vl` (the paper's
//! Actor) writes the edit prompt from the prompt, the image and the Checker's reflection, with
//! its tokens and log-probabilities, and takes LoRA adapters from its learner.
//!
//! A request's seed seeds its sampler (ChaCha8), so a run is reproducible whatever the batch
//! it falls in. Prompts are templates with `{…}` placeholders.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{
    CheckReport, CheckRequest, Checker, EditPolicy, EditProposal, ProposeRequest, RoleError,
    SceneGraph, WeightsUpdate,
};
use rlrig_hf::lora::{self, LoraConfig, Targets};
use rlrig_models::grpo::LearnerConfig;
use serde::{Deserialize, Serialize};

use crate::QwenError;
use crate::grpo::QwenLearner;
use crate::model::{QwenVl, Sampling};

/// The Checker's default question: LAION-SG's extraction task over the prompt's candidates.
pub const CHECKER_TEMPLATE: &str = "{question}";

/// The Policy's default instruction.
pub const POLICY_TEMPLATE: &str = "This image was generated for the prompt: \"{prompt}\".\n\
     A checker looked at it and reflected: {reflection}\n\
     Write one short instruction that edits the image so that it matches the prompt. \
     Answer with the instruction only.";

/// What the Checker does with an answer it cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unreadable {
    /// The batch fails (the engine retries, then records the trajectory as failed).
    Error,
    /// The answer counts as seeing nothing: every item missing, score 0.
    NothingSeen,
}

/// `checker.qwen2-vl`'s settings. Paths are relative to the flow file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerSettings {
    /// A transformers Qwen2.5-VL directory.
    pub path: PathBuf,
    /// The question, with `{question}` standing for LAION-SG's extraction prompt.
    #[serde(default = "checker_template")]
    pub template: String,
    /// The longest answer, in tokens.
    #[serde(default = "checker_tokens")]
    pub max_new_tokens: usize,
    /// `error` or `nothing_seen`.
    #[serde(default = "error")]
    pub unreadable: Unreadable,
    /// A PEFT adapter directory to load.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
}

fn checker_template() -> String {
    CHECKER_TEMPLATE.into()
}
fn checker_tokens() -> usize {
    256
}
fn error() -> Unreadable {
    Unreadable::Error
}

/// `policy.qwen2-vl`'s settings. Paths are relative to the flow file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// A transformers Qwen2.5-VL directory.
    pub path: PathBuf,
    /// The instruction, with `{prompt}` and `{reflection}` placeholders.
    #[serde(default = "policy_template")]
    pub template: String,
    /// The longest edit prompt, in tokens.
    #[serde(default = "policy_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature (0: greedy; a trained policy must sample).
    #[serde(default = "temperature")]
    pub temperature: f64,
    /// Rank of the adapters the learner trains.
    #[serde(default = "lora_rank")]
    pub lora_rank: usize,
    /// `α` of the adapters (their term is scaled by `α / rank`).
    #[serde(default = "lora_alpha")]
    pub lora_alpha: f64,
    /// The projections that get adapters: PEFT's `target_modules`, module names or one
    /// regular expression over module paths. By default the decoder's attention and MLP
    /// projections.
    #[serde(default = "lora_targets")]
    pub lora_targets: Targets,
    /// A PEFT adapter directory to start from.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
}

fn policy_template() -> String {
    POLICY_TEMPLATE.into()
}
fn policy_tokens() -> usize {
    32
}
fn temperature() -> f64 {
    1.0
}
fn lora_rank() -> usize {
    8
}
fn lora_alpha() -> f64 {
    16.0
}
fn lora_targets() -> Targets {
    Targets::Regex(
        r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
            .into(),
    )
}

fn placeholders(template: &str, known: &[&str]) -> Result<(), QwenError> {
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let end = rest[i..].find('}').ok_or_else(|| {
            QwenError::Settings(format!("`template`: an unclosed `{{` in {template:?}"))
        })?;
        let name = &rest[i + 1..i + end];
        if !known.contains(&name) {
            return Err(QwenError::Settings(format!(
                "`template`: unknown placeholder {{{name}}} (known: {})",
                known
                    .iter()
                    .map(|k| format!("{{{k}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        rest = &rest[i + end + 1..];
    }
    Ok(())
}

impl CheckerSettings {
    /// Checks the settings (what `rlrig validate` can check without the model).
    pub fn check(&self) -> Result<(), QwenError> {
        if self.max_new_tokens == 0 {
            return Err(QwenError::Settings(
                "`max_new_tokens` must be at least 1".into(),
            ));
        }
        placeholders(&self.template, &["question"])
    }
}

impl PolicySettings {
    /// Checks the settings (what `rlrig validate` can check without the model).
    pub fn check(&self) -> Result<(), QwenError> {
        if self.max_new_tokens == 0 {
            return Err(QwenError::Settings(
                "`max_new_tokens` must be at least 1".into(),
            ));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(QwenError::Settings(format!(
                "`temperature` = {}: must be 0 (greedy) or positive",
                self.temperature
            )));
        }
        if self.lora_rank == 0 {
            return Err(QwenError::Settings("`lora_rank` must be at least 1".into()));
        }
        placeholders(&self.template, &["prompt", "reflection"])
    }

    /// The adapters' settings.
    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_rank,
            lora_alpha: self.lora_alpha,
            target_modules: self.lora_targets.clone(),
        }
    }

    /// The Policy's text for a prompt and a reflection.
    pub fn text(&self, prompt: &str, reflection: &str) -> String {
        fill(&self.template, prompt, reflection)
    }

    /// The GRPO learner of these settings' model on `device` (an autodiff device): fresh
    /// adapters of [`lora`](Self::lora), or the starting `adapter`.
    pub fn learner(
        &self,
        base: &Path,
        device: &Device,
        config: LearnerConfig,
    ) -> Result<QwenLearner, QwenError> {
        self.check()?;
        let model = QwenVl::from_dir(&base.join(&self.path), device)?;
        let template = self.template.clone();
        let adapter = self.adapter.as_ref().map(|d| base.join(d));
        QwenLearner::new(
            model.net,
            model.config,
            model.processor,
            Box::new(move |p, r| fill(&template, p, r)),
            self.lora(),
            adapter.as_deref(),
            config,
        )
    }
}

fn fill(template: &str, prompt: &str, reflection: &str) -> String {
    template
        .replace("{prompt}", prompt)
        .replace("{reflection}", reflection)
}

fn role_err(e: QwenError) -> RoleError {
    RoleError(e.to_string())
}

fn load(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<QwenVl, QwenError> {
    let mut model = QwenVl::from_dir(path, device)?;
    if let Some(dir) = adapter {
        lora::load_dir(&mut model.net, dir)?;
    }
    Ok(model)
}

/// `checker.qwen2-vl`.
pub struct QwenChecker {
    model: QwenVl,
    settings: CheckerSettings,
}

impl QwenChecker {
    /// Loads the model of `settings` (`base`: the flow file's directory) on `device`.
    pub fn new(
        settings: &CheckerSettings,
        base: &Path,
        device: &Device,
    ) -> Result<Self, QwenError> {
        settings.check()?;
        let adapter = settings.adapter.as_ref().map(|d| base.join(d));
        Ok(QwenChecker {
            model: load(&base.join(&settings.path), adapter.as_deref(), device)?,
            settings: settings.clone(),
        })
    }

    /// The model's answer about one image, in words.
    pub fn answer(&self, request: &CheckRequest) -> Result<String, QwenError> {
        let question = self.settings.template.replace(
            "{question}",
            &rlrig_judge::extraction_prompt(&request.prompt),
        );
        let prompt = self.model.prompt(Some(&request.image), &question)?;
        let stop = self.model.processor.stop_tokens(&self.model.config);
        let sampling = Sampling {
            temperature: 0.0,
            max_new_tokens: self.settings.max_new_tokens,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let g = self.model.net.generate(
            &self.model.config,
            &prompt,
            sampling,
            &stop,
            &mut rng,
            true,
        )?;
        self.model.processor.chat.decode(&g.tokens)
    }

    fn report(&self, truth: &SceneGraph, answer: &str) -> Result<CheckReport, QwenError> {
        match rlrig_judge::parse_answer(answer, truth) {
            Ok(found) => Ok(rlrig_judge::report(truth, &found)),
            Err(e) => match self.settings.unreadable {
                Unreadable::Error => Err(QwenError::Invalid(format!("checker.qwen2-vl: {e}"))),
                Unreadable::NothingSeen => {
                    let empty = rlrig_contract::sg::Extraction::default();
                    let mut r = rlrig_judge::report(truth, &empty);
                    r.reflection =
                        format!("(the checker's answer was unreadable) {}", r.reflection);
                    Ok(r)
                }
            },
        }
    }
}

impl Checker for QwenChecker {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        batch
            .iter()
            .map(|r| {
                let answer = self.answer(r)?;
                self.report(&r.prompt, &answer)
            })
            .collect::<Result<_, _>>()
            .map_err(role_err)
    }
}

/// `policy.qwen2-vl`.
pub struct QwenPolicy {
    model: QwenVl,
    settings: PolicySettings,
    version: u64,
}

impl QwenPolicy {
    /// Loads the model of `settings` (`base`: the flow file's directory) on `device`.
    pub fn new(settings: &PolicySettings, base: &Path, device: &Device) -> Result<Self, QwenError> {
        settings.check()?;
        let adapter = settings.adapter.as_ref().map(|d| base.join(d));
        Ok(QwenPolicy {
            model: load(&base.join(&settings.path), adapter.as_deref(), device)?,
            settings: settings.clone(),
            version: 0,
        })
    }

    fn propose_one(&self, r: &ProposeRequest) -> Result<EditProposal, QwenError> {
        let text = self.settings.text(&r.prompt.prompt(), &r.report.reflection);
        let prompt = self.model.prompt(Some(&r.image), &text)?;
        let stop = self.model.processor.stop_tokens(&self.model.config);
        let sampling = Sampling {
            temperature: self.settings.temperature,
            max_new_tokens: self.settings.max_new_tokens,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
        let g = self.model.net.generate(
            &self.model.config,
            &prompt,
            sampling,
            &stop,
            &mut rng,
            true,
        )?;
        Ok(EditProposal {
            edit_prompt: self
                .model
                .processor
                .chat
                .decode(&g.tokens)?
                .trim()
                .to_string(),
            token_ids: g.tokens,
            logprobs: g.logprobs,
            policy_version: self.version,
        })
    }
}

impl EditPolicy for QwenPolicy {
    fn propose(&mut self, batch: &[ProposeRequest]) -> Result<Vec<EditProposal>, RoleError> {
        batch
            .iter()
            .map(|r| self.propose_one(r))
            .collect::<Result<_, _>>()
            .map_err(role_err)
    }

    /// Takes the learner's adapters (the bytes of [`lora::to_bytes`]) and their version.
    fn update(&mut self, update: &WeightsUpdate) -> Result<(), RoleError> {
        let origin = PathBuf::from(format!("<adapters version {}>", update.version));
        lora::from_bytes(&mut self.model.net, &update.weights, None, &origin)
            .map_err(|e| RoleError(e.to_string()))?;
        self.version = update.version;
        Ok(())
    }
}
