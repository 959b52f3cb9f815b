//! Building blocks shared by the UNet and the VAE, named as diffusers names their parameters.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};

/// A `k×k` convolution with stride 1 and "same" padding.
pub(crate) fn conv(cin: usize, cout: usize, k: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .init(device)
}

pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

pub(crate) fn linear(i: usize, o: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(i, o).with_bias(bias).init(device)
}

/// diffusers' `Timesteps`: the sinusoidal embedding of one timestep per item, `[B, dim]`,
/// frequencies `exp(−ln(10⁴)·i/(dim/2 − shift))`, cosines first when `flip_sin_to_cos`.
pub(crate) fn sinusoidal(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: usize,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = (0..half)
            .map(|i| {
                let f = (-(10000f32.ln()) * i as f32 / (half - shift) as f32).exp();
                t as f32 * f
            })
            .collect();
        let (sin, cos) = (args.iter().map(|a| a.sin()), args.iter().map(|a| a.cos()));
        if flip_sin_to_cos {
            data.extend(cos.chain(sin));
        } else {
            data.extend(sin.chain(cos));
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}

/// `ResnetBlock2D`: two GroupNorm–SiLU–conv layers, the time embedding added between them
/// (UNet), a 1×1 shortcut when the channel count changes.
#[derive(Module, Debug)]
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
        device: &Device,
    ) -> Self {
        ResnetBlock {
            norm1: group_norm(groups, cin, eps, device),
            conv1: conv(cin, cout, 3, device),
            time_emb_proj: temb.map(|t| linear(t, cout, true, device)),
            norm2: group_norm(groups, cout, eps, device),
            conv2: conv(cout, cout, 3, device),
            conv_shortcut: (cin != cout).then(|| conv(cin, cout, 1, device)),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(silu(t.clone())).unsqueeze_dims(&[2, 3]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        x + h
    }
}

/// `Downsample2D`: a 3×3 stride-2 convolution (the VAE pads right and bottom by one first).
#[derive(Module, Debug)]
pub(crate) struct Downsample {
    conv: Conv2d,
    pad_after: bool,
}

impl Downsample {
    pub(crate) fn new(c: usize, pad_after: bool, device: &Device) -> Self {
        let p = if pad_after { 0 } else { 1 };
        Downsample {
            conv: Conv2dConfig::new([c, c], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init(device),
            pad_after,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.pad_after {
            x.pad((0, 1, 0, 1), PadMode::Constant(0.0))
        } else {
            x
        };
        self.conv.forward(x)
    }
}

/// `Upsample2D`: nearest-neighbour ×2, then a 3×3 convolution.
#[derive(Module, Debug)]
pub(crate) struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub(crate) fn new(c: usize, device: &Device) -> Self {
        Upsample {
            conv: conv(c, c, 3, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let up = x
            .reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2])
            .reshape([b, c, 2 * h, 2 * w]);
        self.conv.forward(up)
    }
}

/// diffusers' `Attention`: `to_q`, `to_k`, `to_v` (with or without bias), `to_out.0`.
#[derive(Module, Debug)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Vec<Linear>,
    heads: usize,
}

impl Attention {
    pub(crate) fn new(
        dim: usize,
        context_dim: usize,
        heads: usize,
        qkv_bias: bool,
        device: &Device,
    ) -> Self {
        Attention {
            to_q: linear(dim, dim, qkv_bias, device),
            to_k: linear(context_dim, dim, qkv_bias, device),
            to_v: linear(context_dim, dim, qkv_bias, device),
            to_out: vec![linear(dim, dim, true, device)],
            heads,
        }
    }

    /// `x [B, N, C]` attends to `context [B, M, Cc]` (itself when `None`).
    pub(crate) fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let ctx = context.unwrap_or_else(|| x.clone());
        let m = ctx.dims()[1];
        let dh = c / self.heads;
        let q = self
            .to_q
            .forward(x)
            .reshape([b, n, self.heads, dh])
            .swap_dims(1, 2);
        let k = self
            .to_k
            .forward(ctx.clone())
            .reshape([b, m, self.heads, dh])
            .swap_dims(1, 2);
        let v = self
            .to_v
            .forward(ctx)
            .reshape([b, m, self.heads, dh])
            .swap_dims(1, 2);
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        self.to_out[0].forward(out.swap_dims(1, 2).reshape([b, n, c]))
    }
}

