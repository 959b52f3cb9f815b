//! The small vision-language models of the Checker and the Policy (the paper's Actor)
//! (docs/models.md, "VLMs").
//!
//! Both share one encoder, [`Vlm`]: the image cut into patches (Linear, fixed 2-D sin-cos
//! positions) and text tokens (Embedding, fixed 1-D sin-cos positions, a learned segment
//! embedding) in one pre-LayerNorm transformer; a key mask decides who sees whom.
//!
//! * [`CheckerNet`] answers *questions* about an image: `<bos> red circle` (is the item
//!   there?) or `<bos> red circle left of blue square` (does the relation hold?). All questions
//!   about one image share its row (each sees the image and itself, not the others); from each
//!   question's `<bos>` token it gives three verdict logits (yes / no / cannot tell) and four
//!   position logits (is the subject left of, right of, above, below the object), which the
//!   reflection uses to say where the subject actually is.
//! * [`PolicyNet`] is a prefix language model: `[image; prompt; reflection]` see each other,
//!   `<bos> edit prompt <eos>` is decoded causally after them, and a Linear head gives the
//!   next token's logits. It samples (temperature, top-k) or decodes greedily, returns each
//!   token's log-probability, and scores given edit prompts (for GRPO's ratios and replay);
//!   it writes only words of the edit-prompt vocabulary ([`writable`]).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{log_softmax, sigmoid};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::Rng;
use rlrig_contract::Image;
use serde::{Deserialize, Serialize};

use crate::architecture::Architecture;
use crate::image::images_to_tensor;
use crate::layers::{Block, sincos_2d, sincos_text, xavier};
use crate::text::{BOS, EOS, PAD, TextError, VOCAB_SIZE};

/// The architecture of a [`Vlm`] (and of the [`CheckerNet`] / [`PolicyNet`] around it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlmConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch in pixels.
    pub patch: usize,
    /// Token width.
    pub width: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads (`width` must be a multiple).
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    pub mlp_ratio: usize,
    /// Text tokens per row (padded).
    pub text_len: usize,
    /// Rows of the token embedding table; at least [`VOCAB_SIZE`].
    pub vocab_size: usize,
}

impl VlmConfig {
    /// The Checker's default: patch 4 (64 image tokens), 48 question tokens (a prompt's
    /// questions; more go to another row), width 128, 4 blocks.
    pub fn checker() -> Self {
        VlmConfig {
            image_size: 32,
            patch: 4,
            width: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4,
            text_len: 48,
            vocab_size: VOCAB_SIZE,
        }
    }

    /// The Policy's default: patch 8 (16 image tokens), 112 text tokens (prompt, reflection
    /// and edit prompt), width 128, 4 blocks.
    pub fn policy() -> Self {
        VlmConfig {
            patch: 8,
            text_len: 112,
            ..VlmConfig::checker()
        }
    }

    /// Image tokens per row.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }

