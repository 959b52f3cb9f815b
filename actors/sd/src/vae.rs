//! `AutoencoderKL`: the VAE between images and Stable Diffusion's latents.
//!
//! Images are `[B, 3, H, W]` in about `[-1, 1]`; latents `[B, latent_channels, H/f, W/f]` with
//! `f = 2^(levels − 1)`. [`Vae::encode`] gives the posterior's mean and standard deviation
//! (`mode()` is the mean); pipelines multiply a latent by `scaling_factor` after encoding and
//! divide by it before [`Vae::decode`].

use std::path::Path;

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use crate::SdError;
use crate::blocks::{Downsample, ResnetBlock, SpatialAttention, Upsample, conv, group_norm};
use rlrig_hf::HfError;

const EPS: f64 = 1e-6;

/// The fields of a `vae/config.json` that shape the network.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (the decoder has one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are scaled by this after encoding (0.18215 for SD 1.x / 2.x).
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (SD3: 0.0609; absent, 0, for SD 1.x / 2.x).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Encoder block types (all `DownEncoderBlock2D`).
    #[serde(default)]
    pub down_block_types: Vec<String>,
    /// Decoder block types (all `UpDecoderBlock2D`).
    #[serde(default)]
    pub up_block_types: Vec<String>,
    /// Whether the 1×1 `quant_conv` is there.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether the 1×1 `post_quant_conv` is there.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have their attention.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scale() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    fn check(&self) -> Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("`block_out_channels` is empty".into());
        }
        for (key, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(t) = types.iter().find(|t| *t != want) {
                return Err(format!("`{key}`: {t:?} is not supported (only {want})"));
            }
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "`block_out_channels` {c} is not a multiple of `norm_num_groups` {}",
                self.norm_num_groups
            ));
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    downsamplers: Vec<Downsample>,
    upsamplers: Vec<Upsample>,
}

#[derive(Module, Debug)]
struct MidBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialAttention>,
}

impl MidBlock {
    fn new(c: usize, groups: usize, attention: bool, device: &Device) -> Self {
        MidBlock {
            resnets: (0..2)
                .map(|_| ResnetBlock::new(c, c, None, groups, EPS, device))
                .collect(),
            attentions: if attention {
                vec![SpatialAttention::new(c, groups, EPS, device)]
            } else {
                Vec::new()
            },
        }
    }

    fn forward(&self, h: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(h, None);
        if let Some(a) = self.attentions.first() {
            h = a.forward(h);
        }
        self.resnets[1].forward(h, None)
    }
}

#[derive(Module, Debug)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<Level>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

#[derive(Module, Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<Level>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// The VAE.
#[derive(Module, Debug)]
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    scaling_factor: f64,
    shift_factor: f64,
    downscale: usize,
}

/// The encoder's posterior of a batch.
pub struct Posterior {
    /// The mean (`mode()`), `[B, latent_channels, h, w]`.
    pub mean: Tensor<4>,
    /// The standard deviation, `exp(½·clamp(logvar, −30, 20))`.
    pub std: Tensor<4>,
}