/// `[B, C, H, W]` → `[B, H·W, C]`.
pub(crate) fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// `[B, H·W, C]` → `[B, C, H, W]`.
pub(crate) fn from_tokens(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, c, h, w])
}

/// The VAE's mid-block attention: one head over the pixels, GroupNorm first, residual.
#[derive(Module, Debug)]
pub(crate) struct SpatialAttention {
    group_norm: GroupNorm,
    attn: Attention,
}

impl SpatialAttention {
    pub(crate) fn new(c: usize, groups: usize, eps: f64, device: &Device) -> Self {
        SpatialAttention {
            group_norm: group_norm(groups, c, eps, device),
            attn: Attention::new(c, c, 1, true, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let t = to_tokens(self.group_norm.forward(x.clone()));
        x + from_tokens(self.attn.forward(t, None), h, w)
    }
}

/// `GEGLU` then the output Linear (diffusers' `FeedForward`).
#[derive(Module, Debug)]
pub(crate) struct FeedForward {
    geglu: Linear,
    out: Linear,
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each
/// pre-LayerNorm with a residual.
#[derive(Module, Debug)]
pub(crate) struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    pub(crate) fn new(c: usize, context: usize, heads: usize, device: &Device) -> Self {
        let ln = || LayerNormConfig::new(c).with_epsilon(1e-5).init(device);
        TransformerBlock {
            norm1: ln(),
            attn1: Attention::new(c, c, heads, false, device),
            norm2: ln(),
            attn2: Attention::new(c, context, heads, false, device),
            norm3: ln(),
            ff: FeedForward {
                geglu: linear(c, 8 * c, true, device),
                out: linear(4 * c, c, true, device),
            },
        }
    }

    pub(crate) fn forward(&self, h: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let h = self.attn1.forward(self.norm1.forward(h.clone()), None) + h;
        let h = self
            .attn2
            .forward(self.norm2.forward(h.clone()), Some(context.clone()))
            + h;
        let mut parts = self
            .ff
            .geglu
            .forward(self.norm3.forward(h.clone()))
            .chunk(2, 2);
        let gate = parts.pop().expect("two halves");
        let value = parts.pop().expect("two halves");
        self.ff.out.forward(value * gelu(gate)) + h
    }
}

/// How `Transformer2DModel` projects in and out: 1×1 convolutions (SD 1.x) or Linears on the
/// tokens (SD 2.x, `use_linear_projection`).
#[derive(Module, Debug)]
pub(crate) enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel` over the pixels of a feature map, with a residual.
#[derive(Module, Debug)]
pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub(crate) fn new(
        c: usize,
        context: usize,
        heads: usize,
        depth: usize,
        groups: usize,
        linear_projection: bool,
        device: &Device,
    ) -> Self {
        let proj = || {
            if linear_projection {
                Projection::Linear(linear(c, c, true, device))
            } else {
                Projection::Conv(conv(c, c, 1, device))
            }
        };
        Transformer2D {
            norm: group_norm(groups, c, 1e-6, device),
            proj_in: proj(),
            transformer_blocks: (0..depth)
                .map(|_| TransformerBlock::new(c, context, heads, device))
                .collect(),
            proj_out: proj(),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let mut t = match &self.proj_in {
            Projection::Conv(c) => to_tokens(c.forward(n)),
            Projection::Linear(l) => l.forward(to_tokens(n)),
        };
        for blk in &self.transformer_blocks {
            t = blk.forward(t, context);
        }
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(from_tokens(t, h, w)),
            Projection::Linear(l) => from_tokens(l.forward(t), h, w),
        };
        out + x
    }
}