    /// Checks that the numbers describe a network.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |m: String| Err(m);
        if self.patch == 0 || !self.image_size.is_multiple_of(self.patch) {
            return fail(format!(
                "patch {} must divide image_size {}",
                self.patch, self.image_size
            ));
        }
        if self.heads == 0 || self.width == 0 || !self.width.is_multiple_of(self.heads) {
            return fail(format!(
                "width {} must be a positive multiple of heads {}",
                self.width, self.heads
            ));
        }
        if self.depth == 0 || self.mlp_ratio == 0 || self.text_len == 0 {
            return fail("depth, mlp_ratio and text_len must be at least 1".into());
        }
        if self.vocab_size < VOCAB_SIZE {
            return fail(format!(
                "vocab_size {} is less than the vocabulary's {VOCAB_SIZE} ids",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

/// The shared encoder: image patches and text tokens in one transformer.
#[derive(Module, Debug)]
pub struct Vlm {
    patch_embed: Linear,
    img_pos: Tensor<2>,
    tok: Embedding,
    text_pos: Tensor<2>,
    segment: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    #[module(skip)]
    config: VlmConfig,
}

/// Segments of a text row: what a token is.
pub mod segment {
    /// The Checker's question, or the Policy's prompt.
    pub const PROMPT: u32 = 1;
    /// The Policy's reflection.
    pub const REFLECTION: u32 = 2;
    /// The Policy's `<bos>` and edit prompt (decoded causally).
    pub const TARGET: u32 = 3;
}

impl Vlm {
    fn new(config: &VlmConfig, device: &Device) -> Result<Self, String> {
        config.validate()?;
        let c = config;
        let d = c.width;
        Ok(Vlm {
            patch_embed: xavier(3 * c.patch * c.patch, d, device),
            img_pos: sincos_2d(d, c.image_size / c.patch, device),
            tok: EmbeddingConfig::new(c.vocab_size, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            text_pos: sincos_text(d, c.text_len, device),
            segment: EmbeddingConfig::new(4, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            blocks: (0..c.depth)
                .map(|_| Block::new(d, c.heads, c.mlp_ratio, device))
                .collect(),
            ln_f: LayerNormConfig::new(d).init(device),
            config: c.clone(),
        })
    }

    /// `(B, 3, H, W)` images, text rows and their `(B, T, T)` mask (`true` = query may not
    /// see key; `T = patches + L`) → `(B, T, D)`.
    fn forward(&self, images: Tensor<4>, rows: &TextRows) -> Tensor<3> {
        let device = images.device();
        let (ids, segments, positions) = rows.tensors(&device);
        let masked = rows.mask(self.config.num_patches(), &device);
        let c = &self.config;
        let [b, ch, h, w] = images.dims();
        assert!(
            ch == 3 && h == c.image_size && w == c.image_size,
            "Vlm::forward: images are {:?}, the config wants [B, 3, {}, {}]",
            images.dims(),
            c.image_size,
            c.image_size
        );
        let (p, g) = (c.patch, c.image_size / c.patch);
        let patches = images
            .reshape([b, 3, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, g * g, 3 * p * p]);
        let img = self.patch_embed.forward(patches) + self.img_pos.clone().unsqueeze();
        let [_, l] = positions.dims();
        let pos = self
            .text_pos
            .clone()
            .select(0, positions.reshape([b * l]))
            .reshape([b, l, c.width]);
        let txt = self.tok.forward(ids) + pos + self.segment.forward(segments);
        let mut z = Tensor::cat(vec![img, txt], 1);
        let t = z.dims()[1];
        let masked = masked.unsqueeze_dim::<4>(1).expand([b, c.heads, t, t]);
        for block in &self.blocks {
            z = block.forward(z, masked.clone());
        }
        self.ln_f.forward(z)
    }
}

/// Rows of text for a VLM: ids, segments and groups, each `text_len` long (padded with
/// [`PAD`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRows {
    /// Token ids per row.
    pub ids: Vec<Vec<u32>>,
    /// Segment per token ([`segment`]); 0 for padding.
    pub segments: Vec<Vec<u32>>,
    /// Group per token: text sees only text of its own group (one group per Checker question;
    /// one for all the Policy's text); 0 for padding.
    pub groups: Vec<Vec<u32>>,
    /// Position per token (its sin-cos embedding): within its question for the Checker, so
    /// that an answer does not depend on what else is asked; along the row for the Policy.
    pub positions: Vec<Vec<u32>>,
}

impl TextRows {
    /// The rows cut after the last column that holds a token in any row (padding costs
    /// attention; positions are per token, so nothing else changes).
    pub fn trimmed(mut self) -> TextRows {
        let used = self
            .ids
            .iter()
            .map(|r| r.iter().rposition(|&id| id != PAD).map_or(0, |i| i + 1))
            .max()
            .unwrap_or(0)
            .max(1);
        for rows in [
            &mut self.ids,
            &mut self.segments,
            &mut self.groups,
            &mut self.positions,
        ] {
            for r in rows.iter_mut() {
                r.truncate(used);
            }
        }
        self
    }

    /// Text tokens per row.
    pub fn len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>) {
        let (b, l) = (self.ids.len(), self.ids.first().map_or(0, Vec::len));
        let t = |rows: &[Vec<u32>]| -> Tensor<2, Int> {
            let flat: Vec<i64> = rows.iter().flatten().map(|&x| i64::from(x)).collect();
            Tensor::from_data(TensorData::new(flat, [b, l]), device)
        };
        (t(&self.ids), t(&self.segments), t(&self.positions))
    }

    /// The attention mask `(B, T, T)` over `[n_img image tokens; text]` (`true` = hidden):
    /// image keys are seen by everyone; a text key only by text queries of its group, and a
    /// [`segment::TARGET`] key only by queries at or after it (the target is causal); padding
    /// keys by no one. Image queries see the image alone.
    fn mask(&self, n_img: usize, device: &Device) -> Tensor<3, Bool> {
        let (b, l) = (self.ids.len(), self.ids.first().map_or(0, Vec::len));
        let t = n_img + l;
        let mut m = vec![true; b * t * t];
        for r in 0..b {
            let (ids, segs, groups) = (&self.ids[r], &self.segments[r], &self.groups[r]);
            for q in 0..t {
                let row = &mut m[(r * t + q) * t..(r * t + q + 1) * t];
                row[..n_img].fill(false);
                if q < n_img {
                    continue;
                }
                let g = groups[q - n_img];
                for k in 0..l {
                    let key = n_img + k;
                    let visible =
                        ids[k] != PAD && groups[k] == g && (segs[k] != segment::TARGET || key <= q);
                    row[key] = !visible;
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [b, t, t]), device)
    }
}

macro_rules! architecture {
    ($net:ty, $key:literal, $name:literal) => {
        impl Architecture for $net {
            type Config = VlmConfig;
            const CONFIG_KEY: &'static str = $key;
            const NAME: &'static str = $name;
            fn config(&self) -> &VlmConfig {
                &self.vlm.config
            }
            fn device(&self) -> Device {
                self.vlm.img_pos.device()
            }
            fn build(config: &VlmConfig, device: &Device) -> Result<Self, String> {
                <$net>::new(config, device)
            }
        }
    };
}

/// The Checker's network: one question per row → verdict and position logits.
#[derive(Module, Debug)]
pub struct CheckerNet {
    vlm: Vlm,
    verdict: Linear,
    position: Linear,
}

architecture!(CheckerNet, "rlrig.checker_config", "Checker");

/// One answer of the Checker: verdict probabilities (yes, no, cannot tell) and position
/// probabilities (left of, right of, above, below).
pub type Answer = ([f32; 3], [f32; 4]);

/// Verdict classes of [`CheckerNet`]: yes (present / holds), no (missing / violated), cannot
/// tell (relations only).
pub const VERDICTS: usize = 3;

impl CheckerNet {
    /// A freshly initialised network.
    pub fn new(config: &VlmConfig, device: &Device) -> Result<Self, String> {
        Ok(CheckerNet {
            vlm: Vlm::new(config, device)?,
            verdict: xavier(config.width, VERDICTS, device),
            position: xavier(config.width, 4, device),
        })
    }

    /// Packs questions (word ids, no `<bos>`) into rows of `<bos> words` each, in order;
    /// a row holds as many as fit its text length. Returns the rows and, per question, its
    /// row and the position of its `<bos>`.
    pub fn pack(
        &self,
        questions: &[Vec<u32>],
    ) -> Result<(TextRows, Vec<(usize, usize)>), TextError> {
        let len = self.vlm.config.text_len;
        let mut rows = TextRows::default();
        let mut at = Vec::with_capacity(questions.len());
        let mut used = len; // forces a first row
        for (k, words) in questions.iter().enumerate() {
            let need = words.len() + 1;
            if need > len {
                return Err(TextError::TooLong {
                    prompt: crate::text::Tokenizer::full(len)
                        .decode(words)
                        .unwrap_or_default(),
                    tokens: need,
                    text_len: len,
                });
            }
            if used + need > len {
                rows.ids.push(vec![PAD; len]);
                rows.segments.push(vec![0; len]);
                rows.groups.push(vec![0; len]);
                rows.positions.push(vec![0; len]);
                used = 0;
            }
            let r = rows.ids.len() - 1;
            rows.ids[r][used] = BOS;
            rows.ids[r][used + 1..used + need].copy_from_slice(words);
            rows.segments[r][used..used + need].fill(segment::PROMPT);
            rows.groups[r][used..used + need].fill(k as u32 + 1);
            for (p, slot) in rows.positions[r][used..used + need].iter_mut().enumerate() {
                *slot = p as u32;
            }
            at.push((r, used));
            used += need;
        }
        Ok((rows, at))
    }

    /// Answers questions about images: `images[i]` and `questions[i]` (word ids, no `<bos>`)
    /// belong together. Returns verdict logits `(Q, 3)` and position logits `(Q, 4)` (left of,
    /// right of, above, below), one row per question in the order given (images first, then
    /// their questions).
    pub fn forward(
        &self,
        images: &[Image],
        questions: &[Vec<Vec<u32>>],
    ) -> Result<(Tensor<2>, Tensor<2>), String> {
        let device = self.vlm.img_pos.device();
        let n = self.vlm.config.num_patches();
        let mut rows = TextRows::default();
        let mut row_images = Vec::new();
        let mut at_all = Vec::new();
        for (image, qs) in images.iter().zip(questions) {
            let (r, at) = self.pack(qs).map_err(|e| e.to_string())?;
            let base = rows.ids.len();
            at_all.extend(at.into_iter().map(|(row, p)| (base + row, p)));
            row_images.extend(std::iter::repeat_n(image.clone(), r.ids.len()));
            rows.ids.extend(r.ids);
            rows.segments.extend(r.segments);
            rows.groups.extend(r.groups);
            rows.positions.extend(r.positions);
        }
        if at_all.is_empty() {
            return Err("no questions to answer".into());
        }
        let rows = rows.trimmed();
        let l = rows.len();
        let cls: Vec<i64> = at_all
            .iter()
            .map(|&(row, p)| (row * (n + l) + n + p) as i64)
            .collect();
        let x = images_to_tensor(&row_images, &device).map_err(|e| e.to_string())?;
        let z = self.vlm.forward(x, &rows);
        let [b, t, d] = z.dims();
        let q = cls.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(cls, [q]), &device);
        let h = z.reshape([b * t, d]).select(0, idx);
        Ok((self.verdict.forward(h.clone()), self.position.forward(h)))
    }

    /// The answers as probabilities, on the CPU: verdict softmax and position sigmoids per
    /// question.
    pub fn answer(
        &self,
        images: &[Image],
        questions: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Answer>, String> {
        let (v, p) = self.forward(images, questions)?;
        let q = v.dims()[0];
        let v = burn::tensor::activation::softmax(v, 1)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let p = sigmoid(p)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        Ok((0..q)
            .map(|i| {
                (
                    std::array::from_fn(|k| v[i * 3 + k]),
                    std::array::from_fn(|k| p[i * 4 + k]),
                )
            })
            .collect())
    }
}

/// The Policy's network: a prefix language model over `[image; prompt; reflection]`.
#[derive(Module, Debug)]
pub struct PolicyNet {
    vlm: Vlm,
    head: Linear,
}

architecture!(PolicyNet, "rlrig.policy_config", "Policy");

/// What the Policy reads: the image, the prompt's and the reflection's token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    /// The current image.
    pub image: Image,
    /// The prompt's ids (no padding).
    pub prompt: Vec<u32>,
    /// The reflection's ids (no padding).
    pub reflection: Vec<u32>,
}

impl PolicyInput {
    /// The input for an image, a prompt and a reflection, tokenized with the whole vocabulary;
    /// a word outside it is an error naming it (and which text it is in).
    pub fn new(image: Image, prompt: &str, reflection: &str) -> Result<Self, String> {
        let tok = crate::text::Tokenizer::full(usize::MAX);
        Ok(PolicyInput {
            image,
            prompt: tok.tokens(prompt).map_err(|e| format!("the prompt: {e}"))?,
            reflection: tok
                .tokens(reflection)
                .map_err(|e| format!("the reflection: {e}"))?,
        })
    }
}

/// How the Policy picks tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Decoding {
    /// The most likely token each time (deterministic); else sample.
    pub greedy: bool,
    /// Logits are divided by it before the softmax (sampling and the returned log-probs).
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens only (0: all).
    pub top_k: usize,
    /// The most tokens an edit prompt may have, `<eos>` included.
    pub max_tokens: usize,
    /// Greedy decoding only: the likeliest token that keeps the edit prompt inside the
    /// edit-prompt language ([`rlrig_world::edit`]), so every finished prompt parses. The
    /// returned log-probs stay the network's own. Sampling ignores it: GRPO's ratios need the
    /// network's own distribution.
    pub grammar: bool,
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            greedy: true,
            temperature: 1.0,
            top_k: 0,
            max_tokens: 16,
            grammar: false,
        }
    }
}

/// Whether `prefix` followed by `next` can still become an edit prompt of the edit-prompt
/// language (`next` = `<eos>`: whether `prefix` is one).
pub fn in_edit_language(prefix: &[u32], next: u32) -> bool {
    use rlrig_world::edit::EditProblem;
    let tok = crate::text::Tokenizer::full(usize::MAX);
    if next == EOS {
        return tok
            .decode(prefix)
            .is_ok_and(|t| rlrig_world::Edit::parse(&t).is_ok());
    }
    let mut ids = prefix.to_vec();
    ids.push(next);
    let Ok(text) = tok.decode(&ids) else {
        return false;
    };
    match rlrig_world::Edit::parse(&text) {
        Ok(_) => true,
        Err(e) => matches!(e.problem, EditProblem::UnexpectedWord { found: None, .. }),
    }
}

/// One decoded edit prompt: its tokens (`<eos>` last when it ended) and each token's
/// log-probability under `softmax(logits / temperature)` over the [`writable`] ids (top-k only
/// narrows what is sampled; the returned log-probs are those [`PolicyNet::score`] gives).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Token ids, `<eos>` included when generated.
    pub tokens: Vec<u32>,
    /// One log-probability per token.
    pub logprobs: Vec<f32>,
}