impl Vae {
    /// A VAE of `config` with freshly initialised weights.
    pub fn new(config: &VaeConfig, device: &Device) -> Result<Self, SdError> {
        config.check().map_err(SdError::Unsupported)?;
        let ch = &config.block_out_channels;
        let (g, n, lat) = (
            config.norm_num_groups,
            config.layers_per_block,
            config.latent_channels,
        );
        let last = ch.len() - 1;
        let down_blocks = (0..ch.len())
            .map(|i| {
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                Level {
                    resnets: (0..n)
                        .map(|j| {
                            let from = if j == 0 { cin } else { ch[i] };
                            ResnetBlock::new(from, ch[i], None, g, EPS, device)
                        })
                        .collect(),
                    downsamplers: if i != last {
                        vec![Downsample::new(ch[i], true, device)]
                    } else {
                        Vec::new()
                    },
                    upsamplers: Vec::new(),
                }
            })
            .collect();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up_blocks = (0..rev.len())
            .map(|i| {
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                Level {
                    resnets: (0..=n)
                        .map(|j| {
                            let from = if j == 0 { cin } else { rev[i] };
                            ResnetBlock::new(from, rev[i], None, g, EPS, device)
                        })
                        .collect(),
                    downsamplers: Vec::new(),
                    upsamplers: if i != last {
                        vec![Upsample::new(rev[i], device)]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Ok(Vae {
            encoder: Encoder {
                conv_in: conv(config.in_channels, ch[0], 3, device),
                down_blocks,
                mid_block: MidBlock::new(ch[last], g, config.mid_block_add_attention, device),
                conv_norm_out: group_norm(g, ch[last], EPS, device),
                conv_out: conv(ch[last], 2 * lat, 3, device),
            },
            decoder: Decoder {
                conv_in: conv(lat, ch[last], 3, device),
                mid_block: MidBlock::new(ch[last], g, config.mid_block_add_attention, device),
                up_blocks,
                conv_norm_out: group_norm(g, ch[0], EPS, device),
                conv_out: conv(ch[0], config.out_channels, 3, device),
            },
            quant_conv: config
                .use_quant_conv
                .then(|| conv(2 * lat, 2 * lat, 1, device)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| conv(lat, lat, 1, device)),
            scaling_factor: config.scaling_factor,
            shift_factor: config.shift_factor.unwrap_or(0.0),
            downscale: 1 << last,
        })
    }

    /// Loads a diffusers `vae/` directory (`config.json`, `diffusion_pytorch_model.safetensors`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: VaeConfig = crate::read_json(&config_path)?;
        let mut vae = Vae::new(&config, device).map_err(|e| {
            SdError::File(HfError::Config {
                path: config_path,
                message: e.to_string(),
            })
        })?;
        rlrig_hf::load::pytorch_weights(
            &mut vae,
            &dir.join("diffusion_pytorch_model.safetensors"),
            &[(
                r"mid_block\.attentions\.0\.(to_[qkv]|to_out)",
                "mid_block.attentions.0.attn.$1",
            )],
            &[],
        )?;
        Ok(vae)
    }

    /// How many pixels a latent spans per side: 2^(levels − 1).
    pub fn downscale(&self) -> usize {
        self.downscale
    }

    /// What latents are multiplied by after encoding (and divided by before decoding).
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    /// What latents are shifted by before scaling: a pipeline's latent is
    /// `(z − shift_factor)·scaling_factor` (0 for SD 1.x / 2.x, 0.0609 for SD3).
    pub fn shift_factor(&self) -> f64 {
        self.shift_factor
    }

    /// Images `[B, 3, H, W]` in `[-1, 1]` → the posterior over latents (unscaled).
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(x);
        for level in &e.down_blocks {
            for r in &level.resnets {
                h = r.forward(h, None);
            }
            for d in &level.downsamplers {
                h = d.forward(h);
            }
        }
        h = e.mid_block.forward(h);
        h = e.conv_out.forward(silu(e.conv_norm_out.forward(h)));
        if let Some(q) = &self.quant_conv {
            h = q.forward(h);
        }
        let mut halves = h.chunk(2, 1);
        let logvar = halves.pop().expect("two halves").clamp(-30.0, 20.0);
        let mean = halves.pop().expect("two halves");
        Posterior {
            mean,
            std: (logvar * 0.5).exp(),
        }
    }

    /// Latents (unscaled: divide the pipeline's by [`scaling_factor`](Self::scaling_factor))
    /// → images, about `[-1, 1]`.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        let mut h = d.mid_block.forward(d.conv_in.forward(z));
        for level in &d.up_blocks {
            for r in &level.resnets {
                h = r.forward(h, None);
            }
            for u in &level.upsamplers {
                h = u.forward(h);
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(h)))
    }
}
