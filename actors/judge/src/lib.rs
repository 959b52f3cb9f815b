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
//! happened each time (a timeout names its limit, `timeout_ms`).
//!
//! [`JudgeChecker`] is the same client as a Checker role: items present and relations holding
//! as the judge extracted them, the score the share of requirements met. `max_attempts` bounds
//! the requests per image in all: when the engine retries a judgement that failed (its
//! `engine.max_attempts`), the checker remembers the requests already spent on that image and
//! its batch-mates' answers, so the engine's retries add no request beyond `max_attempts`.
//!
//! The API key comes from the environment variable named in the settings (`OPENAI_API_KEY` by
//! default); it is never logged. Without it no `Authorization` header is sent, and a warning
//! says so once per variable.

#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Mutex, OnceLock};
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
    /// The environment variable holding the API key (sent as a bearer token when set; unset or
    /// empty, no `Authorization` header is sent).
    pub api_key_env: String,
    /// Timeout of one request, milliseconds.
    pub timeout_ms: u64,
    /// Requests per image before giving up, retries included (for the `judge.checker` kind,
    /// the engine's retries too).
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
    pub fn check(&self) -> Result<(), JudgeError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(JudgeError::Settings(format!(
                "`base_url` {:?} must start with http:// or https://",
                self.base_url
            )));
        }
        if self.max_attempts == 0 {
            return Err(JudgeError::Settings(
                "`max_attempts` must be at least 1".into(),
            ));
        }
        if self.model.is_empty() {
            return Err(JudgeError::Settings(
                "`model` must name the server's model".into(),
            ));
        }
        Ok(())
    }
}

/// Why a judgement failed.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// Every attempt failed; each attempt's reason, in order, phrased to follow "the judge at
    /// URL" (e.g. "did not answer within 60000 ms (timeout_ms)").
    #[error("the judge at {url} {}", exhausted(attempts))]
    Exhausted {
        /// The endpoint.
        url: String,
        /// What went wrong, per attempt.
        attempts: Vec<String>,
    },
    /// The image could not be encoded.
    #[error("encoding the image: {0}")]
    Image(String),
    /// The settings are refused (the message names the setting).
    #[error("{0}")]
    Settings(String),
    /// An answer holds no extraction rlrig can read (the message quotes it).
    #[error("{0}")]
    Answer(String),
}

