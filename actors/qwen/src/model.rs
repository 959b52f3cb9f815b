//! Qwen2.5-VL whole: the vision tower's tokens in place of the image's placeholder tokens, the
//! 3-D rotary positions transformers' `get_rope_index` gives, the language head, KV-cached
//! decoding (greedy or sampled) and the re-scoring of tokens that GRPO needs.
//!
//! Decoding samples from the KV-cached logits; the log-probabilities a [`Generation`] reports
//! are then taken by one re-scoring pass over the prompt and the sampled tokens
//! ([`Net::token_logprobs`]), the computation a GRPO learner repeats, so that a learner with
//! the same weights finds the same numbers (`ρ = 1` before its first step).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rlrig_contract::Image;
use rlrig_hf::lora::{Adapted, Proj};

use crate::QwenError;
use crate::chat::Chat;
use crate::config::QwenConfig;
use crate::preprocess::{Patches, ProcessorConfig, preprocess};
use crate::text::{KvCache, Rotary, TextModel};
use crate::vision::{VisionLayout, VisionTower};

/// The two towers under transformers' module names (`model.visual`, `model.language_model`).
#[derive(Module, Debug)]
pub struct Towers {
    pub(crate) visual: VisionTower,
    pub(crate) language_model: TextModel,
}

/// The network: the towers and the language head (absent when tied to the token embedding).
#[derive(Module, Debug)]
pub struct Net {
    pub(crate) model: Towers,
    lm_head: Option<Linear>,
}

/// A tokenised prompt with its image's patches.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// Token ids, the image's placeholder expanded to one per merged patch.
    pub ids: Vec<u32>,
    /// The image's patches, if the prompt shows one.
    pub image: Option<Patches>,
}

/// How to pick tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 decodes greedily.
    pub temperature: f64,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
}

/// Generated tokens and their log-probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The tokens, the stop token included when one ended the generation.
    pub tokens: Vec<u32>,
    /// `log π(token | prefix)` at the sampling temperature (at 1 for greedy decoding), from
    /// the re-scoring pass.
    pub logprobs: Vec<f32>,
    /// The same from the KV-cached decoding steps (equal up to rounding).
    pub cached_logprobs: Vec<f32>,
}

