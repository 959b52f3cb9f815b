//! Qwen2.5-VL's vision tower (transformers' `Qwen2_5_VisionTransformerPretrainedModel`).
//!
//! Patches of `temporal × 14 × 14` pixels (from [`crate::preprocess`]) are embedded by a
//! bias-free linear map (the checkpoint's Conv3d kernel), then pass pre-RMSNorm blocks of
//! attention with 2-D rotary positions (height frequencies, then width frequencies, over the
//! whole head) and a SwiGLU MLP. Most blocks attend within windows of `window_size` pixels,
//! those in `fullatt_block_indexes` over the whole image. The merger joins each 2 × 2 square of
//! patches (consecutive in the processor's order) into one token of the decoder's width.
//!
//! transformers reorders the patches window by window and back; attention restricted by a
//! block mask is the same computation without moving anything, so patches stay in the
//! processor's order here and the output is in the order the image's placeholder tokens take.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};
use rlrig_hf::lora::Proj;

use crate::config::VisionConfig;
use crate::layers::{Mlp, RmsNorm, rotate_half};

/// The patch embedding: the checkpoint's Conv3d kernel `[hidden, 3, temporal, 14, 14]`,
/// applied as one matrix product since the stride equals the kernel.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    proj: Conv3dKernel,
}

/// A Conv3d's `weight` (no bias).
#[derive(Module, Debug)]
pub struct Conv3dKernel {
    weight: Param<Tensor<5>>,
}

impl PatchEmbed {
    fn forward(&self, patches: Tensor<2>) -> Tensor<2> {
        let w = self.proj.weight.val();
        let [out, c, t, p, q] = w.dims();
        patches.matmul(w.reshape([out, c * t * p * q]).transpose())
    }
}

/// Self-attention of a vision block: one `qkv` projection (with bias) and `proj`.
#[derive(Module, Debug)]
pub struct VisionAttention {
    pub(crate) qkv: Proj,
    pub(crate) proj: Proj,
    heads: usize,
}

/// One vision block.
#[derive(Module, Debug)]
pub struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    pub(crate) attn: VisionAttention,
    pub(crate) mlp: Mlp,
}

/// The patch merger: RMSNorm, then 2 × 2 patches side by side through `Linear, GELU, Linear`.
#[derive(Module, Debug)]
pub struct Merger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The vision tower.
#[derive(Module, Debug)]
pub struct VisionTower {
    patch_embed: PatchEmbed,
    pub(crate) blocks: Vec<VisionBlock>,
    merger: Merger,
}

/// Where each patch sits and which patches may attend to each other, for a list of images.
#[derive(Clone, Debug)]
pub struct VisionLayout {
    /// Rotary cosines and sines, `[N, head_dim]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Per patch: its image (frame) and its window.
    image: Vec<usize>,
    window: Vec<usize>,
}

impl VisionLayout {
    /// The layout of images with patch grids `grids` (`[t, h, w]` each), for `config`.
    pub fn new(config: &VisionConfig, grids: &[[usize; 3]]) -> Self {
        let head = config.hidden_size / config.num_heads;
        let quarter = head / 4;
        let inv: Vec<f32> = (0..quarter)
            .map(|j| 1.0 / (config.rope_theta as f32).powf((2 * j) as f32 / (head / 2) as f32))
            .collect();
        let m = config.spatial_merge_size;
        let unit = config.window_size / m / config.patch_size;
        let (mut cos, mut sin, mut image, mut window) = (vec![], vec![], vec![], vec![]);
        let (mut frame_id, mut window_base) = (0, 0);
        for &[t, h, w] in grids {
            let (mh, mw) = (h / m, w / m);
            let windows_w = mw.div_ceil(unit);
            let windows = mh.div_ceil(unit) * windows_w;
            for _ in 0..t {
                for bh in 0..mh {
                    for bw in 0..mw {
                        let win = window_base + (bh / unit) * windows_w + bw / unit;
                        for ih in 0..m {
                            for iw in 0..m {
                                let (y, x) = ((bh * m + ih) as f32, (bw * m + iw) as f32);
                                let angles: Vec<f32> = inv
                                    .iter()
                                    .map(|f| y * f)
                                    .chain(inv.iter().map(|f| x * f))
                                    .collect();
                                for _ in 0..2 {
                                    cos.extend(angles.iter().map(|a| a.cos()));
                                    sin.extend(angles.iter().map(|a| a.sin()));
                                }
                                image.push(frame_id);
                                window.push(win);
                            }
                        }
                    }
                }
                frame_id += 1;
                window_base += windows;
            }
        }
        VisionLayout {
            cos,
            sin,
            image,
            window,
        }
    }

    fn len(&self) -> usize {
        self.image.len()
    }

