//! The closed-vocabulary tokenizer of rlrig's built-in models (docs/models.md, "Text encoder").
//!
//! The vocabulary is the world's words and the edit-prompt language's words, plus `;` (the
//! separator of scene-graph prompts) as a token of its own — the *prompt vocabulary*, ids
//! `0..PROMPT_VOCAB_SIZE`, which the Diffuser and the Editor read — followed by the words of the
//! Checker's reflections (`is`, `missing`, `.`, …) and the decoder's `<bos>` / `<eos>`, which
//! only the VLMs (Checker and Policy) read. Id 0 is `<pad>`; there is no `<unk>`: a word outside
//! a tokenizer's vocabulary is an error that names it. Token ids are padded with `<pad>` to a
//! fixed length (`text_len`, 48 by default); a longer prompt is an error. The unconditional
//! prompt of classifier-free guidance is all `<pad>`.
//!
//! Words are separated by whitespace; `;`, `.` and `,` are split off the words they touch, so
//! `"red circle left of blue square; green triangle"` is 9 tokens. `<bos>` and `<eos>` are
//! never read from text.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// The id of `<pad>`: padding and the unconditional prompt.
pub const PAD: u32 = 0;

/// The vocabulary, indexed by token id: `<pad>`, then the prompt words in docs/models.md's
/// order, then `;`, then the reflection words and the decoder's markers.
pub const VOCAB: [&str; 35] = [
    "<pad>",
    "circle",
    "square",
    "triangle",
    "red",
    "green",
    "blue",
    "yellow",
    "left",
    "right",
    "of",
    "above",
    "below",
    "to",
    "the",
    "move",
    "recolour",
    "add",
    "a",
    "remove",
    "swap",
    "and",
    ";", // end of the prompt vocabulary
    "is",
    "missing",
    "not",
    "it",
    "clearly",
    "all",
    "relations",
    "hold",
    ".",
    ",",
    "<bos>",
    "<eos>",
];

/// The number of token ids in use ([`VOCAB`]'s length).
pub const VOCAB_SIZE: usize = VOCAB.len();

/// The ids of prompts and edit prompts: `0..PROMPT_VOCAB_SIZE`. The DiT's embedding table has
/// at least this many rows (`DitConfig::vocab_size`).
pub const PROMPT_VOCAB_SIZE: usize = 23;

/// The decoder's start marker (the Policy's edit prompts begin after it).
pub const BOS: u32 = 33;

/// The decoder's end marker.
pub const EOS: u32 = 34;

/// The default padded length of a prompt.
pub const DEFAULT_TEXT_LEN: usize = 48;

/// A prompt that cannot be encoded, or ids that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A word outside the vocabulary.
    #[error("prompt {prompt:?}: the word {word:?} is not in the models' vocabulary")]
    UnknownWord {
        /// The prompt as given.
        prompt: String,
        /// The offending word.
        word: String,
    },
    /// More tokens than the padded length holds.
    #[error("prompt {prompt:?} has {tokens} tokens; at most {text_len} fit")]
    TooLong {
        /// The prompt as given.
        prompt: String,
        /// Its number of tokens.
        tokens: usize,
        /// The padded length.
        text_len: usize,
    },
    /// A token id outside the vocabulary (when decoding).
    #[error("token id {id} is not in the vocabulary (ids 0..{VOCAB_SIZE})")]
    UnknownId {
        /// The offending id.
        id: u32,
    },
    /// A batch without prompts.
    #[error("a batch of prompts must not be empty")]
    EmptyBatch,
    /// Rows of token ids of different lengths in one batch.
    #[error("token row {row} has length {len}; the batch's rows have length {expected}")]
    RaggedBatch {
        /// Index of the offending row.
        row: usize,
        /// Its length.
        len: usize,
        /// The length of row 0.
        expected: usize,
    },
}

/// The id of a vocabulary word (`None` for `<pad>`, `<bos>`, `<eos>` and unknown words).
pub fn token_id(word: &str) -> Option<u32> {
    VOCAB[1..BOS as usize]
        .iter()
        .position(|w| *w == word)
        .map(|i| i as u32 + 1)
}

/// Whether a token is punctuation, written attached to the word before it.
fn is_punct(word: &str) -> bool {
    matches!(word, ";" | "." | ",")
}

/// The word of a token id (`"<pad>"` for [`PAD`]).
pub fn token_word(id: u32) -> Option<&'static str> {
    VOCAB.get(id as usize).copied()
}

/// The padding mask of a row of ids: `true` for a real token, `false` for `<pad>`.
pub fn mask(ids: &[u32]) -> Vec<bool> {
    ids.iter().map(|&id| id != PAD).collect()
}

/// The tokenizer for one padded length and one vocabulary (the prompt vocabulary, or all of
/// [`VOCAB`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokenizer {
    text_len: usize,
    vocab: usize,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new(DEFAULT_TEXT_LEN)
    }
}

