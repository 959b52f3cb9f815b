//! T5's encoder (transformers' `T5EncoderModel`), Stable Diffusion 3's third text encoder, and
//! its tokenizer (`tokenizer.json` of `T5TokenizerFast`).
//!
//! Pre-RMSNorm blocks (no mean subtraction, no bias) of self-attention without score scaling,
//! whose logits get a learned bias per head and relative-position bucket (computed once, by the
//! first block, and shared), and a feed-forward that is gated GELU (T5 v1.1, SD3's
//! t5-v1_1-xxl) or ReLU (the original T5). Module names follow transformers' parameter names.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::tensor::activation::{gelu_approximate, relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::SdError;
use crate::blocks::linear;
use rlrig_hf::HfError;

/// The fields of a T5 `config.json` that shape the encoder.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct T5Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the token states.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets.
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share a bucket.
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    /// `gated-gelu` (T5 v1.1) or `relu` (T5).
    #[serde(default = "relu_name")]
    pub feed_forward_proj: String,
    /// RMSNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn relu_name() -> String {
    "relu".into()
}
fn eps() -> f64 {
    1e-6
}

/// T5's RMSNorm: `x / √(mean(x²) + ε) · w`.
#[derive(Module, Debug)]
struct T5Norm {
    weight: Param<Tensor<1>>,
    eps: f64,
}

impl T5Norm {
    fn new(d: usize, eps: f64, device: &Device) -> Self {
        T5Norm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        (x / rms) * self.weight.val().unsqueeze::<3>()
    }
}

#[derive(Module, Debug)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_attention_bias: Option<Embedding>,
}

#[derive(Module, Debug)]
struct AttentionLayer {
    self_attention: SelfAttention,
    layer_norm: T5Norm,
}

/// `DenseReluDense`: `wo(gelu(wi_0·x) ∘ wi_1·x)` or `wo(relu(wi·x))`.
#[derive(Module, Debug)]
struct DenseReluDense {
    wi_0: Option<Linear>,
    wi_1: Option<Linear>,
    wi: Option<Linear>,
    wo: Linear,
}

#[derive(Module, Debug)]
struct FeedForwardLayer {
    dense: DenseReluDense,
    layer_norm: T5Norm,
}

#[derive(Module, Debug)]
struct Block {
    attention: AttentionLayer,
    ff: FeedForwardLayer,
}

#[derive(Module, Debug)]
struct Stack {
    block: Vec<Block>,
    final_layer_norm: T5Norm,
}

/// The T5 encoder.
#[derive(Module, Debug)]
pub struct T5Encoder {
    shared: Embedding,
    encoder: Stack,
    heads: usize,
    d_kv: usize,
    buckets: usize,
    max_distance: usize,
}

impl T5Encoder {
    /// An encoder of `config` with freshly initialised weights.
    pub fn new(config: &T5Config, device: &Device) -> Result<Self, SdError> {
        let gated = match config.feed_forward_proj.as_str() {
            "gated-gelu" => true,
            "relu" => false,
            other => {
                return Err(SdError::Unsupported(format!(
                    "`feed_forward_proj` = {other:?}: supported are \"gated-gelu\" and \"relu\""
                )));
            }
        };
        if config.num_heads == 0 || config.relative_attention_num_buckets < 4 {
            return Err(SdError::Unsupported(
                "`num_heads` must be positive and `relative_attention_num_buckets` at least 4"
                    .into(),
            ));
        }
        let (d, inner, f) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
        let norm = || T5Norm::new(d, config.layer_norm_epsilon, device);
        let block = (0..config.num_layers)
            .map(|i| Block {
                attention: AttentionLayer {
                    self_attention: SelfAttention {
                        q: linear(d, inner, false, device),
                        k: linear(d, inner, false, device),
                        v: linear(d, inner, false, device),
                        o: linear(inner, d, false, device),
                        relative_attention_bias: (i == 0).then(|| {
                            EmbeddingConfig::new(
                                config.relative_attention_num_buckets,
                                config.num_heads,
                            )
                            .init(device)
                        }),
                    },
                    layer_norm: norm(),
                },
                ff: FeedForwardLayer {
                    dense: DenseReluDense {
                        wi_0: gated.then(|| linear(d, f, false, device)),
                        wi_1: gated.then(|| linear(d, f, false, device)),
                        wi: (!gated).then(|| linear(d, f, false, device)),
                        wo: linear(f, d, false, device),
                    },
                    layer_norm: norm(),
                },
            })
            .collect();
        Ok(T5Encoder {
            shared: EmbeddingConfig::new(config.vocab_size, d).init(device),
            encoder: Stack {
                block,
                final_layer_norm: norm(),
            },
            heads: config.num_heads,
            d_kv: config.d_kv,
            buckets: config.relative_attention_num_buckets,
            max_distance: config.relative_attention_max_distance,
        })
    }

