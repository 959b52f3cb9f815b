//! VLM-as-a-Judge for rlrig: LAION-SG's extraction asked of any OpenAI-compatible
//! chat-completions endpoint (vLLM, llama.cpp's server, hosted APIs).
//!
//! [`JudgeClient::extract`] sends one image (a PNG as a `data:` URL) with LAION-SG's extraction
//! prompt: the candidate subjects/objects are the ground truth's items, the candidate predicates
//! its relations, and the answer is JSON `{"objects": [...], "relations": [[subject, predicate,
//! object], ...]}`. Answers are parsed robustly (code fences, prose around the JSON, duplicates,
//! names the prompt did not offer), and turned into an [`Extraction`] that LAION-SG's IoUs score
//! ([`rlrig_sg::score`]). Transport failures, non-2xx statuses, timeouts and unparseable
//! answers are retried with exponential backoff; after the last attempt the error says what
//! happened each time.
//!
//! [`JudgeChecker`] is the same client as a Checker role: items present and relations holding
//! as the judge extracted them, the score the share of requirements met.
//!
//! The API key comes from the environment variable named in the settings (`OPENAI_API_KEY` by
//! default); it is never logged.

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Image, ItemVerdict, RelationVerdict, RoleError, SceneGraph,
};
use rlrig_sg::{Extraction, Triple};
use serde::{Deserialize, Serialize};

/// Settings of the judge client (the `judge.checker` kind takes them too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSettings {
    /// Base URL of the API, e.g. `http://127.0.0.1:8000/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// The model name the server expects.
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// Timeout of one request, milliseconds.
    pub timeout_ms: u64,
    /// Attempts per image before giving up.
    pub max_attempts: u32,
    /// Wait before the first retry, milliseconds; doubled after each.
    pub backoff_ms: u64,
    /// Sampling temperature asked of the model.
    pub temperature: f64,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        JudgeSettings {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "judge".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_ms: 60_000,
            max_attempts: 3,
            backoff_ms: 500,
            temperature: 0.0,
        }
    }
}

impl JudgeSettings {
    /// Checks the values.
    pub fn check(&self) -> Result<(), String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "`base_url` {:?} must start with http:// or https://",
                self.base_url
            ));
        }
        if self.max_attempts == 0 {
            return Err("`max_attempts` must be at least 1".into());
        }
        if self.model.is_empty() {
            return Err("`model` must name the server's model".into());
        }
        Ok(())
    }
}

/// Why a judgement failed.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// Every attempt failed; each attempt's reason, in order.
    #[error("the judge at {url} failed {} times: {}", attempts.len(), attempts.join("; "))]
    Exhausted {
        /// The endpoint.
        url: String,
        /// What went wrong, per attempt.
        attempts: Vec<String>,
    },
    /// The image could not be encoded.
    #[error("encoding the image: {0}")]
    Image(String),
}

/// The client.
pub struct JudgeClient {
    settings: JudgeSettings,
    agent: ureq::Agent,
    key: Option<String>,
}

