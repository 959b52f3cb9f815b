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
//! * [`PolicyNet`](crate::vlm_policy::PolicyNet), in [`crate::vlm_policy`], is a prefix
//!   language model: `[image; prompt; reflection]` see each other, `<bos> edit prompt <eos>`
//!   is decoded causally after them, and a Linear head gives the next token's logits. It
//!   samples (temperature, top-k) or decodes greedily, returns each token's log-probability,
//!   and scores given edit prompts (for GRPO's ratios and replay); it writes only words of the
//!   edit-prompt vocabulary ([`writable`](crate::vlm_policy::writable)).

use crate::ModelError;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rlrig_contract::Image;
use serde::{Deserialize, Serialize};

use crate::architecture::Architecture;
use crate::image::images_to_tensor;
use crate::layers::{Block, sincos_2d, sincos_text, xavier};
use crate::text::{BOS, PAD, TextError, VOCAB_SIZE};

/// The architecture of a [`Vlm`] (and of the [`CheckerNet`] or
/// [`PolicyNet`](crate::vlm_policy::PolicyNet) around it).
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
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |m: String| Err(ModelError::Invalid(m));
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
    /// The architecture.
    pub(crate) fn config(&self) -> &VlmConfig {
        &self.config
    }

    /// The device the weights are on.
    pub(crate) fn device(&self) -> Device {
        self.img_pos.device()
    }

    pub(crate) fn new(config: &VlmConfig, device: &Device) -> Result<Self, ModelError> {
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
    pub(crate) fn forward(&self, images: Tensor<4>, rows: &TextRows) -> Tensor<3> {
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

/// `Architecture` for a network around a [`Vlm`] in its field `vlm`.
macro_rules! architecture {
    ($net:ty, $key:literal, $name:literal) => {
        impl Architecture for $net {
            type Config = VlmConfig;
            const CONFIG_KEY: &'static str = $key;
            const NAME: &'static str = $name;
            fn config(&self) -> &VlmConfig {
                self.vlm.config()
            }
            fn device(&self) -> Device {
                self.vlm.device()
            }
            fn build(config: &VlmConfig, device: &Device) -> Result<Self, ModelError> {
                <$net>::new(config, device)
            }
        }
    };
}
pub(crate) use architecture;

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
    pub fn new(config: &VlmConfig, device: &Device) -> Result<Self, ModelError> {
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
    ) -> Result<(Tensor<2>, Tensor<2>), ModelError> {
        let device = self.vlm.img_pos.device();
        let n = self.vlm.config.num_patches();
        let mut rows = TextRows::default();
        let mut row_images = Vec::new();
        let mut at_all = Vec::new();
        for (image, qs) in images.iter().zip(questions) {
            let (r, at) = self.pack(qs)?;
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
        let x = images_to_tensor(&row_images, &device)?;
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
    ) -> Result<Vec<Answer>, ModelError> {
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