impl Tokenizer {
    /// The Diffuser's and the Editor's tokenizer: the prompt vocabulary, padded to `text_len`.
    pub fn new(text_len: usize) -> Self {
        Tokenizer {
            text_len,
            vocab: PROMPT_VOCAB_SIZE,
        }
    }

    /// The VLMs' tokenizer: the whole vocabulary (reflection words too), padded to `text_len`.
    pub fn full(text_len: usize) -> Self {
        Tokenizer {
            text_len,
            vocab: VOCAB_SIZE,
        }
    }

    /// The padded length.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// The token ids of a prompt, unpadded.
    pub fn tokens(&self, prompt: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = Vec::new();
        let mut push = |word: &str| match token_id(word) {
            Some(id) if (id as usize) < self.vocab => {
                ids.push(id);
                Ok(())
            }
            _ => Err(TextError::UnknownWord {
                prompt: prompt.to_owned(),
                word: word.to_owned(),
            }),
        };
        for piece in prompt.split_whitespace() {
            let mut word_start = 0;
            for (at, c) in piece.char_indices() {
                if is_punct(&piece[at..at + c.len_utf8()]) {
                    if at > word_start {
                        push(&piece[word_start..at])?;
                    }
                    push(&piece[at..at + c.len_utf8()])?;
                    word_start = at + c.len_utf8();
                }
            }
            if word_start < piece.len() {
                push(&piece[word_start..])?;
            }
        }
        Ok(ids)
    }

    /// The token ids of a prompt, padded with [`PAD`] to [`text_len`](Self::text_len).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = self.tokens(prompt)?;
        if ids.len() > self.text_len {
            return Err(TextError::TooLong {
                prompt: prompt.to_owned(),
                tokens: ids.len(),
                text_len: self.text_len,
            });
        }
        ids.resize(self.text_len, PAD);
        Ok(ids)
    }

    /// The unconditional prompt: all [`PAD`].
    pub fn unconditional(&self) -> Vec<u32> {
        vec![PAD; self.text_len]
    }

    /// Encodes a batch of prompts into tensors on `device`.
    pub fn batch<S: AsRef<str>>(
        &self,
        prompts: &[S],
        device: &Device,
    ) -> Result<TextBatch, TextError> {
        let rows = prompts
            .iter()
            .map(|p| self.encode(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        TextBatch::from_ids(&rows, device)
    }

    /// The text of token ids, padding dropped: words joined by single spaces, `;`, `.` and `,`
    /// attached to the word before it. `decode(encode(p)) == p` for prompts written that way.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        let mut text = String::new();
        for &id in ids.iter().filter(|&&id| id != PAD) {
            let word = token_word(id).ok_or(TextError::UnknownId { id })?;
            if !text.is_empty() && !is_punct(word) {
                text.push(' ');
            }
            text.push_str(word);
        }
        Ok(text)
    }
}

/// A batch of padded prompts as tensors: ids `(B, L)` and the padding mask `(B, L)`
/// (`true` = a real token).
///
/// The mask is always `ids != PAD`; the constructors keep it so.
#[derive(Clone, Debug)]
pub struct TextBatch {
    ids: Tensor<2, Int>,
    mask: Tensor<2, Bool>,
}

