//! The Qwen2 decoder of Qwen2.5-VL (transformers' `Qwen2_5_VLTextModel`): token embedding,
//! pre-RMSNorm layers of grouped-query attention (biased q / k / v, unbiased output) with
//! multimodal rotary positions, and a bias-free SwiGLU MLP; a final RMSNorm.
//!
//! Multimodal rotary positions (M-RoPE): every token has a temporal, a height and a width
//! position (equal for text); the head's rotary frequencies are split into three sections
//! (`mrope_section`), each turned by one of the three positions.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rlrig_hf::lora::Proj;

use crate::config::TextConfig;
use crate::layers::{Mlp, RmsNorm, rotate_half};

/// Self-attention of a decoder layer.
#[derive(Module, Debug)]
pub struct Attention {
    pub(crate) q_proj: Proj,
    pub(crate) k_proj: Proj,
    pub(crate) v_proj: Proj,
    pub(crate) o_proj: Proj,
    heads: usize,
    kv_heads: usize,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub(crate) self_attn: Attention,
    pub(crate) mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// The decoder.
#[derive(Module, Debug)]
pub struct TextModel {
    pub(crate) embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    norm: RmsNorm,
}

/// Keys and values of the tokens seen so far, per layer (`[B, kv_heads, T, head]`, after the
/// rotary turn).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
}

impl KvCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rotary cosines and sines for a sequence, `[B, L, head]` each.
#[derive(Clone, Debug)]
pub struct Rotary {
    cos: Tensor<3>,
    sin: Tensor<3>,
}

impl Rotary {
    /// The tables for 3-D positions `positions[axis][b][l]` (temporal, height, width).
    pub fn new(config: &TextConfig, positions: &[Vec<Vec<i64>>; 3], device: &Device) -> Self {
        let head = config.head_dim();
        let half = head / 2;
        let inv: Vec<f32> = (0..half)
            .map(|j| 1.0 / (config.rope_theta as f32).powf((2 * j) as f32 / head as f32))
            .collect();
        let [s0, s1, _] = config.mrope_section;
        let axis = |j: usize| {
            if j < s0 {
                0
            } else if j < s0 + s1 {
                1
            } else {
                2
            }
        };
        let (b, l) = (positions[0].len(), positions[0].first().map_or(0, Vec::len));
        let (mut cos, mut sin) = (
            Vec::with_capacity(b * l * head),
            Vec::with_capacity(b * l * head),
        );
        for (t_row, (h_row, w_row)) in positions[0]
            .iter()
            .zip(positions[1].iter().zip(&positions[2]))
        {
            for ((&pt, &ph), &pw) in t_row.iter().zip(h_row).zip(w_row) {
                let p = [pt, ph, pw];
                let angles: Vec<f32> = (0..half).map(|j| p[axis(j)] as f32 * inv[j]).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        let t = |v| Tensor::from_data(TensorData::new(v, [b, l, head]), device);
        Rotary {
            cos: t(cos),
            sin: t(sin),
        }
    }

    fn turn(&self, x: Tensor<4>) -> Tensor<4> {
        let cos = self.cos.clone().unsqueeze_dim(1);
        let sin = self.sin.clone().unsqueeze_dim(1);
        x.clone() * cos + rotate_half(x) * sin
    }
}

impl TextModel {
    /// A decoder of `config` with freshly initialised weights.
    pub fn new(config: &TextConfig, device: &Device) -> Self {
        let (d, hd) = (config.hidden_size, config.head_dim());
        let proj = |i, o, bias| Proj::new(LinearConfig::new(i, o).with_bias(bias).init(device));
        TextModel {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, d).init(device),
            layers: (0..config.num_hidden_layers)
                .map(|_| DecoderLayer {
                    self_attn: Attention {
                        q_proj: proj(d, config.num_attention_heads * hd, true),
                        k_proj: proj(d, config.num_key_value_heads * hd, true),
                        v_proj: proj(d, config.num_key_value_heads * hd, true),
                        o_proj: proj(config.num_attention_heads * hd, d, false),
                        heads: config.num_attention_heads,
                        kv_heads: config.num_key_value_heads,
                    },
                    mlp: Mlp::new(d, config.intermediate_size, false, device),
                    input_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                    post_attention_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                })
                .collect(),
            norm: RmsNorm::new(d, config.rms_norm_eps, device),
        }
    }

    /// The token embeddings of `ids`, `[B, L, hidden]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(ids)
    }

    /// The final states `[B, L, hidden]` of `x` (embeddings) after the tokens `cache` holds,
    /// which it then also holds. Without a cache, the sequence attends causally to itself.
    pub fn forward(
        &self,
        mut x: Tensor<3>,
        rotary: &Rotary,
        mut cache: Option<&mut KvCache>,
        lora: bool,
    ) -> Tensor<3> {
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let slot = cache.as_deref_mut().map(|c| {
                if c.layers.len() <= i {
                    c.layers.push((
                        Tensor::empty([0, 0, 0, 0], &h.device()),
                        Tensor::empty([0, 0, 0, 0], &h.device()),
                    ));
                }
                &mut c.layers[i]
            });
            let h = layer.self_attn.forward(h, rotary, slot, lora);
            x = x + h;
            x = x.clone()
                + layer
                    .mlp
                    .forward(layer.post_attention_layernorm.forward(x), lora);
        }
        self.norm.forward(x)
    }
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        cache: Option<&mut (Tensor<4>, Tensor<4>)>,
        lora: bool,
    ) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let split = |t: Tensor<3>, heads: usize| {
            let d = t.dims()[2];
            t.reshape([b, l, heads, d / heads]).swap_dims(1, 2)
        };
        let q = rotary.turn(split(self.q_proj.forward(x.clone(), lora), self.heads));
        let mut k = rotary.turn(split(self.k_proj.forward(x.clone(), lora), self.kv_heads));
        let mut v = split(self.v_proj.forward(x, lora), self.kv_heads);
        let mut past = 0;
        if let Some((ck, cv)) = cache {
            if ck.dims()[2] > 0 {
                past = ck.dims()[2];
                k = Tensor::cat(vec![ck.clone(), k], 2);
                v = Tensor::cat(vec![cv.clone(), v], 2);
            }
            *ck = k.clone();
            *cv = v.clone();
        }
        let rep = self.heads / self.kv_heads;
        let widen = |t: Tensor<4>| {
            if rep == 1 {
                return t;
            }
            let [b, kv, n, d] = t.dims();
            t.unsqueeze_dim::<5>(2)
                .expand([b, kv, rep, n, d])
                .reshape([b, kv * rep, n, d])
        };
        let options = AttentionModuleOptions {
            is_causal: past == 0 && l > 1,
            ..Default::default()
        };
        // Several new tokens after cached ones: each sees the cache and the new ones before it.
        let bias = (past > 0 && l > 1).then(|| {
            let n = past + l;
            let v: Vec<f32> = (0..l)
                .flat_map(|i| {
                    (0..n).map(move |j| {
                        if j <= past + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            Tensor::<2>::from_data(TensorData::new(v, [l, n]), &q.device())
                .unsqueeze_dims::<4>(&[0, 1])
                .expand([b, self.heads, l, n])
        });
        let out = attention(q, widen(k), widen(v), None, bias, options);
        let hd = out.dims()[3];
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, l, self.heads * hd]), lora)
    }
}