impl Net {
    /// A network of `config` with freshly initialised weights.
    pub fn new(config: &QwenConfig, device: &Device) -> Self {
        let t = &config.text;
        Net {
            model: Towers {
                visual: VisionTower::new(&config.vision, device),
                language_model: TextModel::new(t, device),
            },
            lm_head: (!config.tie_word_embeddings).then(|| {
                LinearConfig::new(t.hidden_size, t.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
        }
    }

    /// Logits `[1, L, vocab]` of a sequence: `prompt` followed by `extra` tokens. With
    /// `cache`, only the tokens after those it holds are fed (`prompt` and `extra` still
    /// describe the whole sequence) and only their logits come back.
    pub fn logits(
        &self,
        config: &QwenConfig,
        prompt: &Prompt,
        extra: &[u32],
        cache: Option<&mut KvCache>,
        lora: bool,
    ) -> Result<Tensor<3>, QwenError> {
        Ok(self.head(self.hidden_states(config, prompt, extra, cache, lora)?))
    }

    /// The decoder's last hidden states (after the final norm), `[1, L, hidden]`, of what
    /// [`Net::logits`] feeds.
    pub fn hidden_states(
        &self,
        config: &QwenConfig,
        prompt: &Prompt,
        extra: &[u32],
        cache: Option<&mut KvCache>,
        lora: bool,
    ) -> Result<Tensor<3>, QwenError> {
        let device = self.model.language_model.embed_tokens.weight.device();
        let ids: Vec<u32> = prompt.ids.iter().chain(extra).copied().collect();
        // Generated tokens are text whatever they are (as transformers' decoding positions
        // them): the image is the prompt's.
        let mut positions = positions(config, &prompt.ids, prompt.image.as_ref().map(|p| p.grid))?;
        let next = positions.iter().flatten().max().map_or(0, |m| m + 1);
        for axis in &mut positions {
            axis.extend((0..extra.len() as i64).map(|k| next + k));
        }
        let from = cache.as_ref().map_or(0, |c| c.len());
        if from >= ids.len() {
            return Err(QwenError::Invalid(format!(
                "the cache holds {from} tokens of a {}-token sequence: nothing to feed",
                ids.len()
            )));
        }
        let fed = &ids[from..];
        let fed_positions: [Vec<Vec<i64>>; 3] = positions.map(|axis| vec![axis[from..].to_vec()]);
        let rotary = Rotary::new(&config.text, &fed_positions, &device);
        let id_tensor = Tensor::<2, Int>::from_data(
            TensorData::new(fed.iter().map(|&i| i as i64).collect(), [1, fed.len()]),
            &device,
        );
        let mut x = self.model.language_model.embed(id_tensor);
        if let (Some(patches), 0) = (&prompt.image, from) {
            x = self.with_image(config, x, &prompt.ids, patches, lora)?;
        }
        Ok(self.model.language_model.forward(x, &rotary, cache, lora))
    }

    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(l) => l.forward(h),
            None => h.matmul(
                self.model
                    .language_model
                    .embed_tokens
                    .weight
                    .val()
                    .transpose()
                    .unsqueeze::<3>(),
            ),
        }
    }

    /// The vision tower.
    pub fn vision(&self) -> &VisionTower {
        &self.model.visual
    }

    /// The vision tower's tokens for `patches`, `[tokens, hidden]`.
    pub fn image_tokens(&self, config: &QwenConfig, patches: &Patches, lora: bool) -> Tensor<2> {
        let device = self.model.language_model.embed_tokens.weight.device();
        let layout = VisionLayout::new(&config.vision, &[patches.grid]);
        let x = Tensor::from_data(
            TensorData::new(patches.values.clone(), [patches.rows, patches.cols]),
            &device,
        );
        self.model
            .visual
            .forward(x, &layout, &config.vision.fullatt_block_indexes, lora)
    }

    /// `x` with the image's placeholder embeddings (in `ids`, the prompt's) replaced by the
    /// vision tower's tokens.
    fn with_image(
        &self,
        config: &QwenConfig,
        x: Tensor<3>,
        ids: &[u32],
        patches: &Patches,
        lora: bool,
    ) -> Result<Tensor<3>, QwenError> {
        let slots: Vec<usize> = (0..ids.len())
            .filter(|&i| ids[i] == config.image_token_id)
            .collect();
        let tokens = self.image_tokens(config, patches, lora);
        let n = tokens.dims()[0];
        let start = slots.first().copied().unwrap_or(0);
        if slots.len() != n || slots.last().is_some_and(|&e| e + 1 - start != n) {
            return Err(QwenError::Invalid(format!(
                "the prompt has {} image placeholder tokens in a row where the image gives {n}",
                slots.len()
            )));
        }
        let [_, l, d] = x.dims();
        Ok(Tensor::cat(
            vec![
                x.clone().slice([0..1, 0..start, 0..d]),
                tokens.unsqueeze_dim(0),
                x.slice([0..1, start + n..l, 0..d]),
            ],
            1,
        ))
    }

    /// `log π(tokens[i] | prompt, tokens[..i])` at `temperature` (1 when 0), `[n]`, with a
    /// gradient when the network is on an autodiff device.
    pub fn token_logprobs(
        &self,
        config: &QwenConfig,
        prompt: &Prompt,
        tokens: &[u32],
        temperature: f64,
        lora: bool,
    ) -> Result<Tensor<1>, QwenError> {
        let n = tokens.len();
        if n == 0 {
            return Err(QwenError::Invalid("no tokens to score".into()));
        }
        let h = self.hidden_states(config, prompt, &tokens[..n - 1], None, lora)?;
        let [_, l, d] = h.dims();
        let last = self.head(h.slice([0..1, l - n..l, 0..d]));
        let v = last.dims()[2];
        let last = last.reshape([n, v]);
        let t = if temperature > 0.0 { temperature } else { 1.0 };
        let logp = log_softmax(last / t, 1);
        let device = logp.device();
        let idx = Tensor::<2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&i| i as i64).collect(), [n, 1]),
            &device,
        );
        Ok(logp.gather(1, idx).reshape([n]))
    }

    /// Generates after `prompt` with a KV cache until a token of `stop` or
    /// `sampling.max_new_tokens`; the log-probs come from re-scoring ([`Generation`]).
    pub fn generate<R: Rng>(
        &self,
        config: &QwenConfig,
        prompt: &Prompt,
        sampling: Sampling,
        stop: &[u32],
        rng: &mut R,
        lora: bool,
    ) -> Result<Generation, QwenError> {
        let mut cache = KvCache::default();
        let mut tokens: Vec<u32> = Vec::new();
        let mut cached = Vec::new();
        let t = if sampling.temperature > 0.0 {
            sampling.temperature
        } else {
            1.0
        };
        while tokens.len() < sampling.max_new_tokens {
            // The language head on the last position only.
            let h = self.hidden_states(config, prompt, &tokens, Some(&mut cache), lora)?;
            let [_, l, d] = h.dims();
            let row: Vec<f32> = self
                .head(h.slice([0..1, l - 1..l, 0..d]))
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| QwenError::Invalid(format!("logits: {e:?}")))?;
            let logp = log_softmax_row(&row, t);
            let next = if sampling.temperature > 0.0 {
                sample(&logp, rng)
            } else {
                argmax(&row)
            };
            cached.push(logp[next]);
            tokens.push(next as u32);
            if stop.contains(&(next as u32)) {
                break;
            }
        }
        let logprobs = if tokens.is_empty() {
            Vec::new()
        } else {
            self.token_logprobs(config, prompt, &tokens, sampling.temperature, lora)?
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| QwenError::Invalid(format!("log-probs: {e:?}")))?
        };
        Ok(Generation {
            tokens,
            logprobs,
            cached_logprobs: cached,
        })
    }
}

