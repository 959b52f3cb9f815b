//! CLIP's byte-level BPE tokenizer, through the `tokenizers` crate: from a diffusers
//! `tokenizer/` directory's `tokenizer.json` when there is one, else from its `vocab.json` and
//! `merges.txt` (what SD 1.x checkpoints ship), set up as CLIP's: NFC, whitespace runs to one
//! space, lower case; CLIP's split pattern; byte-level symbols; `</w>` ending each word.
//!
//! An encoded prompt is `[BOS] + tokens[..max_len - 2] + [EOS]`, padded to `max_len` with the
//! pad token (`model_max_length` and `pad_token` of `tokenizer_config.json`; SD 1.x pads with
//! `<|endoftext|>`, SD 2.x with `!`). Unknown words never fail: byte-level BPE spells any text.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use crate::SdError;
use rlrig_hf::HfError;

/// CLIP's pre-tokenizer pattern.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: usize,
    #[serde(default = "default_bos")]
    bos_token: Token,
    #[serde(default = "default_eos")]
    eos_token: Token,
    pad_token: Option<Token>,
}

/// A special token: a string, or `{"content": …}` as newer configs write it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Token {
    Plain(String),
    Added { content: String },
}

impl Token {
    fn text(&self) -> &str {
        match self {
            Token::Plain(s) | Token::Added { content: s } => s,
        }
    }
}

fn default_bos() -> Token {
    Token::Plain("<|startoftext|>".into())
}

fn default_eos() -> Token {
    Token::Plain("<|endoftext|>".into())
}

/// A CLIP tokenizer with its padding length.
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_len: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = crate::read_json(&config_path)?;
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| bad(&json, e))?
        } else {
            from_vocab_and_merges(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                SdError::File(HfError::Config {
                    path: config_path.clone(),
                    message: format!("the special token {token:?} is not in the vocabulary"),
                })
            })
        };
        let (bos, eos) = (id(config.bos_token.text())?, id(config.eos_token.text())?);
        let pad = match &config.pad_token {
            Some(t) => id(t.text())?,
            None => eos,
        };
        if config.model_max_length < 2 {
            return Err(SdError::File(HfError::Config {
                path: config_path,
                message: "model_max_length must leave room for BOS and EOS".into(),
            }));
        }
        Ok(ClipTokenizer {
            inner,
            max_len: config.model_max_length,
            bos,
            eos,
            pad,
        })
    }

    /// The padded length of every encoding.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The token ids of `text` without BOS, EOS or padding.
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>, SdError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| SdError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[BOS] + tokens (truncated) + [EOS]`, padded to [`max_len`](Self::max_len).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, SdError> {
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend(self.tokens(text)?.into_iter().take(self.max_len - 2));
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }
}

/// CLIP's tokenizer built from `vocab.json` and `merges.txt`, as transformers' converter builds it.
fn from_vocab_and_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer, SdError> {
    for f in [vocab, merges] {
        if !f.is_file() {
            return Err(SdError::File(HfError::Missing(f.to_owned())));
        }
    }
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .unk_token("<|endoftext|>".into())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(|e| bad(merges, e))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| SdError::Tokenizer(e.to_string()))?;
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| SdError::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(Normalizers::new(vec![
        NFC.into(),
        whitespace.into(),
        Lowercase.into(),
    ])));
    tok.with_pre_tokenizer(Some(PreTokenizers::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    Ok(tok)
}

fn bad(path: &Path, e: impl std::fmt::Display) -> SdError {
    SdError::File(HfError::Config {
        path: PathBuf::from(path),
        message: e.to_string(),
    })
}