    /// Loads a `text_encoder_3/` directory (`config.json`, `model.safetensors`). The token
    /// embedding may be stored as `shared.weight` or `encoder.embed_tokens.weight`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: T5Config = crate::read_json(&config_path)?;
        let mut model = T5Encoder::new(&config, device).map_err(|e| {
            SdError::File(HfError::Config {
                path: config_path,
                message: e.to_string(),
            })
        })?;
        rlrig_hf::load::pytorch_weights(
            &mut model,
            &dir.join("model.safetensors"),
            &[
                (r"^encoder\.embed_tokens\.", "shared."),
                (r"\.layer\.0\.SelfAttention\.", ".attention.self_attention."),
                (r"\.layer\.0\.layer_norm\.", ".attention.layer_norm."),
                (r"\.layer\.1\.DenseReluDense\.", ".ff.dense."),
                (r"\.layer\.1\.layer_norm\.", ".ff.layer_norm."),
            ],
            &[],
        )?;
        Ok(model)
    }

    /// Width of the states it returns (`d_model`).
    pub fn width(&self) -> usize {
        self.shared.weight.dims()[1]
    }

    /// transformers' bidirectional relative-position bucket of `k − q`.
    fn bucket(&self, relative: i64) -> usize {
        let half = self.buckets / 2;
        let mut bucket = if relative > 0 { half } else { 0 };
        let distance = relative.unsigned_abs() as usize;
        let exact = half / 2;
        bucket += if distance < exact {
            distance
        } else {
            let ratio = ((distance as f32 / exact as f32).ln()
                / (self.max_distance as f32 / exact as f32).ln()
                * (half - exact) as f32) as usize;
            (exact + ratio).min(half - 1)
        };
        bucket
    }

    /// `[B, L]` token ids → the final states `[B, L, d_model]` (no attention mask, as SD3's
    /// pipeline calls it: padding tokens are attended to).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let device = ids.device();
        let mut h = self.shared.forward(ids);
        let buckets: Vec<i64> = (0..l)
            .flat_map(|q| (0..l).map(move |k| (q, k)))
            .map(|(q, k)| self.bucket(k as i64 - q as i64) as i64)
            .collect();
        let buckets = Tensor::<2, Int>::from_data(TensorData::new(buckets, [1, l * l]), &device);
        let first = &self.encoder.block[0].attention.self_attention;
        let bias = first
            .relative_attention_bias
            .as_ref()
            .expect("the first block holds the relative attention bias")
            .forward(buckets)
            .reshape([l, l, self.heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>();
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, self.d_kv]).swap_dims(1, 2);
        for block in &self.encoder.block {
            let a = &block.attention;
            let n = a.layer_norm.forward(h.clone());
            let sa = &a.self_attention;
            let (q, k, v) = (
                split(sa.q.forward(n.clone())),
                split(sa.k.forward(n.clone())),
                split(sa.v.forward(n)),
            );
            let scores = q.matmul(k.swap_dims(2, 3)) + bias.clone();
            let out = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([
                b,
                l,
                self.heads * self.d_kv,
            ]);
            h = h + sa.o.forward(out);
            let f = &block.ff;
            let n = f.layer_norm.forward(h.clone());
            let d = &f.dense;
            let inner = match (&d.wi_0, &d.wi_1, &d.wi) {
                (Some(g), Some(lin), _) => gelu_approximate(g.forward(n.clone())) * lin.forward(n),
                (_, _, Some(wi)) => relu(wi.forward(n)),
                _ => unreachable!("built with one feed-forward form"),
            };
            h = h + d.wo.forward(inner);
        }
        self.encoder.final_layer_norm.forward(h)
    }
}

/// T5's tokenizer from `tokenizer.json`: ids with the end-of-sequence token, truncated and
/// padded to a fixed length.
pub struct T5Tokenizer {
    inner: Tokenizer,
}

impl T5Tokenizer {
    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, SdError> {
        let path = dir.as_ref().join("tokenizer.json");
        if !path.is_file() {
            return Err(SdError::File(HfError::Missing(path)));
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| {
            SdError::File(HfError::Config {
                path: path.clone(),
                message: e.to_string(),
            })
        })?;
        Ok(T5Tokenizer { inner })
    }

    /// Each text's ids, `len` long: truncated (keeping the end-of-sequence token) and padded
    /// with the pad token (id 0 unless the file names another).
    pub fn encode(&self, texts: &[&str], len: usize) -> Result<Vec<Vec<u32>>, SdError> {
        let mut tok = self.inner.clone();
        let (pad_id, pad_token) = tok
            .token_to_id("<pad>")
            .map_or((0, "<pad>".to_string()), |id| (id, "<pad>".to_string()));
        tok.with_truncation(Some(TruncationParams {
            max_length: len,
            ..Default::default()
        }))
        .map_err(|e| SdError::Tokenizer(e.to_string()))?;
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(len),
            pad_id,
            pad_token,
            ..Default::default()
        }));
        texts
            .iter()
            .map(|t| {
                tok.encode(*t, true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| SdError::Tokenizer(e.to_string()))
            })
            .collect()
    }
}
