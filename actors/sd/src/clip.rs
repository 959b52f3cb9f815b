//! CLIP's text encoder (transformers' `CLIPTextModel`), as Stable Diffusion uses it: token
//! and position embeddings, pre-LayerNorm transformer layers with causal self-attention, a
//! final LayerNorm. Its `last_hidden_state` conditions the UNet.
//!
//! Module and field names follow transformers' parameter names, so a checkpoint's tensors
//! load by name (an optional `text_model.` prefix is dropped; Linear weights are transposed
//! from PyTorch's `[out, in]` by burn-store's PyTorch adapter).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use crate::SdError;
use rlrig_hf::HfError;

/// The fields of a `text_encoder/config.json` that shape the network.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the token states.
    pub hidden_size: usize,
    /// Width of each layer's MLP.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Longest token sequence.
    pub max_position_embeddings: usize,
    /// The MLP's activation: `quick_gelu` (SD 1.x) or `gelu` (SD 2.x's OpenCLIP).
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// transformers' class: `CLIPTextModelWithProjection` (SD3, SDXL's second encoder) adds
    /// `text_projection`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Width of `text_projection`'s output.
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// The end-of-text token whose final state is pooled (2: the legacy rule, the largest id).
    #[serde(default = "legacy_eos")]
    pub eos_token_id: i64,
}

fn legacy_eos() -> i64 {
    2
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    fn check(&self) -> Result<(), String> {
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!(
                "`hidden_act` = {:?}: supported are \"quick_gelu\" and \"gelu\"",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.with_projection() && self.projection_dim.is_none() {
            return Err("`projection_dim` is missing for CLIPTextModelWithProjection".into());
        }
        Ok(())
    }

    fn with_projection(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection")
    }
}

#[derive(Module, Debug)]
struct Embeddings {
    token_embedding: Embedding,
    position_embedding: Embedding,
}

#[derive(Module, Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let split = |t: Tensor<3>| {
            t.reshape([b, l, self.heads, d / self.heads])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (
            split(self.q_proj.forward(x.clone())),
            split(self.k_proj.forward(x.clone())),
            split(self.v_proj.forward(x)),
        );
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let out = attention(q, k, v, None, None, options);
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, l, d]))
    }
}

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    quick: bool,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.fc1.forward(x);
        let h = if self.quick {
            h.clone() * sigmoid(h * 1.702)
        } else {
            gelu(h)
        };
        self.fc2.forward(h)
    }
}

#[derive(Module, Debug)]
struct EncoderLayer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let h = h.clone() + self.self_attn.forward(self.layer_norm1.forward(h));
        h.clone() + self.mlp.forward(self.layer_norm2.forward(h))
    }
}

#[derive(Module, Debug)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

/// The CLIP text encoder.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    embeddings: Embeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    eos_token_id: i64,
}

impl ClipTextModel {
    /// A model of `config` with freshly initialised weights.
    pub fn new(config: &ClipTextConfig, device: &Device) -> Result<Self, SdError> {
        config.check().map_err(SdError::Unsupported)?;
        let d = config.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| EncoderLayer {
                self_attn: SelfAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                    heads: config.num_attention_heads,
                },
                layer_norm1: ln(),
                mlp: Mlp {
                    fc1: linear(d, config.intermediate_size),
                    fc2: linear(config.intermediate_size, d),
                    quick: config.hidden_act == "quick_gelu",
                },
                layer_norm2: ln(),
            })
            .collect();
        Ok(ClipTextModel {
            embeddings: Embeddings {
                token_embedding: EmbeddingConfig::new(config.vocab_size, d).init(device),
                position_embedding: EmbeddingConfig::new(config.max_position_embeddings, d)
                    .init(device),
            },
            encoder: Encoder { layers },
            final_layer_norm: ln(),
            text_projection: config.with_projection().then(|| {
                LinearConfig::new(d, config.projection_dim.unwrap_or(d))
                    .with_bias(false)
                    .init(device)
            }),
            eos_token_id: config.eos_token_id,
        })
    }

    /// Loads a diffusers `text_encoder/` directory (`config.json`, `model.safetensors`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: ClipTextConfig = crate::read_json(&config_path)?;
        let mut model = ClipTextModel::new(&config, device).map_err(|e| {
            SdError::File(HfError::Config {
                path: config_path,
                message: e.to_string(),
            })
        })?;
        let weights = dir.join("model.safetensors");
        rlrig_hf::load::pytorch_weights(
            &mut model,
            &weights,
            &[(r"^text_model\.", "")],
            &["position_ids"],
        )?;
        Ok(model)
    }

    /// `[B, L]` token ids → the states after each layer (`[0]` the embeddings) and the
    /// `last_hidden_state` (the final LayerNorm of the last), each `[B, L, D]`.
    pub fn forward_all(&self, ids: Tensor<2, Int>) -> (Vec<Tensor<3>>, Tensor<3>) {
        let [_, l] = ids.dims();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &ids.device()).unsqueeze::<2>();
        let mut h = self.embeddings.token_embedding.forward(ids)
            + self.embeddings.position_embedding.forward(positions);
        let mut states = vec![h.clone()];
        for layer in &self.encoder.layers {
            h = layer.forward(h);
            states.push(h.clone());
        }
        (states, self.final_layer_norm.forward(h))
    }

    /// `[B, L]` token ids → `last_hidden_state`, `[B, L, D]`: what conditions the UNet.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_all(ids).1
    }

    /// Whether it is a `CLIPTextModelWithProjection` (has `text_projection`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// `CLIPTextModelWithProjection`'s `text_embeds`, `[B, projection_dim]`: the final state
    /// (`last_hidden`, from [`forward_all`](Self::forward_all)) at each sequence's end-of-text
    /// token (the first `eos_token_id`, or the largest id under the legacy id 2) through
    /// `text_projection`. `None` for a model without the projection.
    pub fn text_embeds(&self, ids: &Tensor<2, Int>, last_hidden: Tensor<3>) -> Option<Tensor<2>> {
        let projection = self.text_projection.as_ref()?;
        let [b, l] = ids.dims();
        let d = last_hidden.dims()[2];
        let data: Vec<i64> = ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("token ids");
        let rows: Vec<Tensor<3>> = data
            .chunks(l)
            .enumerate()
            .map(|(i, row)| {
                let at = if self.eos_token_id == 2 {
                    (0..l)
                        .max_by_key(|&j| (row[j], std::cmp::Reverse(j)))
                        .unwrap_or(0)
                } else {
                    row.iter()
                        .position(|&t| t == self.eos_token_id)
                        .unwrap_or(0)
                };
                last_hidden.clone().slice([i..i + 1, at..at + 1, 0..d])
            })
            .collect();
        Some(projection.forward(Tensor::cat(rows, 0).reshape([b, d])))
    }
}
