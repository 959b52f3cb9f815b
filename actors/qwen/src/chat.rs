//! The tokenizer (`tokenizer.json`, through the `tokenizers` crate) and the chat template
//! (Jinja, rendered with minijinja under the settings transformers renders with:
//! `trim_blocks`, `lstrip_blocks`), for one user turn of an optional image and a text.

use std::path::Path;

use serde::Serialize;
use tokenizers::Tokenizer;

use crate::QwenError;
use rlrig_hf::HfError;

/// The tokenizer and chat template of a model directory.
pub struct Chat {
    tokenizer: Tokenizer,
    template: String,
}

#[derive(Serialize)]
struct Part<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: Vec<Part<'a>>,
}

impl Chat {
    /// Reads `tokenizer.json` and the chat template: `chat_template.jinja`, else
    /// `chat_template.json`'s `chat_template`, else `tokenizer_config.json`'s.
    pub fn from_dir(dir: &Path) -> Result<Self, QwenError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(QwenError::File(HfError::Missing(path)));
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| QwenError::Tokenizer(format!("{}: {e}", path.display())))?;
        let template = template(dir)?;
        Ok(Chat {
            tokenizer,
            template,
        })
    }

    /// The rendered text of one user turn (an image first when `image`, then `text`) with the
    /// assistant's turn opened, as `apply_chat_template(…, add_generation_prompt=True)` gives.
    pub fn render(&self, image: bool, text: &str) -> Result<String, QwenError> {
        let mut content = Vec::new();
        if image {
            content.push(Part {
                kind: "image",
                text: None,
            });
        }
        content.push(Part {
            kind: "text",
            text: Some(text),
        });
        let messages = [Message {
            role: "user",
            content,
        }];
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        let bad = |e: minijinja::Error| QwenError::Tokenizer(format!("chat template: {e}"));
        env.add_template("chat", &self.template).map_err(bad)?;
        env.get_template("chat")
            .map_err(bad)?
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                add_vision_id => false,
            })
            .map_err(bad)
    }

    /// Token ids of `text` (special tokens written in it are matched as such).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, QwenError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| QwenError::Tokenizer(e.to_string()))
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, QwenError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| QwenError::Tokenizer(e.to_string()))
    }

    /// The id of a token written as `text` (a special token such as `<|im_end|>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }

    /// The vocabulary's size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

fn template(dir: &Path) -> Result<String, QwenError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja).map_err(|e| {
            QwenError::File(HfError::Io {
                path: jinja,
                message: e.to_string(),
            })
        });
    }
    for file in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        if path.is_file() {
            let v: serde_json::Value = crate::read_json(&path)?;
            if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
                return Ok(t.to_string());
            }
        }
    }
    Err(QwenError::File(HfError::Missing(
        dir.join("chat_template.jinja"),
    )))
}