impl PolicyNet {
    /// A freshly initialised network.
    pub fn new(config: &VlmConfig, device: &Device) -> Result<Self, String> {
        Ok(PolicyNet {
            vlm: Vlm::new(config, device)?,
            head: xavier(config.width, config.vocab_size, device),
        })
    }

    /// The text row of an input and a target prefix (`<bos>` then `target`).
    fn row(&self, input: &PolicyInput, target: &[u32]) -> Result<(Vec<u32>, Vec<u32>), String> {
        let len = self.vlm.config.text_len;
        let used = input.prompt.len() + input.reflection.len() + 1 + target.len();
        if used > len {
            return Err(format!(
                "prompt ({} tokens), reflection ({}) and edit prompt ({}) do not fit the Policy's {len} text tokens",
                input.prompt.len(),
                input.reflection.len(),
                target.len() + 1
            ));
        }
        let mut ids = Vec::with_capacity(len);
        let mut segs = Vec::with_capacity(len);
        ids.extend(&input.prompt);
        segs.extend(std::iter::repeat_n(segment::PROMPT, input.prompt.len()));
        ids.extend(&input.reflection);
        segs.extend(std::iter::repeat_n(
            segment::REFLECTION,
            input.reflection.len(),
        ));
        ids.push(BOS);
        ids.extend(target);
        segs.extend(std::iter::repeat_n(segment::TARGET, target.len() + 1));
        ids.resize(len, PAD);
        segs.resize(len, 0);
        Ok((ids, segs))
    }

