//! `SD3Transformer2DModel`: Stable Diffusion 3's MMDiT, a rectified-flow transformer over
//! image patches and text tokens (Esser et al. 2024, arXiv 2403.03206), configured from its
//! `transformer/config.json`.
//!
//! Each joint block modulates the image stream and the text stream by their own adaLN-Zero
//! from the timestep-and-pooled-text embedding, attends over the concatenation of both (image
//! tokens first), and runs a tanh-GELU MLP per stream; the last block updates only the image
//! stream. Supported: SD3.0 (no QK norm), SD3.5 large (`qk_norm = "rms_norm"`) and SD3.5 medium
//! (MMDiT-X: `dual_attention_layers` add an image-only self-attention in those blocks). Module
//! and field names follow diffusers' parameter names, so a checkpoint's tensors load by name.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};
use rlrig_models::fused;
use serde::Deserialize;

use crate::SdError;
use crate::blocks::{linear, sinusoidal};
use rlrig_hf::HfError;
use rlrig_hf::lora::{Adapted, Proj};

/// The fields of a `transformer/config.json`; any other key (but diffusers' `_`-prefixed
/// bookkeeping) is refused by name.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MmditConfig {
    /// Latent height and width it was trained at.
    pub sample_size: usize,
    /// Side of the square latent patch that becomes one token.
    pub patch_size: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Joint blocks.
    pub num_layers: usize,
    /// Width of one attention head.
    pub attention_head_dim: usize,
    /// Attention heads; the model width is heads × head width.
    pub num_attention_heads: usize,
    /// Width of the text states the pipeline passes (CLIP states padded, T5 states).
    pub joint_attention_dim: usize,
    /// Width the text states are projected to (the model width).
    pub caption_projection_dim: usize,
    /// Width of the pooled text embedding.
    pub pooled_projection_dim: usize,
    /// Latent channels out (`in_channels` when absent).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Side of the learned position-embedding grid that is cropped per latent size.
    pub pos_embed_max_size: usize,
    /// Blocks with the extra image self-attention (SD3.5 medium).
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    /// `null` or `"rms_norm"` on queries and keys.
    #[serde(default)]
    pub qk_norm: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl MmditConfig {
    fn check(&self) -> Result<(), String> {
        if let Some(key) = self.other.keys().find(|k| !k.starts_with('_')) {
            return Err(format!(
                "`{key}` is not a key of SD3Transformer2DModel this port supports"
            ));
        }
        if let Some(Some(class)) = self.other.get("_class_name").map(|v| v.as_str())
            && class != "SD3Transformer2DModel"
        {
            return Err(format!(
                "`_class_name` = {class:?}: only SD3Transformer2DModel is supported"
            ));
        }
        if let Some(n) = &self.qk_norm
            && n != "rms_norm"
        {
            return Err(format!(
                "`qk_norm` = {n:?}: supported are null and \"rms_norm\""
            ));
        }
        let width = self.num_attention_heads * self.attention_head_dim;
        if width == 0 || self.patch_size == 0 || self.num_layers == 0 {
            return Err(
                "`num_attention_heads`, `attention_head_dim`, `patch_size` and `num_layers` must be positive".into(),
            );
        }
        if self.caption_projection_dim != width {
            return Err(format!(
                "`caption_projection_dim` {} differs from the model width {width} (heads × head width)",
                self.caption_projection_dim
            ));
        }
        if let Some(&i) = self
            .dual_attention_layers
            .iter()
            .find(|&&i| i >= self.num_layers)
        {
            return Err(format!(
                "`dual_attention_layers` names layer {i} of {}",
                self.num_layers
            ));
        }
        Ok(())
    }

    fn width(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// RMSNorm over the last axis with a learned scale (QK norm).
#[derive(Module, Debug)]
struct RmsNorm {
    weight: Param<Tensor<1>>,
}

impl RmsNorm {
    fn new(d: usize, device: &Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let rms = (x.clone().square().mean_dim(3) + 1e-6).sqrt();
        (x / rms) * self.weight.val().unsqueeze::<4>()
    }
}

/// `LN(x)·(1 + scale) + shift`: LayerNorm over the last axis without affine parameters (eps
/// 1e-6), then one `[B, D]` scale and shift per item, as one fused operation.
fn ln_modulate(x: Tensor<3>, shift: &Tensor<2>, scale: &Tensor<2>) -> Tensor<3> {
    fused::ln_modulate(x, shift.clone(), scale.clone(), 1e-6)
}

/// `[B, D]` gate times `[B, N, D]`.
fn gated(gate: &Tensor<2>, x: Tensor<3>) -> Tensor<3> {
    gate.clone().unsqueeze_dim::<3>(1) * x
}

/// The conditioning Linear of an adaLN: `linear(silu(temb))` cut into `n` `[B, D]` chunks.
#[derive(Module, Debug)]
struct AdaNorm {
    linear: Linear,
}

impl AdaNorm {
    fn chunks(&self, temb: &Tensor<2>, n: usize) -> Vec<Tensor<2>> {
        self.linear.forward(silu(temb.clone())).chunk(n, 1)
    }

    /// `AdaLayerNormContinuous`: `LN(x)·(1 + scale) + shift`, chunks in the order scale, shift.
    fn continuous(&self, x: Tensor<3>, temb: &Tensor<2>) -> Tensor<3> {
        let c = self.chunks(temb, 2);
        ln_modulate(x, &c[1], &c[0])
    }
}

/// `FeedForward` with the tanh GELU: `proj` (`net.0.proj`) then `out` (`net.2`).
#[derive(Module, Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(d: usize, device: &Device) -> Self {
        FeedForward {
            proj: linear(d, 4 * d, true, device),
            out: linear(4 * d, d, true, device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.out.forward(fused::gelu_tanh(self.proj.forward(x)))
    }
}

/// `[B, N, H·Dh]` → `[B, H, N, Dh]`.
fn heads(x: Tensor<3>, h: usize) -> Tensor<4> {
    let [b, n, d] = x.dims();
    x.reshape([b, n, h, d / h]).swap_dims(1, 2)
}

fn norm(n: &Option<RmsNorm>, x: Tensor<4>) -> Tensor<4> {
    match n {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// Scaled dot-product attention of `[B, H, N, Dh]` heads, back to `[B, N, H·Dh]`.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    let [b, h, n, dh] = q.dims();
    attention(q, k, v, None, None, AttentionModuleOptions::default())
        .swap_dims(1, 2)
        .reshape([b, n, h * dh])
}

/// The joint attention of a block: image (`to_*`) and text (`add_*_proj`) projections attend
/// over both streams together.
#[derive(Module, Debug)]
struct JointAttention {
    to_q: Proj,
    to_k: Proj,
    to_v: Proj,
    add_q_proj: Proj,
    add_k_proj: Proj,
    add_v_proj: Proj,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    norm_added_q: Option<RmsNorm>,
    norm_added_k: Option<RmsNorm>,
    to_out: Vec<Proj>,
    to_add_out: Option<Proj>,
    heads: usize,
}

impl JointAttention {
    fn new(d: usize, heads: usize, qk_norm: bool, pre_only: bool, device: &Device) -> Self {
        let rms = || qk_norm.then(|| RmsNorm::new(d / heads, device));
        let proj = || Proj::new(linear(d, d, true, device));
        JointAttention {
            to_q: proj(),
            to_k: proj(),
            to_v: proj(),
            add_q_proj: proj(),
            add_k_proj: proj(),
            add_v_proj: proj(),
            norm_q: rms(),
            norm_k: rms(),
            norm_added_q: rms(),
            norm_added_k: rms(),
            to_out: vec![proj()],
            to_add_out: (!pre_only).then(proj),
            heads,
        }
    }

    /// The image stream's and (unless the block is the last) the text stream's outputs.
    fn forward(&self, x: Tensor<3>, c: Tensor<3>, lora: bool) -> (Tensor<3>, Option<Tensor<3>>) {
        let n = x.dims()[1];
        let m = c.dims()[1];
        let h = self.heads;
        let q = Tensor::cat(
            vec![
                norm(&self.norm_q, heads(self.to_q.forward(x.clone(), lora), h)),
                norm(
                    &self.norm_added_q,
                    heads(self.add_q_proj.forward(c.clone(), lora), h),
                ),
            ],
            2,
        );
        let k = Tensor::cat(
            vec![
                norm(&self.norm_k, heads(self.to_k.forward(x.clone(), lora), h)),
                norm(
                    &self.norm_added_k,
                    heads(self.add_k_proj.forward(c.clone(), lora), h),
                ),
            ],
            2,
        );
        let v = Tensor::cat(
            vec![
                heads(self.to_v.forward(x, lora), h),
                heads(self.add_v_proj.forward(c, lora), h),
            ],
            2,
        );
        let out = attend(q, k, v);
        let mut parts = out.split_with_sizes(vec![n, m], 1);
        let text = parts.pop().expect("two parts");
        let image = parts.pop().expect("two parts");
        (
            self.to_out[0].forward(image, lora),
            self.to_add_out.as_ref().map(|l| l.forward(text, lora)),
        )
    }
}

/// The image-only self-attention of an MMDiT-X block (`attn2`).
#[derive(Module, Debug)]
struct SelfAttention {
    to_q: Proj,
    to_k: Proj,
    to_v: Proj,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    to_out: Vec<Proj>,
    heads: usize,
}

impl SelfAttention {
    fn new(d: usize, heads: usize, qk_norm: bool, device: &Device) -> Self {
        let rms = || qk_norm.then(|| RmsNorm::new(d / heads, device));
        let proj = || Proj::new(linear(d, d, true, device));
        SelfAttention {
            to_q: proj(),
            to_k: proj(),
            to_v: proj(),
            norm_q: rms(),
            norm_k: rms(),
            to_out: vec![proj()],
            heads,
        }
    }

    fn forward(&self, x: Tensor<3>, lora: bool) -> Tensor<3> {
        let h = self.heads;
        let q = norm(&self.norm_q, heads(self.to_q.forward(x.clone(), lora), h));
        let k = norm(&self.norm_k, heads(self.to_k.forward(x.clone(), lora), h));
        let v = heads(self.to_v.forward(x, lora), h);
        self.to_out[0].forward(attend(q, k, v), lora)
    }
}

/// `JointTransformerBlock`.
#[derive(Module, Debug)]
struct JointBlock {
    norm1: AdaNorm,
    norm1_context: AdaNorm,
    attn: JointAttention,
    attn2: Option<SelfAttention>,
    ff: FeedForward,
    ff_context: Option<FeedForward>,
}

impl JointBlock {
    fn new(d: usize, heads: usize, qk_norm: bool, last: bool, dual: bool, device: &Device) -> Self {
        JointBlock {
            norm1: AdaNorm {
                linear: linear(d, if dual { 9 } else { 6 } * d, true, device),
            },
            norm1_context: AdaNorm {
                linear: linear(d, if last { 2 } else { 6 } * d, true, device),
            },
            attn: JointAttention::new(d, heads, qk_norm, last, device),
            attn2: dual.then(|| SelfAttention::new(d, heads, qk_norm, device)),
            ff: FeedForward::new(d, device),
            ff_context: (!last).then(|| FeedForward::new(d, device)),
        }
    }

    /// The image stream and (unless this is the last block) the text stream after the block.
    fn forward(
        &self,
        x: Tensor<3>,
        c: Tensor<3>,
        temb: &Tensor<2>,
        lora: bool,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let dual = self.attn2.is_some();
        // shift, scale, gate (attention), shift, scale, gate (MLP)[, shift, scale, gate (attn2)]
        let m = self.norm1.chunks(temb, if dual { 9 } else { 6 });
        let x_in = ln_modulate(x.clone(), &m[0], &m[1]);
        // MMDiT-X's second attention reads the block's input, modulated by its own shift and scale.
        let x2_in = self
            .attn2
            .as_ref()
            .map(|_| ln_modulate(x.clone(), &m[6], &m[7]));
        let (c_in, cm) = match self.ff_context {
            Some(_) => {
                let cm = self.norm1_context.chunks(temb, 6);
                (ln_modulate(c.clone(), &cm[0], &cm[1]), Some(cm))
            }
            None => (self.norm1_context.continuous(c.clone(), temb), None),
        };
        let (attn_x, attn_c) = self.attn.forward(x_in, c_in, lora);
        let mut x = x + gated(&m[2], attn_x);
        if let (Some(attn2), Some(x2_in)) = (&self.attn2, x2_in) {
            x = x.clone() + gated(&m[8], attn2.forward(x2_in, lora));
        }
        let x = x.clone() + gated(&m[5], self.ff.forward(ln_modulate(x, &m[3], &m[4])));
        let c = match (&self.ff_context, cm, attn_c) {
            (Some(ff), Some(cm), Some(attn_c)) => {
                let c = c + gated(&cm[2], attn_c);
                let ff_out = ff.forward(ln_modulate(c.clone(), &cm[3], &cm[4]));
                Some(c + gated(&cm[5], ff_out))
            }
            _ => None,
        };
        (x, c)
    }
}

/// Patches to tokens plus the cropped learned position embedding (`PatchEmbed`).
#[derive(Module, Debug)]
struct PatchEmbed {
    proj: Conv2d,
    pos_embed: Param<Tensor<3>>,
}

#[derive(Module, Debug)]
struct TwoLayer {
    linear_1: Linear,
    linear_2: Linear,
}

impl TwoLayer {
    fn new(i: usize, o: usize, device: &Device) -> Self {
        TwoLayer {
            linear_1: linear(i, o, true, device),
            linear_2: linear(o, o, true, device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// `CombinedTimestepTextProjEmbeddings`.
#[derive(Module, Debug)]
struct TimeTextEmbed {
    timestep_embedder: TwoLayer,
    text_embedder: TwoLayer,
}

/// Width of the sinusoidal timestep embedding.
const TIME_CHANNELS: usize = 256;

/// The SD3 transformer.
#[derive(Module, Debug)]
pub struct Mmdit {
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    transformer_blocks: Vec<JointBlock>,
    norm_out: AdaNorm,
    proj_out: Linear,
    patch: usize,
    max_grid: usize,
    out_channels: usize,
    in_channels: usize,
    sample_size: usize,
    joint_attention_dim: usize,
    pooled_projection_dim: usize,
}

impl Mmdit {
    /// A transformer of `config` with freshly initialised weights.
    pub fn new(config: &MmditConfig, device: &Device) -> Result<Self, SdError> {
        config.check().map_err(SdError::Unsupported)?;
        let d = config.width();
        let p = config.patch_size;
        let out_channels = config.out_channels.unwrap_or(config.in_channels);
        let qk = config.qk_norm.is_some();
        let max = config.pos_embed_max_size;
        Ok(Mmdit {
            pos_embed: PatchEmbed {
                proj: Conv2dConfig::new([config.in_channels, d], [p, p])
                    .with_stride([p, p])
                    .with_padding(PaddingConfig2d::Valid)
                    .init(device),
                pos_embed: Param::from_tensor(Tensor::zeros([1, max * max, d], device)),
            },
            time_text_embed: TimeTextEmbed {
                timestep_embedder: TwoLayer::new(TIME_CHANNELS, d, device),
                text_embedder: TwoLayer::new(config.pooled_projection_dim, d, device),
            },
            context_embedder: linear(config.joint_attention_dim, d, true, device),
            transformer_blocks: (0..config.num_layers)
                .map(|i| {
                    let last = i + 1 == config.num_layers;
                    let dual = config.dual_attention_layers.contains(&i);
                    JointBlock::new(d, config.num_attention_heads, qk, last, dual, device)
                })
                .collect(),
            norm_out: AdaNorm {
                linear: linear(d, 2 * d, true, device),
            },
            proj_out: linear(d, p * p * out_channels, true, device),
            patch: p,
            max_grid: max,
            out_channels,
            in_channels: config.in_channels,
            sample_size: config.sample_size,
            joint_attention_dim: config.joint_attention_dim,
            pooled_projection_dim: config.pooled_projection_dim,
        })
    }

    /// Loads a diffusers `transformer/` directory: `config.json` and
    /// `diffusion_pytorch_model.safetensors`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: MmditConfig = crate::read_json(&config_path)?;
        let mut model = Mmdit::new(&config, device).map_err(|e| {
            SdError::File(HfError::Config {
                path: config_path,
                message: e.to_string(),
            })
        })?;
        rlrig_hf::load::pytorch_weights(
            &mut model,
            &dir.join("diffusion_pytorch_model.safetensors"),
            &[
                (r"\.ff\.net\.0\.proj\.", ".ff.proj."),
                (r"\.ff\.net\.2\.", ".ff.out."),
                (r"\.ff_context\.net\.0\.proj\.", ".ff_context.proj."),
                (r"\.ff_context\.net\.2\.", ".ff_context.out."),
                (
                    r"\.(attn2?)\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_add_out|to_out\.0)\.",
                    ".$1.$2.linear.",
                ),
            ],
            &[],
        )?;
        Ok(model)
    }

    /// The latent size it was trained at (`sample_size`).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// Latent channels it takes.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Width of the text states it takes (`joint_attention_dim`).
    pub fn joint_attention_dim(&self) -> usize {
        self.joint_attention_dim
    }

    /// Width of the pooled text embedding it takes.
    pub fn pooled_projection_dim(&self) -> usize {
        self.pooled_projection_dim
    }

    /// Side of the latent patch.
    pub fn patch_size(&self) -> usize {
        self.patch
    }

    /// The most patches a latent may have per side (`pos_embed_max_size`).
    pub fn max_patches(&self) -> usize {
        self.max_grid
    }

    /// The velocity prediction for `latents [B, C, H, W]` at `timesteps` (one per item, or
    /// one for all; diffusers' scale, σ·1000), with text states `context [B, L,
    /// joint_attention_dim]` and the pooled text embedding `pooled [B, pooled_projection_dim]`.
    /// H and W must be multiples of the patch size, at most `pos_embed_max_size` patches.
    pub fn forward(
        &self,
        latents: Tensor<4>,
        timesteps: &[f64],
        context: Tensor<3>,
        pooled: Tensor<2>,
    ) -> Tensor<4> {
        self.forward_with(latents, timesteps, context, pooled, true)
    }

    /// [`forward`](Self::forward), with the LoRA adapters (if any) or without them (`lora =
    /// false`: the base model, Flow-GRPO's KL reference).
    pub fn forward_with(
        &self,
        latents: Tensor<4>,
        timesteps: &[f64],
        context: Tensor<3>,
        pooled: Tensor<2>,
        lora: bool,
    ) -> Tensor<4> {
        let [b, _, height, width] = latents.dims();
        let device = latents.device();
        let ts: Vec<f64> = match timesteps {
            [t] => vec![*t; b],
            ts => {
                assert_eq!(ts.len(), b, "one timestep per batch item, or one for all");
                ts.to_vec()
            }
        };
        let p = self.patch;
        let (gh, gw) = (height / p, width / p);
        assert!(
            height % p == 0 && width % p == 0 && gh <= self.max_grid && gw <= self.max_grid,
            "latents {height}×{width}: multiples of the patch size {p}, at most {} patches a side",
            self.max_grid
        );
        let tokens = self.pos_embed.proj.forward(latents);
        let d = tokens.dims()[1];
        let tokens = tokens.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let (top, left) = ((self.max_grid - gh) / 2, (self.max_grid - gw) / 2);
        let pos = self
            .pos_embed
            .pos_embed
            .val()
            .reshape([self.max_grid, self.max_grid, d])
            .slice([top..top + gh, left..left + gw])
            .reshape([1, gh * gw, d]);
        let mut x = tokens + pos;

        let te = &self.time_text_embed;
        let temb = te
            .timestep_embedder
            .forward(sinusoidal(&ts, TIME_CHANNELS, true, 0, &device))
            + te.text_embedder.forward(pooled);
        let mut c = Some(self.context_embedder.forward(context));
        for block in &self.transformer_blocks {
            let (nx, nc) = block.forward(
                x,
                c.expect("every block but the last returns the text stream"),
                &temb,
                lora,
            );
            x = nx;
            c = nc;
        }
        let out = self.proj_out.forward(self.norm_out.continuous(x, &temb));
        let co = self.out_channels;
        out.reshape([b, gh, gw, p, p, co])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, co, gh * p, gw * p])
    }
}

impl Adapted for Mmdit {
    fn projections(&self) -> Vec<(String, &Proj)> {
        let mut v = Vec::new();
        for (i, b) in self.transformer_blocks.iter().enumerate() {
            let a = &b.attn;
            let p = format!("transformer_blocks.{i}.attn");
            v.push((format!("{p}.to_q"), &a.to_q));
            v.push((format!("{p}.to_k"), &a.to_k));
            v.push((format!("{p}.to_v"), &a.to_v));
            v.push((format!("{p}.add_q_proj"), &a.add_q_proj));
            v.push((format!("{p}.add_k_proj"), &a.add_k_proj));
            v.push((format!("{p}.add_v_proj"), &a.add_v_proj));
            v.push((format!("{p}.to_out.0"), &a.to_out[0]));
            if let Some(o) = &a.to_add_out {
                v.push((format!("{p}.to_add_out"), o));
            }
            if let Some(a2) = &b.attn2 {
                let p = format!("transformer_blocks.{i}.attn2");
                v.push((format!("{p}.to_q"), &a2.to_q));
                v.push((format!("{p}.to_k"), &a2.to_k));
                v.push((format!("{p}.to_v"), &a2.to_v));
                v.push((format!("{p}.to_out.0"), &a2.to_out[0]));
            }
        }
        v
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let mut v = Vec::new();
        for (i, b) in self.transformer_blocks.iter_mut().enumerate() {
            let a = &mut b.attn;
            let p = format!("transformer_blocks.{i}.attn");
            v.push((format!("{p}.to_q"), &mut a.to_q));
            v.push((format!("{p}.to_k"), &mut a.to_k));
            v.push((format!("{p}.to_v"), &mut a.to_v));
            v.push((format!("{p}.add_q_proj"), &mut a.add_q_proj));
            v.push((format!("{p}.add_k_proj"), &mut a.add_k_proj));
            v.push((format!("{p}.add_v_proj"), &mut a.add_v_proj));
            v.push((format!("{p}.to_out.0"), &mut a.to_out[0]));
            if let Some(o) = &mut a.to_add_out {
                v.push((format!("{p}.to_add_out"), o));
            }
            if let Some(a2) = &mut b.attn2 {
                let p = format!("transformer_blocks.{i}.attn2");
                v.push((format!("{p}.to_q"), &mut a2.to_q));
                v.push((format!("{p}.to_k"), &mut a2.to_k));
                v.push((format!("{p}.to_v"), &mut a2.to_v));
                v.push((format!("{p}.to_out.0"), &mut a2.to_out[0]));
            }
        }
        v
    }
}