/// The extraction prompt for one ground truth: LAION-SG's task with the ground truth's items
/// as the candidate entities and its relations' predicates as the candidate predicates.
pub fn extraction_prompt(truth: &SceneGraph) -> String {
    let entities: BTreeSet<String> = truth.entities().into_iter().collect();
    let predicates: BTreeSet<String> = truth.predicates().into_iter().collect();
    let list = |s: &BTreeSet<String>| {
        s.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Look at the image and extract its scene graph.\n\
         Candidate objects (use these exact strings): [{}].\n\
         Candidate predicates (use these exact strings): [{}].\n\
         List every candidate object that is visible in the image, and every relation \
         (subject, predicate, object) between visible candidate objects that holds in the image, \
         using only the candidate predicates.\n\
         Answer with JSON only, in this form: \
         {{\"objects\": [\"...\"], \"relations\": [[\"subject\", \"predicate\", \"object\"]]}}",
        list(&entities),
        list(&predicates)
    )
}

/// Reads a judge's answer: the first JSON object in it (inside code fences or prose), its
/// `objects` and `relations` (triples as `[s, p, o]` arrays or `{"subject", "predicate",
/// "object"}` objects), de-duplicated and restricted to what `truth` offered.
pub fn parse_answer(answer: &str, truth: &SceneGraph) -> Result<Extraction, String> {
    let value = first_json_object(answer)
        .ok_or_else(|| format!("no JSON object in the answer {:?}", clip(answer)))?;
    let strings = |v: &serde_json::Value| v.as_str().map(|s| s.trim().to_lowercase());
    let objects: Vec<String> = value
        .get("objects")
        .or_else(|| value.get("entities"))
        .and_then(|v| v.as_array())
        .ok_or_else(|| format!("the answer has no \"objects\" list: {}", clip(answer)))?
        .iter()
        .filter_map(strings)
        .collect();
    let mut triples = Vec::new();
    for r in value
        .get("relations")
        .and_then(|v| v.as_array())
        .map_or(&[][..], Vec::as_slice)
    {
        let t = match r {
            serde_json::Value::Array(a) if a.len() == 3 => {
                (strings(&a[0]), strings(&a[1]), strings(&a[2]))
            }
            serde_json::Value::Object(_) => (
                r.get("subject").and_then(strings),
                r.get("predicate")
                    .or_else(|| r.get("relation"))
                    .and_then(strings),
                r.get("object").and_then(strings),
            ),
            _ => (None, None, None),
        };
        if let (Some(subject), Some(predicate), Some(object)) = t {
            triples.push(Triple {
                subject,
                predicate,
                object,
            });
        }
    }
    let mut seen = BTreeSet::new();
    triples.retain(|t| seen.insert((t.subject.clone(), t.predicate.clone(), t.object.clone())));
    let entities: Vec<String> = objects
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let predicates: Vec<String> = triples
        .iter()
        .map(|t| t.predicate.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(Extraction {
        triples,
        entities,
        predicates,
    }
    .as_judged_against(truth))
}

fn clip(s: &str) -> String {
    let s: String = s.chars().take(160).collect();
    s.replace('\n', " ")
}

/// The first balanced `{…}` in `text` that parses as JSON.
fn first_json_object(text: &str) -> Option<serde_json::Value> {
    let bytes = text.as_bytes();
    for start in text.match_indices('{').map(|(i, _)| i) {
        let (mut depth, mut in_str, mut escaped) = (0i32, false, false);
        for (k, &b) in bytes[start..].iter().enumerate() {
            if in_str {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Ok(v) = serde_json::from_str(&text[start..=start + k]) {
                            return Some(v);
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    None
}

impl JudgeClient {
    /// A client; reads the API key from the environment now.
    pub fn new(settings: JudgeSettings) -> Result<Self, String> {
        settings.check()?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build();
        let key = std::env::var(&settings.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        Ok(JudgeClient {
            settings,
            agent,
            key,
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.settings.base_url.trim_end_matches('/')
        )
    }

    /// What the judge extracts from `image` given the ground truth's vocabulary.
    pub fn extract(&self, image: &Image, truth: &SceneGraph) -> Result<Extraction, JudgeError> {
        let png = image
            .to_png()
            .map_err(|e| JudgeError::Image(e.to_string()))?;
        let data_url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        let body = serde_json::json!({
            "model": self.settings.model,
            "temperature": self.settings.temperature,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": extraction_prompt(truth)},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }],
        });
        let url = self.url();
        let mut attempts = Vec::new();
        let mut wait = Duration::from_millis(self.settings.backoff_ms);
        for attempt in 1..=self.settings.max_attempts {
            match self.once(&url, &body).and_then(|a| parse_answer(&a, truth)) {
                Ok(x) => return Ok(x),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "judge request failed");
                    attempts.push(e);
                }
            }
            if attempt < self.settings.max_attempts {
                std::thread::sleep(wait);
                wait *= 2;
            }
        }
        Err(JudgeError::Exhausted { url, attempts })
    }

    fn once(&self, url: &str, body: &serde_json::Value) -> Result<String, String> {
        let mut req = self.agent.post(url).set("Content-Type", "application/json");
        if let Some(key) = &self.key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let resp = match req.send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(format!("HTTP {code}: {}", clip(&text)));
            }
            Err(e) => return Err(e.to_string()),
        };
        let v: serde_json::Value = resp
            .into_json()
            .map_err(|e| format!("the response is not JSON: {e}"))?;
        v.pointer("/choices/0/message/content")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no choices[0].message.content in {}", clip(&v.to_string())))
    }

    /// LAION-SG's three IoUs of one image, as this judge sees it.
    pub fn score(
        &self,
        image: &Image,
        truth: &SceneGraph,
    ) -> Result<rlrig_sg::IouScores, JudgeError> {
        Ok(rlrig_sg::score(truth, &self.extract(image, truth)?))
    }
}

/// The judge as a Checker: verdicts from what it extracted, the score the share of the prompt's
/// items and relations it found, a plain-words reflection.
pub struct JudgeChecker(JudgeClient);

impl JudgeChecker {
    /// A checker over a client.
    pub fn new(settings: JudgeSettings) -> Result<Self, String> {
        JudgeClient::new(settings).map(JudgeChecker)
    }
}

/// The report a judge's extraction gives for a prompt.
pub fn report(truth: &SceneGraph, found: &Extraction) -> CheckReport {
    let entities: BTreeSet<&String> = found.entities.iter().collect();
    let triples: BTreeSet<&Triple> = found.triples.iter().collect();
    let items: Vec<ItemVerdict> = truth
        .items
        .iter()
        .map(|it| {
            if entities.contains(&it.node_text()) {
                ItemVerdict::Present
            } else {
                ItemVerdict::Missing
            }
        })
        .collect();
    let truth_triples = truth.triples();
    let relations: Vec<RelationVerdict> = truth_triples
        .iter()
        .map(|t| {
            if triples.contains(t) {
                RelationVerdict::Holds
            } else if entities.contains(&t.subject) && entities.contains(&t.object) {
                RelationVerdict::Violated
            } else {
                RelationVerdict::CannotTell
            }
        })
        .collect();
    let total = items.len() + relations.len();
    let met = items.iter().filter(|v| **v == ItemVerdict::Present).count()
        + relations
            .iter()
            .filter(|v| **v == RelationVerdict::Holds)
            .count();
    let mut words = Vec::new();
    for (it, v) in truth.items.iter().zip(&items) {
        if *v == ItemVerdict::Missing {
            words.push(format!("the {} is missing.", it.node_text()));
        }
    }
    for (t, v) in truth_triples.iter().zip(&relations) {
        if *v == RelationVerdict::Violated {
            words.push(format!(
                "the {} is not {} the {}.",
                t.subject, t.predicate, t.object
            ));
        }
    }
    CheckReport::new(
        items,
        relations,
        if total == 0 {
            1.0
        } else {
            met as f64 / total as f64
        },
        if words.is_empty() {
            "all relations hold.".into()
        } else {
            words.join(" ")
        },
    )
    .with_graph(truth, found.as_judged_against(truth))
}

impl Checker for JudgeChecker {
    fn check(&mut self, batch: &[CheckRequest]) -> Result<Vec<CheckReport>, RoleError> {
        batch
            .iter()
            .map(|r| {
                self.0
                    .extract(&r.image, &r.prompt)
                    .map(|x| report(&r.prompt, &x))
                    .map_err(|e| RoleError(format!("judge.checker: {e}")))
            })
            .collect()
    }
}