    /// The additive mask `[N, N]`: 0 where patches share a group, −∞ elsewhere.
    fn mask(&self, groups: &[usize], device: &Device) -> Tensor<2> {
        let n = groups.len();
        let mut v = vec![0f32; n * n];
        for (i, gi) in groups.iter().enumerate() {
            for (j, gj) in groups.iter().enumerate() {
                if gi != gj {
                    v[i * n + j] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_data(TensorData::new(v, [n, n]), device)
    }
}

impl VisionTower {
    /// A tower of `config` with freshly initialised weights.
    pub fn new(config: &VisionConfig, device: &Device) -> Self {
        let c = config.hidden_size;
        let k = config.temporal_patch_size * config.patch_size * config.patch_size;
        let merged = c * config.spatial_merge_size * config.spatial_merge_size;
        let proj = |i, o| Proj::new(LinearConfig::new(i, o).init(device));
        VisionTower {
            patch_embed: PatchEmbed {
                proj: Conv3dKernel {
                    weight: Param::from_tensor(Tensor::zeros(
                        [
                            c,
                            config.in_channels,
                            k / (config.patch_size * config.patch_size),
                            config.patch_size,
                            config.patch_size,
                        ],
                        device,
                    )),
                },
            },
            blocks: (0..config.depth)
                .map(|_| VisionBlock {
                    norm1: RmsNorm::new(c, 1e-6, device),
                    norm2: RmsNorm::new(c, 1e-6, device),
                    attn: VisionAttention {
                        qkv: proj(c, 3 * c),
                        proj: proj(c, c),
                        heads: config.num_heads,
                    },
                    mlp: Mlp::new(c, config.intermediate_size, true, device),
                })
                .collect(),
            merger: Merger {
                ln_q: RmsNorm::new(c, 1e-6, device),
                fc1: LinearConfig::new(merged, merged).init(device),
                fc2: LinearConfig::new(merged, config.out_hidden_size).init(device),
            },
        }
    }

    /// The states after the last block, `[N, hidden]` in the processor's patch order.
    pub fn blocks_forward(
        &self,
        patches: Tensor<2>,
        layout: &VisionLayout,
        full_attention: &[usize],
        lora: bool,
    ) -> Tensor<2> {
        let device = patches.device();
        let n = layout.len();
        let mut x = self.patch_embed.forward(patches);
        let head = x.dims()[1] / self.blocks.first().map_or(1, |b| b.attn.heads);
        let table = |v: &[f32]| -> Tensor<3> {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [n, head]), &device).unsqueeze_dim(1)
        };
        let (cos, sin) = (table(&layout.cos), table(&layout.sin));
        let whole = layout.mask(&layout.image, &device);
        let windows = layout.mask(&layout.window, &device);
        for (i, b) in self.blocks.iter().enumerate() {
            let mask = if full_attention.contains(&i) {
                whole.clone()
            } else {
                windows.clone()
            };
            let h = b
                .attn
                .forward(b.norm1.forward(x.clone()), &cos, &sin, mask, lora);
            x = x + h;
            x = x.clone() + b.mlp.forward(b.norm2.forward(x), lora);
        }
        x
    }

    /// The merged tokens, `[N / merge², out_hidden]`: what replaces the image's placeholder
    /// tokens in the decoder's input.
    pub fn forward(
        &self,
        patches: Tensor<2>,
        layout: &VisionLayout,
        full_attention: &[usize],
        lora: bool,
    ) -> Tensor<2> {
        let x = self.blocks_forward(patches, layout, full_attention, lora);
        self.merger.forward(x)
    }
}

impl VisionAttention {
    fn forward(
        &self,
        x: Tensor<2>,
        cos: &Tensor<3>,
        sin: &Tensor<3>,
        mask: Tensor<2>,
        lora: bool,
    ) -> Tensor<2> {
        let [n, c] = x.dims();
        let h = self.heads;
        let qkv = self.qkv.forward(x, lora).reshape([n, 3, h, c / h]);
        let part = |i: usize| {
            qkv.clone()
                .slice([0..n, i..i + 1, 0..h, 0..c / h])
                .reshape([n, h, c / h])
        };
        let rope = |t: Tensor<3>| t.clone() * cos.clone() + rotate_half(t) * sin.clone();
        let heads = |t: Tensor<3>| t.swap_dims(0, 1).unsqueeze_dim::<4>(0);
        let (q, k, v) = (heads(rope(part(0))), heads(rope(part(1))), heads(part(2)));
        let bias = mask.unsqueeze_dims::<4>(&[0, 1]).expand([1, h, n, n]);
        let out = attention(q, k, v, None, Some(bias), AttentionModuleOptions::default());
        let out = out.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([n, c]);
        self.proj.forward(out, lora)
    }
}

impl Merger {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, c] = x.dims();
        let units = self.fc1.weight.dims()[0] / c;
        let x = self.ln_q.forward(x).reshape([n / units, units * c]);
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}