fn exhausted(attempts: &[String]) -> String {
    match attempts {
        [one] => one.clone(),
        _ => format!(
            "failed {} times (max_attempts): {}",
            attempts.len(),
            attempts
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{}. {a}", i + 1))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
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
pub fn parse_answer(answer: &str, truth: &SceneGraph) -> Result<Extraction, JudgeError> {
    let value = first_json_object(answer).ok_or_else(|| {
        JudgeError::Answer(format!("no JSON object in the answer {:?}", clip(answer)))
    })?;
    let strings = |v: &serde_json::Value| v.as_str().map(|s| s.trim().to_lowercase());
    let objects: Vec<String> = value
        .get("objects")
        .or_else(|| value.get("entities"))
        .and_then(|v| v.as_array())
        .ok_or_else(|| {
            JudgeError::Answer(format!(
                "the answer has no \"objects\" list: {}",
                clip(answer)
            ))
        })?
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

/// Whether a transport error is the agent's timeout.
fn is_timeout(t: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        {
            return true;
        }
        source = e.source();
    }
    t.to_string().contains("timed out")
}

/// Warns, once per variable and endpoint, that no API key is sent.
fn warn_no_key(var: &str, url: &str) {
    static WARNED: OnceLock<Mutex<BTreeSet<(String, String)>>> = OnceLock::new();
    let fresh = WARNED
        .get_or_init(Default::default)
        .lock()
        .map(|mut w| w.insert((var.to_string(), url.to_string())))
        .unwrap_or(false);
    if fresh {
        tracing::warn!(
            "{var} is not set: requests to the judge at {url} carry no Authorization header"
        );
    }
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
    pub fn new(settings: JudgeSettings) -> Result<Self, JudgeError> {
        settings.check()?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build();
        let key = std::env::var(&settings.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        if key.is_none() {
            warn_no_key(&settings.api_key_env, &settings.base_url);
        }
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

    /// The endpoint requests go to (`base_url` + `/chat/completions`).
    pub fn endpoint(&self) -> String {
        self.url()
    }

    /// The settings.
    pub fn settings(&self) -> &JudgeSettings {
        &self.settings
    }

    /// What the judge extracts from `image` given the ground truth's vocabulary, in at most
    /// `max_attempts` requests.
    pub fn extract(&self, image: &Image, truth: &SceneGraph) -> Result<Extraction, JudgeError> {
        let mut attempts = Vec::new();
        self.extract_within(image, truth, &mut attempts)
    }

    /// [`JudgeClient::extract`] after `attempts` (the reasons of requests already spent on this
    /// image): at most `max_attempts - attempts.len()` more requests; each failure's reason is
    /// appended to `attempts`.
    fn extract_within(
        &self,
        image: &Image,
        truth: &SceneGraph,
        attempts: &mut Vec<String>,
    ) -> Result<Extraction, JudgeError> {
        let url = self.url();
        let max = self.settings.max_attempts as usize;
        if attempts.len() >= max {
            return Err(JudgeError::Exhausted {
                url,
                attempts: attempts.clone(),
            });
        }
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
        let mut wait = Duration::from_millis(self.settings.backoff_ms);
        loop {
            let attempt = attempts.len() + 1;
            match self.once(&url, &body).and_then(|a| {
                parse_answer(&a, truth)
                    .map_err(|e| format!("gave an answer rlrig cannot read: {e}"))
            }) {
                Ok(x) => return Ok(x),
                Err(e) => {
                    tracing::warn!(attempt, url = %url, error = %e, "judge request failed");
                    attempts.push(e);
                }
            }
            if attempts.len() >= max {
                return Err(JudgeError::Exhausted {
                    url,
                    attempts: attempts.clone(),
                });
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
    }

    /// One request; the reason of a failure is phrased to follow "the judge at URL".
    fn once(&self, url: &str, body: &serde_json::Value) -> Result<String, String> {
        let timeout = || {
            format!(
                "did not answer within {} ms (timeout_ms)",
                self.settings.timeout_ms
            )
        };
        let mut req = self.agent.post(url).set("Content-Type", "application/json");
        if let Some(key) = &self.key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let resp = match req.send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(format!("answered HTTP {code}: {}", clip(&text)));
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(if is_timeout(&t) {
                    timeout()
                } else if t.kind() == ureq::ErrorKind::ConnectionFailed {
                    format!(
                        "could not be reached: {}",
                        t.message().map_or_else(|| t.to_string(), str::to_string)
                    )
                } else {
                    format!("failed in transport: {t}")
                });
            }
        };
        let text = resp.into_string().map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                timeout()
            } else {
                format!("sent a response rlrig could not read: {e}")
            }
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "answered with a body that is not JSON ({e}): {}",
                clip(&text)
            )
        })?;
        v.pointer("/choices/0/message/content")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "answered without choices[0].message.content: {}",
                    clip(&v.to_string())
                )
            })
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
///
/// `max_attempts` bounds the requests per image across the engine's retries as well: a failed
/// image's spent requests are remembered (in this process, by endpoint, model, prompt and
/// pixels), so a retry of it fails at once with the reasons already gathered; the answers of
/// batch-mates judged before the failure are kept for their retries, which then send nothing.
pub struct JudgeChecker(JudgeClient);

impl JudgeChecker {
    /// A checker over a client.
    pub fn new(settings: JudgeSettings) -> Result<Self, JudgeError> {
        JudgeClient::new(settings).map(JudgeChecker)
    }

    fn key(&self, r: &CheckRequest) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.settings.base_url.hash(&mut h);
        self.0.settings.model.hash(&mut h);
        serde_json::to_string(&r.prompt)
            .unwrap_or_default()
            .hash(&mut h);
        (r.image.width(), r.image.height()).hash(&mut h);
        r.image.pixels().hash(&mut h);
        h.finish()
    }
}

/// What judge checkers remember between the engine's attempts of a request.
#[derive(Default)]
struct Memory {
    /// Per failed image, the reasons of the requests spent on it.
    failures: HashMap<u64, Vec<String>>,
    /// Answers of images whose batch failed, taken by their retry.
    answers: HashMap<u64, Extraction>,
}

fn memory() -> std::sync::MutexGuard<'static, Memory> {
    static MEMORY: OnceLock<Mutex<Memory>> = OnceLock::new();
    MEMORY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let mut found = Vec::with_capacity(batch.len());
        for r in batch {
            let key = self.key(r);
            if let Some(x) = memory().answers.remove(&key) {
                found.push((key, x));
                continue;
            }
            let mut spent = memory().failures.remove(&key).unwrap_or_default();
            match self.0.extract_within(&r.image, &r.prompt, &mut spent) {
                Ok(x) => found.push((key, x)),
                Err(e) => {
                    let mut m = memory();
                    m.failures.insert(key, spent);
                    // The batch fails; its other requests are retried one by one.
                    m.answers.extend(found);
                    return Err(RoleError(format!("judge.checker: {e}")));
                }
            }
        }
        Ok(batch
            .iter()
            .zip(found)
            .map(|(r, (_, x))| report(&r.prompt, &x))
            .collect())
    }
}