impl TextBatch {
    /// A batch from padded rows of ids (all of one length, at least one row).
    pub fn from_ids(rows: &[Vec<u32>], device: &Device) -> Result<Self, TextError> {
        let len = rows.first().ok_or(TextError::EmptyBatch)?.len();
        if let Some((row, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != len) {
            return Err(TextError::RaggedBatch {
                row,
                len: r.len(),
                expected: len,
            });
        }
        if let Some(&id) = rows.iter().flatten().find(|&&id| id as usize >= VOCAB_SIZE) {
            return Err(TextError::UnknownId { id });
        }
        let flat: Vec<i64> = rows.iter().flatten().map(|&id| i64::from(id)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), len]), device);
        Ok(Self::from_ids_tensor(ids))
    }

    /// A batch from an ids tensor `(B, L)`; the mask is computed from it.
    pub fn from_ids_tensor(ids: Tensor<2, Int>) -> Self {
        let mask = ids.clone().not_equal_elem(PAD as i64);
        TextBatch { ids, mask }
    }

    /// `batch` unconditional prompts of length `text_len`.
    pub fn unconditional(batch: usize, text_len: usize, device: &Device) -> Self {
        let ids = Tensor::<2, Int>::zeros([batch, text_len], device);
        Self::from_ids_tensor(ids)
    }

    /// The token ids, `(B, L)`.
    pub fn ids(&self) -> &Tensor<2, Int> {
        &self.ids
    }

    /// The padding mask, `(B, L)`, `true` for real tokens.
    pub fn mask(&self) -> &Tensor<2, Bool> {
        &self.mask
    }

    /// The number of prompts.
    pub fn batch_size(&self) -> usize {
        self.ids.dims()[0]
    }

    /// The padded length.
    pub fn text_len(&self) -> usize {
        self.ids.dims()[1]
    }

    /// The device the tensors live on.
    pub fn device(&self) -> Device {
        self.ids.device()
    }

    /// This batch moved to `device`.
    pub fn to_device(self, device: &Device) -> Self {
        TextBatch {
            ids: self.ids.to_device(device),
            mask: self.mask.to_device(device),
        }
    }

    /// This batch with the rows where `drop` is `true` replaced by the unconditional prompt
    /// (prompt dropout for classifier-free guidance).
    ///
    /// # Panics
    ///
    /// If `drop` does not have one entry per row.
    pub fn drop_rows(&self, drop: &[bool]) -> Self {
        let [batch, len] = self.ids.dims();
        assert_eq!(
            drop.len(),
            batch,
            "drop_rows: {} flags for a batch of {batch}",
            drop.len()
        );
        if !drop.contains(&true) {
            return self.clone();
        }
        let flags = Tensor::<2, Bool>::from_data(
            TensorData::new(drop.to_vec(), [batch, 1]),
            &self.ids.device(),
        )
        .expand([batch, len]);
        Self::from_ids_tensor(self.ids.clone().mask_fill(flags, PAD as i64))
    }

    /// The rows of `self` followed by those of `other` (same padded length).
    ///
    /// # Panics
    ///
    /// If the padded lengths differ.
    pub fn concat(&self, other: &TextBatch) -> Self {
        assert_eq!(
            self.text_len(),
            other.text_len(),
            "concat: text batches of lengths {} and {}",
            self.text_len(),
            other.text_len()
        );
        TextBatch {
            ids: Tensor::cat(vec![self.ids.clone(), other.ids.clone()], 0),
            mask: Tensor::cat(vec![self.mask.clone(), other.mask.clone()], 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_ids_are_stable() {
        assert_eq!(token_id("circle"), Some(1));
        assert_eq!(token_id(";"), Some(22));
        assert_eq!(token_id("<pad>"), None);
        assert_eq!(token_word(PAD), Some("<pad>"));
        assert_eq!(VOCAB_SIZE, 35);
        assert_eq!(VOCAB[PROMPT_VOCAB_SIZE - 1], ";");
        assert_eq!(
            (VOCAB[BOS as usize], VOCAB[EOS as usize]),
            ("<bos>", "<eos>")
        );
    }

    #[test]
    fn semicolons_split_off_and_padding_fills() {
        let t = Tokenizer::new(12);
        let ids = t
            .encode("red circle left of blue square; green triangle")
            .unwrap();
        assert_eq!(ids.len(), 12);
        let words: Vec<_> = ids.iter().map(|&i| token_word(i).unwrap()).collect();
        assert_eq!(
            words,
            [
                "red", "circle", "left", "of", "blue", "square", ";", "green", "triangle", "<pad>",
                "<pad>", "<pad>"
            ]
        );
        assert_eq!(t.tokens("a ;red").unwrap(), t.tokens("a; red").unwrap());
        assert_eq!(mask(&ids).iter().filter(|&&m| m).count(), 9);
    }

    #[test]
    fn reflections_need_the_full_vocabulary() {
        let r = "the green triangle is missing. the red circle is right of the blue square, not left of it.";
        let prompt_only = Tokenizer::new(48);
        assert_eq!(
            prompt_only.tokens(r).unwrap_err(),
            TextError::UnknownWord {
                prompt: r.into(),
                word: "is".into()
            }
        );
        let full = Tokenizer::full(48);
        let ids = full.tokens(r).unwrap();
        assert_eq!(ids.len(), 21);
        assert_eq!(full.decode(&ids).unwrap(), r);
        // The decoder's markers are never read from text.
        assert!(full.tokens("<eos>").is_err());
        assert!(full.tokens("<bos>").is_err());
    }

    #[test]
    fn unknown_words_and_long_prompts_are_errors() {
        let t = Tokenizer::new(4);
        assert_eq!(
            t.encode("red hexagon").unwrap_err().to_string(),
            r#"prompt "red hexagon": the word "hexagon" is not in the models' vocabulary"#
        );
        assert_eq!(
            t.encode("move the red circle above").unwrap_err(),
            TextError::TooLong {
                prompt: "move the red circle above".into(),
                tokens: 5,
                text_len: 4
            }
        );
        assert_eq!(t.encode("").unwrap(), t.unconditional());
        assert!(matches!(
            t.decode(&[99]),
            Err(TextError::UnknownId { id: 99 })
        ));
        let device = Device::flex();
        let empty: [&str; 0] = [];
        assert_eq!(t.batch(&empty, &device).unwrap_err(), TextError::EmptyBatch);
        assert_eq!(
            TextBatch::from_ids(&[vec![1, 2], vec![1]], &device).unwrap_err(),
            TextError::RaggedBatch {
                row: 1,
                len: 1,
                expected: 2
            }
        );
    }
}
