//! `UNet2DConditionModel`: Stable Diffusion's denoiser (SD 1.x, SD 2.x with linear projections
//! and per-block heads, InstructPix2Pix with 8 input channels), configured from its
//! `config.json`. Cross-attention to the text encoder's states; a sinusoidal timestep
//! embedding added in every resnet; skip connections from each down level to its up level.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use crate::SdError;
use crate::blocks::{
    Downsample, ResnetBlock, Transformer2D, Upsample, conv, group_norm, linear, sinusoidal,
};
use rlrig_hf::HfError;

/// A number for every block, or one for all.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    One(usize),
    /// One per down block.
    Each(Vec<usize>),
}

impl PerBlock {
    fn expand(&self, n: usize, key: &str) -> Result<Vec<usize>, String> {
        match self {
            PerBlock::One(x) => Ok(vec![*x; n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(format!("`{key}` has {} entries for {n} blocks", v.len())),
        }
    }
}

/// The fields of a `unet/config.json` that shape the network; fields of features this port
/// does not have must be absent or at their defaults (checked, naming the key).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in (8 for InstructPix2Pix: noisy latents and the source's).
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: usize,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// diffusers' name for the number of heads (per block or one for all).
    pub attention_head_dim: PerBlock,
    /// Overrides `attention_head_dim` when set.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Transformer blocks per attention (per block or one for all).
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of resnets and the output norm.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Linear (SD 2.x) rather than 1×1-conv projections in and out of each transformer.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Cosine before sine in the timestep embedding (SD: true).
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// The timestep embedding's frequency shift (SD: 0).
    #[serde(default)]
    pub freq_shift: usize,
    /// Kernel of `conv_in`.
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out`.
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Latent height and width it was trained at.
    #[serde(default = "sixty_four")]
    pub sample_size: usize,
    /// The middle block (only `UNetMidBlock2DCrossAttn`).
    #[serde(default)]
    pub mid_block_type: Option<String>,
    #[serde(flatten)]
    unsupported: Unsupported,
}

/// Config keys of features this port does not have, with the value each must keep.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
struct Unsupported {
    #[serde(default)]
    class_embed_type: Option<serde_json::Value>,
    #[serde(default)]
    addition_embed_type: Option<serde_json::Value>,
    #[serde(default)]
    time_cond_proj_dim: Option<serde_json::Value>,
    #[serde(default)]
    encoder_hid_dim_type: Option<serde_json::Value>,
    #[serde(default)]
    time_embedding_act_fn: Option<serde_json::Value>,
    #[serde(default)]
    timestep_post_act: Option<serde_json::Value>,
    #[serde(default)]
    time_embedding_type: Option<String>,
    #[serde(default)]
    resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    only_cross_attention: Option<serde_json::Value>,
    #[serde(default)]
    dual_cross_attention: Option<bool>,
    #[serde(default)]
    center_input_sample: Option<bool>,
}

fn one_per_block() -> PerBlock {
    PerBlock::One(1)
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn three() -> usize {
    3
}
fn sixty_four() -> usize {
    64
}

impl UNetConfig {
    fn check(&self) -> Result<(), String> {
        let u = &self.unsupported;
        let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        for (key, on) in [
            ("class_embed_type", set(&u.class_embed_type)),
            ("addition_embed_type", set(&u.addition_embed_type)),
            ("time_cond_proj_dim", set(&u.time_cond_proj_dim)),
            ("encoder_hid_dim_type", set(&u.encoder_hid_dim_type)),
            ("time_embedding_act_fn", set(&u.time_embedding_act_fn)),
            ("timestep_post_act", set(&u.timestep_post_act)),
            (
                "time_embedding_type",
                u.time_embedding_type
                    .as_deref()
                    .is_some_and(|t| t != "positional"),
            ),
            (
                "resnet_time_scale_shift",
                u.resnet_time_scale_shift
                    .as_deref()
                    .is_some_and(|t| t != "default"),
            ),
            (
                "only_cross_attention",
                u.only_cross_attention
                    .as_ref()
                    .is_some_and(|v| v.as_bool() != Some(false)),
            ),
            ("dual_cross_attention", u.dual_cross_attention == Some(true)),
            ("center_input_sample", u.center_input_sample == Some(true)),
            (
                "mid_block_type",
                self.mid_block_type
                    .as_deref()
                    .is_some_and(|t| t != "UNetMidBlock2DCrossAttn"),
            ),
        ] {
            if on {
                return Err(format!("`{key}`: this setting is not supported"));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "`down_block_types` and `up_block_types` need one entry per `block_out_channels` ({n})"
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(format!("`down_block_types`: {t:?} is not supported"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(format!("`up_block_types`: {t:?} is not supported"));
            }
        }
        if !self.block_out_channels[0].is_multiple_of(2) {
            return Err("`block_out_channels`[0] must be even (the timestep embedding)".into());
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k.is_multiple_of(2) {
                return Err(format!("`{key}` {k} must be odd"));
            }
        }
        Ok(())
    }

    /// Heads of each down block.
    fn heads(&self) -> Result<Vec<usize>, String> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(n, "num_attention_heads"),
            None => self.attention_head_dim.expand(n, "attention_head_dim"),
        }
    }
}

#[derive(Module, Debug)]
struct TimeEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

#[derive(Module, Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    downsamplers: Vec<Downsample>,
    upsamplers: Vec<Upsample>,
}

#[derive(Module, Debug)]
struct MidBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
}

/// The UNet.
#[derive(Module, Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_embedding: TimeEmbedding,
    down_blocks: Vec<Level>,
    mid_block: MidBlock,
    up_blocks: Vec<Level>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    time_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: usize,
    in_channels: usize,
    sample_size: usize,
}

impl UNet {
    /// A UNet of `config` with freshly initialised weights.
    pub fn new(config: &UNetConfig, device: &Device) -> Result<Self, SdError> {
        config.check().map_err(SdError::Unsupported)?;
        let c = &config.block_out_channels;
        let n = c.len();
        let heads = config.heads().map_err(SdError::Unsupported)?;
        let depth = config
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")
            .map_err(SdError::Unsupported)?;
        let (g, eps, ctx) = (
            config.norm_num_groups,
            config.norm_eps,
            config.cross_attention_dim,
        );
        let temb = 4 * c[0];
        let resnet = |i, o| ResnetBlock::new(i, o, Some(temb), g, eps, device);
        let transformer = |ch: usize, h: usize, d: usize| {
            Transformer2D::new(ch, ctx, h, d, g, config.use_linear_projection, device)
        };
        let down_blocks = (0..n)
            .map(|i| {
                let cross = config.down_block_types[i] == "CrossAttnDownBlock2D";
                let cin = if i == 0 { c[0] } else { c[i - 1] };
                Level {
                    resnets: (0..config.layers_per_block)
                        .map(|j| resnet(if j == 0 { cin } else { c[i] }, c[i]))
                        .collect(),
                    attentions: if cross {
                        (0..config.layers_per_block)
                            .map(|_| transformer(c[i], heads[i], depth[i]))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    downsamplers: if i + 1 < n {
                        vec![Downsample::new(c[i], false, device)]
                    } else {
                        Vec::new()
                    },
                    upsamplers: Vec::new(),
                }
            })
            .collect();
        let last = c[n - 1];
        let mid_block = MidBlock {
            resnets: vec![resnet(last, last), resnet(last, last)],
            attentions: vec![transformer(last, heads[n - 1], depth[n - 1])],
        };
        let rev: Vec<usize> = c.iter().rev().copied().collect();
        let (rev_heads, rev_depth): (Vec<usize>, Vec<usize>) = (
            heads.iter().rev().copied().collect(),
            depth.iter().rev().copied().collect(),
        );
        let up_blocks = (0..n)
            .map(|i| {
                let cross = config.up_block_types[i] == "CrossAttnUpBlock2D";
                let prev = if i == 0 { rev[0] } else { rev[i - 1] };
                let skip_last = rev[(i + 1).min(n - 1)];
                let lpb = config.layers_per_block;
                Level {
                    resnets: (0..=lpb)
                        .map(|j| {
                            let h = if j == 0 { prev } else { rev[i] };
                            let s = if j == lpb { skip_last } else { rev[i] };
                            resnet(h + s, rev[i])
                        })
                        .collect(),
                    attentions: if cross {
                        (0..=lpb)
                            .map(|_| transformer(rev[i], rev_heads[i], rev_depth[i]))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    downsamplers: Vec::new(),
                    upsamplers: if i + 1 < n {
                        vec![Upsample::new(rev[i], device)]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Ok(UNet {
            conv_in: conv(config.in_channels, c[0], config.conv_in_kernel, device),
            time_embedding: TimeEmbedding {
                linear_1: linear(c[0], temb, true, device),
                linear_2: linear(temb, temb, true, device),
            },
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(g, c[0], eps, device),
            conv_out: conv(c[0], config.out_channels, config.conv_out_kernel, device),
            time_dim: c[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            in_channels: config.in_channels,
            sample_size: config.sample_size,
        })
    }

    /// Loads a diffusers `unet/` directory: `config.json` and
    /// `diffusion_pytorch_model.safetensors` (fp32) or, with `variant = Some("fp16")`,
    /// `diffusion_pytorch_model.fp16.safetensors`.
    pub fn from_dir(
        dir: impl AsRef<Path>,
        variant: Option<&str>,
        device: &Device,
    ) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: UNetConfig = crate::read_json(&config_path)?;
        let mut unet = UNet::new(&config, device).map_err(|e| {
            SdError::File(HfError::Config {
                path: config_path,
                message: e.to_string(),
            })
        })?;
        let file = match variant {
            Some(v) => format!("diffusion_pytorch_model.{v}.safetensors"),
            None => "diffusion_pytorch_model.safetensors".into(),
        };
        rlrig_hf::load::pytorch_weights(
            &mut unet,
            &dir.join(file),
            &[
                (r"\.ff\.net\.0\.proj\.", ".ff.geglu."),
                (r"\.ff\.net\.2\.", ".ff.out."),
            ],
            &[],
        )?;
        Ok(unet)
    }

    /// The latent size it was trained at (`sample_size`).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// Latent channels the UNet takes.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The sinusoidal embedding of `timesteps` (one per batch item), `[B, C0]`.
    pub fn time_proj(&self, timesteps: &[f64], device: &Device) -> Tensor<2> {
        sinusoidal(
            timesteps,
            self.time_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            device,
        )
    }

    /// The noise (or v) prediction for `sample [B, Cin, H, W]` at `timesteps` (one per item,
    /// or one for all) with text states `context [B, L, cross_attention_dim]`. H and W must be
    /// divisible by 2^(levels − 1).
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f64], context: &Tensor<3>) -> Tensor<4> {
        let [b, _, _, _] = sample.dims();
        let device = sample.device();
        let ts: Vec<f64> = match timesteps {
            [t] => vec![*t; b],
            ts => {
                assert_eq!(ts.len(), b, "one timestep per batch item, or one for all");
                ts.to_vec()
            }
        };
        let emb = self.time_proj(&ts, &device);
        let te = &self.time_embedding;
        let temb = te.linear_2.forward(silu(te.linear_1.forward(emb)));

        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.clone()];
        for level in &self.down_blocks {
            for (j, r) in level.resnets.iter().enumerate() {
                h = r.forward(h, Some(&temb));
                if let Some(a) = level.attentions.get(j) {
                    h = a.forward(h, context);
                }
                skips.push(h.clone());
            }
            for d in &level.downsamplers {
                h = d.forward(h);
                skips.push(h.clone());
            }
        }
        let m = &self.mid_block;
        h = m.resnets[0].forward(h, Some(&temb));
        h = m.attentions[0].forward(h, context);
        h = m.resnets[1].forward(h, Some(&temb));
        for level in &self.up_blocks {
            for (j, r) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("a skip per up resnet");
                h = r.forward(Tensor::cat(vec![h, skip], 1), Some(&temb));
                if let Some(a) = level.attentions.get(j) {
                    h = a.forward(h, context);
                }
            }
            for u in &level.upsamplers {
                h = u.forward(h);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(h)))
    }
}