    /// Next-token logits at every text position, `(B, L, V)`.
    fn logits(&self, inputs: &[PolicyInput], targets: &[Vec<u32>]) -> Result<Tensor<3>, String> {
        let device = self.vlm.img_pos.device();
        let mut rows = TextRows::default();
        for (input, target) in inputs.iter().zip(targets) {
            let (ids, segs) = self.row(input, target)?;
            rows.groups
                .push(ids.iter().map(|&id| u32::from(id != PAD)).collect());
            rows.positions.push((0..ids.len() as u32).collect());
            rows.ids.push(ids);
            rows.segments.push(segs);
        }
        let images: Vec<Image> = inputs.iter().map(|i| i.image.clone()).collect();
        let images = images_to_tensor(&images, &device).map_err(|e| e.to_string())?;
        let n = self.vlm.config.num_patches();
        let rows = rows.trimmed();
        let l = rows.len();
        let z = self.vlm.forward(images, &rows);
        Ok(self.head.forward(z.narrow(1, n, l)))
    }

    /// The log-probabilities of given edit prompts (`targets`, `<eos>` included when they
    /// end), token by token, as a `(B, max target length)` tensor with a gradient (zero past
    /// each row's end), and the matching 0/1 weights. `temperature` divides the logits.
    pub fn target_logprobs(
        &self,
        inputs: &[PolicyInput],
        targets: &[Vec<u32>],
        temperature: f64,
    ) -> Result<(Tensor<2>, Tensor<2>), String> {
        let device = self.vlm.img_pos.device();
        // A target's last token is predicted, never read: the rows hold `<bos>` and all but
        // it, as decoding's last step did (so whatever decoding fits, scoring fits).
        let read: Vec<Vec<u32>> = targets
            .iter()
            .map(|t| t[..t.len().saturating_sub(1)].to_vec())
            .collect();
        let logits = self.logits(inputs, &read)?;
        let [b, l, _] = logits.dims();
        let width = targets.iter().map(Vec::len).max().unwrap_or(0).max(1);
        // Row r's target token k is predicted at text position start_r + k, where start_r is
        // the position of its <bos>.
        let mut pos = vec![0i64; b * width];
        let mut tok = vec![0i64; b * width];
        let mut weight = vec![0f32; b * width];
        for (r, (input, target)) in inputs.iter().zip(targets).enumerate() {
            let start = input.prompt.len() + input.reflection.len();
            for (k, &t) in target.iter().enumerate() {
                pos[r * width + k] = (start + k) as i64;
                tok[r * width + k] = i64::from(t);
                weight[r * width + k] = 1.0;
            }
        }
        let v = logits.dims()[2];
        let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [b, width]), &device);
        let at = logits.gather(1, pos.unsqueeze_dim::<3>(2).expand([b, width, v]));
        let mask: Vec<f32> = (0..v)
            .map(|i| if writable(i) { 0.0 } else { MASKED })
            .collect();
        let mask = Tensor::<1>::from_data(TensorData::new(mask, [v]), &device)
            .reshape([1, 1, v])
            .expand([b, width, v]);
        let logp = log_softmax(at.div_scalar(temperature) + mask, 2);
        let tok = Tensor::<2, Int>::from_data(TensorData::new(tok, [b, width]), &device);
        let chosen = logp
            .gather(2, tok.unsqueeze_dim::<3>(2))
            .reshape([b, width]);
        let weight = Tensor::<2>::from_data(TensorData::new(weight, [b, width]), &device);
        debug_assert!(width <= l);
        Ok((chosen * weight.clone(), weight))
    }

    /// Each given edit prompt's per-token log-probabilities, on the CPU.
    pub fn score(
        &self,
        inputs: &[PolicyInput],
        targets: &[Vec<u32>],
        temperature: f64,
    ) -> Result<Vec<Vec<f32>>, String> {
        let (logp, _) = self.target_logprobs(inputs, targets, temperature)?;
        let width = logp.dims()[1];
        let flat = logp
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        Ok(targets
            .iter()
            .enumerate()
            .map(|(r, t)| flat[r * width..r * width + t.len()].to_vec())
            .collect())
    }

    /// Decodes one edit prompt per input; `rngs` (one per input) drive sampling.
    pub fn decode<R: Rng>(
        &self,
        inputs: &[PolicyInput],
        decoding: &Decoding,
        rngs: &mut [R],
    ) -> Result<Vec<Decoded>, String> {
        let mut out: Vec<Decoded> = inputs
            .iter()
            .map(|_| Decoded {
                tokens: Vec::new(),
                logprobs: Vec::new(),
            })
            .collect();
        let mut done = vec![false; inputs.len()];
        for _ in 0..decoding.max_tokens {
            if done.iter().all(|&d| d) {
                break;
            }
            let targets: Vec<Vec<u32>> = out.iter().map(|d| d.tokens.clone()).collect();
            let logits = self.logits(inputs, &targets)?;
            let [_, l, v] = logits.dims();
            let flat = logits
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| format!("{e:?}"))?;
            for (r, input) in inputs.iter().enumerate() {
                if done[r] {
                    continue;
                }
                let at = input.prompt.len() + input.reflection.len() + out[r].tokens.len();
                let row = &flat[(r * l + at) * v..(r * l + at + 1) * v];
                let prefix = &out[r].tokens;
                let allowed =
                    |t: u32| !(decoding.grammar && decoding.greedy) || in_edit_language(prefix, t);
                let (token, logp) = pick(row, decoding, &allowed, &mut rngs[r]);
                out[r].tokens.push(token);
                out[r].logprobs.push(logp);
                done[r] = token == EOS;
            }
        }
        Ok(out)
    }
}