/// `log softmax(row / t)` in f64, rounded to f32.
fn log_softmax_row(row: &[f32], t: f64) -> Vec<f32> {
    let scaled: Vec<f64> = row.iter().map(|&x| f64::from(x) / t).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|x| (x - lse) as f32).collect()
}

/// The first index of the largest value (as torch's argmax).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

fn sample<R: Rng>(logp: &[f32], rng: &mut R) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, &l) in logp.iter().enumerate() {
        acc += f64::from(l).exp();
        if u < acc {
            return i;
        }
    }
    logp.len() - 1
}

/// The 3-D rotary positions of a sequence (`[temporal, height, width]`, each `[L]`), as
/// transformers' `get_rope_index`: text tokens count on by one on all three axes; an image's
/// run of placeholder tokens takes the position it starts at plus its merged row (height) and
/// column (width), and the text after it starts at that position plus the larger side.
pub fn positions(
    config: &QwenConfig,
    ids: &[u32],
    grid: Option<[usize; 3]>,
) -> Result<[Vec<i64>; 3], QwenError> {
    let m = config.vision.spatial_merge_size;
    let mut out: [Vec<i64>; 3] = Default::default();
    let mut pos: i64 = 0;
    let mut i = 0;
    let mut images = 0;
    while i < ids.len() {
        if ids[i] != config.image_token_id {
            for axis in &mut out {
                axis.push(pos);
            }
            pos += 1;
            i += 1;
            continue;
        }
        let [t, h, w] = grid.ok_or_else(|| {
            QwenError::Invalid("image placeholder tokens in a prompt without an image".into())
        })?;
        images += 1;
        if images > 1 {
            return Err(QwenError::Invalid(
                "more than one image in a prompt is not supported".into(),
            ));
        }
        let (gh, gw) = (h / m, w / m);
        let n = t * gh * gw;
        if ids[i..].len() < n || ids[i..i + n].iter().any(|&x| x != config.image_token_id) {
            return Err(QwenError::Invalid(format!(
                "the image needs {n} placeholder tokens in a row"
            )));
        }
        for ti in 0..t {
            for y in 0..gh {
                for x in 0..gw {
                    out[0].push(pos + ti as i64);
                    out[1].push(pos + y as i64);
                    out[2].push(pos + x as i64);
                }
            }
        }
        pos += gh.max(gw) as i64;
        i += n;
    }
    Ok(out)
}

/// Everything of a model directory but the weights: the image processor, the tokenizer and
/// the chat template, which turn an image and a text into a [`Prompt`].
pub struct Processor {
    /// `preprocessor_config.json`.
    pub image: ProcessorConfig,
    /// `tokenizer.json` and the chat template.
    pub chat: Chat,
}

impl Processor {
    /// Reads a transformers directory's processor files.
    pub fn from_dir(dir: &Path) -> Result<Self, QwenError> {
        Ok(Processor {
            image: ProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?,
            chat: Chat::from_dir(dir)?,
        })
    }

    /// The prompt of one user turn showing `image` (if any) and saying `text`, the
    /// assistant's turn opened.
    pub fn prompt(&self, image: Option<&Image>, text: &str) -> Result<Prompt, QwenError> {
        let patches = image.map(|i| preprocess(&self.image, i)).transpose()?;
        let mut rendered = self.chat.render(patches.is_some(), text)?;
        if let Some(p) = &patches {
            let n = self.image.image_tokens(p.grid);
            rendered = rendered.replacen("<|image_pad|>", &"<|image_pad|>".repeat(n), 1);
        }
        Ok(Prompt {
            ids: self.chat.encode(&rendered)?,
            image: patches,
        })
    }