/// What the Policy may write: the words of prompts and edit prompts (`1..PROMPT_VOCAB_SIZE`)
/// and `<eos>`. The rest (`<pad>`, the reflection's words, `<bos>`) is masked out of its
/// softmax, so every edit prompt it writes is one the Editor can read, and its log-probs are
/// over what it may write.
pub fn writable(id: usize) -> bool {
    (1..crate::text::PROMPT_VOCAB_SIZE).contains(&id) || id == EOS as usize
}

/// The logit offset of ids the Policy may not write.
const MASKED: f32 = -1e9;

/// Picks the next token from one row of logits; returns it and its log-probability under
/// `softmax(logits / temperature)` over the [`writable`] ids. Greedy picks the likeliest token
/// that `allowed` accepts (the likeliest of all when it accepts none).
fn pick<R: Rng>(
    logits: &[f32],
    d: &Decoding,
    allowed: &dyn Fn(u32) -> bool,
    rng: &mut R,
) -> (u32, f32) {
    let t = d.temperature.max(1e-6);
    let scaled: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if writable(i) {
                f64::from(x) / t
            } else {
                f64::from(MASKED)
            }
        })
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let mut order: Vec<usize> = (0..scaled.len()).filter(|&i| writable(i)).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    let token = if d.greedy {
        order
            .iter()
            .copied()
            .find(|&i| allowed(i as u32))
            .unwrap_or(order[0])
    } else {
        let k = if d.top_k == 0 {
            order.len()
        } else {
            d.top_k.min(order.len())
        };
        let weights: Vec<f64> = order[..k]
            .iter()
            .map(|&i| (scaled[i] - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut chosen = order[k - 1];
        for (&i, w) in order[..k].iter().zip(&weights) {
            if u < *w {
                chosen = i;
                break;
            }
            u -= w;
        }
        chosen
    };
    (token as u32, (scaled[token] - lse) as f32)
}