    /// Tokens that end a generation: `config`'s end tokens, `<|im_end|>` and `<|endoftext|>`.
    pub fn stop_tokens(&self, config: &QwenConfig) -> Vec<u32> {
        let mut v = config.eos_token_ids.clone();
        v.extend(
            ["<|im_end|>", "<|endoftext|>"]
                .iter()
                .filter_map(|t| self.chat.token_id(t)),
        );
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A loaded model: the network, its configuration and its processor.
pub struct QwenVl {
    /// The network.
    pub net: Net,
    /// `config.json`.
    pub config: QwenConfig,
    /// The image processor, tokenizer and chat template.
    pub processor: Processor,
}

impl QwenVl {
    /// Loads a transformers directory: `config.json`, `model.safetensors` (or shards with
    /// `model.safetensors.index.json`), `tokenizer.json`, `preprocessor_config.json` and the
    /// chat template. Tensor names of the published checkpoints (`model.layers.*`,
    /// `visual.*`) and of transformers 5's modules (`model.language_model.*`,
    /// `model.visual.*`) both load.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self, QwenError> {
        let config = QwenConfig::from_file(&dir.join("config.json"))?;
        let processor = Processor::from_dir(dir)?;
        let mut net = Net::new(&config, device);
        let ignore: &[&str] = if config.tie_word_embeddings {
            &["lm_head.weight"]
        } else {
            &[]
        };
        rlrig_hf::load::pytorch_weights(
            &mut net,
            &dir.join("model.safetensors"),
            &[
                (r"^visual\.", "model.visual."),
                (
                    r"^model\.(embed_tokens|layers|norm)\.",
                    "model.language_model.$1.",
                ),
                (
                    r"\.(self_attn\.[qkvo]_proj|mlp\.gate_proj|mlp\.up_proj|mlp\.down_proj|attn\.qkv|attn\.proj)\.",
                    ".$1.linear.",
                ),
                (r"\.merger\.mlp\.0\.", ".merger.fc1."),
                (r"\.merger\.mlp\.2\.", ".merger.fc2."),
            ],
            ignore,
        )?;
        Ok(QwenVl {
            net,
            config,
            processor,
        })
    }

    /// The prompt of one user turn ([`Processor::prompt`]).
    pub fn prompt(&self, image: Option<&Image>, text: &str) -> Result<Prompt, QwenError> {
        self.processor.prompt(image, text)
    }
}

impl Adapted for Net {
    fn projections(&self) -> Vec<(String, &Proj)> {
        let mut v = Vec::new();
        for (i, b) in self.model.visual.blocks.iter().enumerate() {
            let p = format!("model.visual.blocks.{i}");
            v.push((format!("{p}.attn.qkv"), &b.attn.qkv));
            v.push((format!("{p}.attn.proj"), &b.attn.proj));
            v.push((format!("{p}.mlp.gate_proj"), &b.mlp.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &b.mlp.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &b.mlp.down_proj));
        }
        for (i, l) in self.model.language_model.layers.iter().enumerate() {
            let p = format!("model.language_model.layers.{i}");
            let a = &l.self_attn;
            v.push((format!("{p}.self_attn.q_proj"), &a.q_proj));
            v.push((format!("{p}.self_attn.k_proj"), &a.k_proj));
            v.push((format!("{p}.self_attn.v_proj"), &a.v_proj));
            v.push((format!("{p}.self_attn.o_proj"), &a.o_proj));
            v.push((format!("{p}.mlp.gate_proj"), &l.mlp.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &l.mlp.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &l.mlp.down_proj));
        }
        v
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let mut v = Vec::new();
        for (i, b) in self.model.visual.blocks.iter_mut().enumerate() {
            let p = format!("model.visual.blocks.{i}");
            v.push((format!("{p}.attn.qkv"), &mut b.attn.qkv));
            v.push((format!("{p}.attn.proj"), &mut b.attn.proj));
            v.push((format!("{p}.mlp.gate_proj"), &mut b.mlp.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &mut b.mlp.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut b.mlp.down_proj));
        }
        for (i, l) in self.model.language_model.layers.iter_mut().enumerate() {
            let p = format!("model.language_model.layers.{i}");
            let a = &mut l.self_attn;
            v.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            v.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            v.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            v.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            v.push((format!("{p}.mlp.gate_proj"), &mut l.mlp.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &mut l.mlp.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut l.mlp.down_proj));
        }
        v
    }
}
