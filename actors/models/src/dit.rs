//! The DiT of the Diffuser and the Editor (docs/models.md, "DiT").
//!
//! `v_θ(x_s, s, text)`: patchify → Linear, plus fixed 2-D sin-cos positions; the prompt as
//! Embedding plus fixed 1-D sin-cos positions; a timestep MLP gives the conditioning `c`;
//! `depth` adaLN-Zero blocks of joint self-attention over `[image tokens; text tokens]` (padding
//! text tokens are masked out as keys); an adaLN final layer on the image tokens; unpatchify.
//!
//! Conventions that docs/models.md leaves open follow `scripts/torch_reference/dit.py`:
//! patches row-major, each flattened channel-major `(C, P, P)`; 2-D positions put the patch
//! column's 1-D embedding in the first `D/2` dims and the row's in the last; 1-D embeddings are
//! `[sin(p·ω), cos(p·ω)]`, `ω_i = 10000^(−i/(d/2))`; the timestep embedding is
//! `[cos(1000·s·f), sin(1000·s·f)]`, `f_i = exp(−ln(10000)·i/128)`; attention uses one
//! `Linear(D → 3D)` split as `(q, k, v)` then `(heads, D/heads)`; every Linear has a bias.
//! Initialisation is DiT's: Linears Xavier-uniform with zero bias, the timestep MLP normal
//! (std 0.02), the token embedding normal (std 0.02), the adaLN Linears and the final output
//! Linear zero. Random draws use the device's generator (`Device::seed`).
//!
//! With `text_layers > 0` the prompt first passes a text encoder (`text.blocks.{i}`, pre-LN
//! blocks as the VLMs', then `text.ln` and the zero-initialised `text.proj`, added to the
//! embeddings), as in the PyTorch reference's `DiTConfig.text_layers`.
//!
//! Parameter names (the safetensors keys): `patch_embed`, `t_embed.fc{1,2}`, `text.tok`,
//! `blocks.{i}.attn.{qkv,proj}`, `blocks.{i}.{fc1,fc2,ada}`, `final_layer.{ada,linear}`
//! (`final` in the PyTorch reference). Linear weights are stored `[in, out]`, burn's layout.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::architecture::Architecture;
use crate::fused::ln_modulate;
use crate::layers::{Attention, Block, gelu_tanh, linear, sincos_2d, sincos_text, xavier, zeros};
use crate::text::PROMPT_VOCAB_SIZE;

/// The width of the sinusoidal timestep embedding.
pub const TIMESTEP_DIM: usize = 256;

/// The epsilon of the (affine-free) layer norms.
pub const LN_EPS: f64 = 1e-6;

/// The architecture of a [`Dit`]. Serialised next to the weights (see [`crate::weights`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Input channels: 3 for the Diffuser, 6 for the Editor (noisy image ‖ source image).
    pub in_channels: usize,
    /// Output channels (the velocity's), 3.
    pub out_channels: usize,
    /// Side of a square patch in pixels.
    pub patch: usize,
    /// Token width `D`.
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Padded prompt length `L`.
    pub text_len: usize,
    /// Rows of the token embedding table; at least [`PROMPT_VOCAB_SIZE`].
    pub vocab_size: usize,
    /// Hidden width of the MLP as a multiple of `width`.
    pub mlp_ratio: usize,
    /// What the output means: the velocity (default) or the clean image.
    #[serde(default)]
    pub prediction: Prediction,
    /// Pre-LayerNorm transformer blocks over the prompt alone before it joins the image
    /// tokens (0: none, the tokens go in as embeddings). They let a noun's token carry its
    /// colour, so that an image token finds a whole object in one place (binding). Their
    /// output joins the embeddings through a zero-initialised Linear, so a network grown
    /// from one without them starts out computing the same function.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub text_layers: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What a [`Dit`]'s output means; the samplers and the loss turn either into a velocity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The velocity `v = ε − x0` (docs/models.md).
    #[default]
    Velocity,
    /// The clean image `x̂0`, with `v = (x_s − x̂0) / s`. The noise then never has to pass
    /// through the network — which it cannot when a patch holds more values than a token is
    /// wide (patch 8: 192 values into 128 dimensions leaves a third of the noise in the sample).
    Sample,
}

impl Default for DitConfig {
    /// The Diffuser's configuration ([`DitConfig::diffuser`]).
    fn default() -> Self {
        DitConfig::diffuser()
    }
}

/// A [`DitConfig`] that describes no buildable network.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid DiT config: {0}")]
pub struct DitConfigError(pub String);

impl DitConfig {
    /// The Diffuser: 32×32, in 3, out 3, patch 4, width 128, depth 6, heads 4, text 48,
    /// vocabulary 32, MLP ×4.
    pub fn diffuser() -> Self {
        DitConfig {
            image_size: 32,
            in_channels: 3,
            out_channels: 3,
            patch: 4,
            width: 128,
            depth: 6,
            heads: 4,
            text_len: crate::text::DEFAULT_TEXT_LEN,
            vocab_size: 32,
            mlp_ratio: 4,
            prediction: Prediction::Velocity,
            text_layers: 0,
        }
    }

    /// The Editor: the Diffuser's configuration with 6 input channels (noisy image ‖ source).
    pub fn editor() -> Self {
        DitConfig {
            in_channels: 6,
            ..DitConfig::diffuser()
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Image tokens `N`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Extra input channels beyond the noisy image's `out_channels` (the Editor's source
    /// image): `in_channels − out_channels`.
    pub fn cond_channels(&self) -> usize {
        self.in_channels.saturating_sub(self.out_channels)
    }

    /// Checks that the configuration describes a network.
    pub fn validate(&self) -> Result<(), DitConfigError> {
        let fail = |msg: String| Err(DitConfigError(msg));
        for (name, v) in [
            ("image_size", self.image_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("patch", self.patch),
            ("width", self.width),
            ("depth", self.depth),
            ("heads", self.heads),
            ("text_len", self.text_len),
            ("mlp_ratio", self.mlp_ratio),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return fail(format!(
                "patch {} does not divide image_size {}",
                self.patch, self.image_size
            ));
        }
        if !self.width.is_multiple_of(self.heads) {
            return fail(format!(
                "heads {} does not divide width {}",
                self.heads, self.width
            ));
        }
        if !self.width.is_multiple_of(4) {
            return fail(format!(
                "width {} must be a multiple of 4 (2-D sin-cos positions)",
                self.width
            ));
        }
        if self.in_channels < self.out_channels {
            return fail(format!(
                "in_channels {} is less than out_channels {}",
                self.in_channels, self.out_channels
            ));
        }
        if self.vocab_size < PROMPT_VOCAB_SIZE {
            return fail(format!(
                "vocab_size {} is less than the prompt vocabulary's {PROMPT_VOCAB_SIZE} ids",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

/// The timestep frequencies `exp(−ln(10000)·i/128)`, `i < 128`.
fn timestep_freqs(device: &Device) -> Tensor<2> {
    let half = TIMESTEP_DIM / 2;
    let f: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    Tensor::from_data(TensorData::new(f, [1, half]), device)
}

/// The timestep MLP: sinusoidal embedding of `1000·s`, Linear, SiLU, Linear.
#[derive(Module, Debug)]
struct TimestepEmbedder {
    fc1: Linear,
    fc2: Linear,
    freqs: Tensor<2>,
}

impl TimestepEmbedder {
    fn new(width: usize, device: &Device) -> Self {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        TimestepEmbedder {
            fc1: linear(TIMESTEP_DIM, width, normal.clone(), device),
            fc2: linear(width, width, normal, device),
            freqs: timestep_freqs(device),
        }
    }

    /// `(B)` noise levels → `(B, D)` conditioning.
    fn forward(&self, s: Tensor<1>) -> Tensor<2> {
        let args = s.unsqueeze_dim::<2>(1).mul_scalar(1000.0) * self.freqs.clone();
        let emb = Tensor::cat(vec![args.clone().cos(), args.sin()], 1);
        self.fc2.forward(silu(self.fc1.forward(emb)))
    }
}

/// Token embedding plus fixed 1-D sin-cos positions, then, with `text_layers > 0`, a text
/// encoder whose output is added through a zero-initialised Linear.
#[derive(Module, Debug)]
struct TextEmbedder {
    tok: Embedding,
    pos: Tensor<2>,
    blocks: Vec<Block>,
    ln: Option<LayerNorm>,
    proj: Option<Linear>,
    heads: usize,
}

impl TextEmbedder {
    fn new(c: &DitConfig, device: &Device) -> Self {
        let width = c.width;
        let tok = EmbeddingConfig::new(c.vocab_size, width)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            })
            .init(device);
        let encoder = c.text_layers > 0;
        TextEmbedder {
            tok,
            pos: sincos_text(width, c.text_len, device),
            blocks: (0..c.text_layers)
                .map(|_| Block::new(width, c.heads, c.mlp_ratio, device))
                .collect(),
            ln: encoder.then(|| LayerNormConfig::new(width).init(device)),
            proj: encoder.then(|| zeros(width, width, device)),
            heads: c.heads,
        }
    }

    /// `(B, L)` ids and their mask (`true` = real token) → `(B, L, D)` tokens.
    fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<3> {
        let e = self.tok.forward(ids) + self.pos.clone().unsqueeze::<3>();
        let (Some(ln), Some(proj)) = (&self.ln, &self.proj) else {
            return e;
        };
        let [b, l, _] = e.dims();
        // Padding is never a key, except to itself: an all-padding prompt (the unconditional
        // one) then has a defined output, which the DiT masks out anyway.
        let own = Tensor::<2, Bool>::from_data(
            TensorData::new((0..l * l).map(|i| i / l == i % l).collect(), [l, l]),
            &mask.device(),
        );
        let masked = mask
            .bool_not()
            .reshape([b, 1, l])
            .expand([b, l, l])
            .bool_and(own.bool_not().unsqueeze::<3>().expand([b, l, l]))
            .unsqueeze_dim::<4>(1)
            .expand([b, self.heads, l, l]);
        let mut h = e.clone();
        for block in &self.blocks {
            h = block.forward(h, masked.clone());
        }
        e + proj.forward(ln.forward(h))
    }
}

/// One adaLN-Zero block over the joint sequence.
#[derive(Module, Debug)]
struct DitBlock {
    attn: Attention,
    fc1: Linear,
    fc2: Linear,
    ada: Linear,
}

impl DitBlock {
    fn new(width: usize, heads: usize, mlp_ratio: usize, device: &Device) -> Self {
        DitBlock {
            attn: Attention::new(width, heads, device),
            fc1: xavier(width, mlp_ratio * width, device),
            fc2: xavier(mlp_ratio * width, width, device),
            ada: zeros(width, 6 * width, device),
        }
    }

    /// `z ← z + g1·Attn(mod(LN(z)))`, `z ← z + g2·MLP(mod(LN(z)))`.
    fn forward(&self, z: Tensor<3>, c_act: Tensor<2>, masked: Tensor<4, Bool>) -> Tensor<3> {
        let mut m = self.ada.forward(c_act).chunk(6, 1).into_iter();
        let mut next = || m.next().expect("six modulation chunks");
        let (sh1, sc1, g1, sh2, sc2, g2) = (next(), next(), next(), next(), next(), next());
        let h = ln_modulate(z.clone(), sh1, sc1, LN_EPS);
        let z = z + g1.unsqueeze_dim::<3>(1) * self.attn.forward(h, masked);
        let h = ln_modulate(z.clone(), sh2, sc2, LN_EPS);
        let mlp = self.fc2.forward(gelu_tanh(self.fc1.forward(h)));
        z + g2.unsqueeze_dim::<3>(1) * mlp
    }
}

/// The adaLN final layer on the image tokens.
#[derive(Module, Debug)]
struct FinalLayer {
    ada: Linear,
    linear: Linear,
}

impl FinalLayer {
    /// `(B, N, D)` image tokens → `(B, N, P·P·out)`.
    fn forward(&self, x: Tensor<3>, c_act: Tensor<2>) -> Tensor<3> {
        let mut m = self.ada.forward(c_act).chunk(2, 1).into_iter();
        let (sh, sc) = (m.next().expect("shift"), m.next().expect("scale"));
        self.linear.forward(ln_modulate(x, sh, sc, LN_EPS))
    }
}

/// The DiT: `forward(x_s, s, text) → v`. Device-agnostic: it runs on the device its
/// parameters were created on (`Device::flex()` on CPU; `.autodiff()` to train).
#[derive(Module, Debug)]
pub struct Dit {
    patch_embed: Linear,
    t_embed: TimestepEmbedder,
    text: TextEmbedder,
    blocks: Vec<DitBlock>,
    final_layer: FinalLayer,
    img_pos: Tensor<2>,
    #[module(skip)]
    config: DitConfig,
}

impl Dit {
    /// A freshly initialised network on `device`.
    pub fn new(config: &DitConfig, device: &Device) -> Result<Self, DitConfigError> {
        config.validate()?;
        let c = config;
        let d = c.width;
        let patch_dim = c.in_channels * c.patch * c.patch;
        Ok(Dit {
            patch_embed: xavier(patch_dim, d, device),
            t_embed: TimestepEmbedder::new(d, device),
            text: TextEmbedder::new(c, device),
            blocks: (0..c.depth)
                .map(|_| DitBlock::new(d, c.heads, c.mlp_ratio, device))
                .collect(),
            final_layer: FinalLayer {
                ada: zeros(d, 2 * d, device),
                linear: zeros(d, c.patch * c.patch * c.out_channels, device),
            },
            img_pos: sincos_2d(d, c.grid(), device),
            config: c.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &DitConfig {
        &self.config
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.img_pos.device()
    }

    /// The velocity `v_θ(x_s, s, text)`.
    ///
    /// * `x`: `(B, in_channels, image_size, image_size)`; for the Editor the noisy image
    ///   followed by the source image on the channel axis.
    /// * `s`: `(B)` noise levels in `[0, 1]`.
    /// * `text_ids`, `text_mask`: `(B, text_len)` token ids and padding mask (`true` = real
    ///   token; [`crate::text::TextBatch`] builds both). Padding tokens are not attended to.
    ///
    /// Returns `(B, out_channels, image_size, image_size)`.
    ///
    /// # Panics
    ///
    /// If a shape does not match the configuration.
    pub fn forward(
        &self,
        x: Tensor<4>,
        s: Tensor<1>,
        text_ids: Tensor<2, Int>,
        text_mask: Tensor<2, Bool>,
    ) -> Tensor<4> {
        let c = &self.config;
        let [b, ch, h, w] = x.dims();
        assert!(
            ch == c.in_channels && h == c.image_size && w == c.image_size,
            "Dit::forward: x is {:?}, the config wants [B, {}, {}, {}]",
            x.dims(),
            c.in_channels,
            c.image_size,
            c.image_size
        );
        assert_eq!(s.dims(), [b], "Dit::forward: s must be [{b}]");
        assert_eq!(
            text_ids.dims(),
            [b, c.text_len],
            "Dit::forward: text ids must be [{b}, {}]",
            c.text_len
        );
        assert_eq!(
            text_mask.dims(),
            [b, c.text_len],
            "Dit::forward: text mask must be [{b}, {}]",
            c.text_len
        );
        let n = c.num_patches();
        let t = n + c.text_len;
        let device = x.device();

        let img = self.patch_embed.forward(self.patchify(x)) + self.img_pos.clone().unsqueeze();
        let txt = self.text.forward(text_ids, text_mask.clone());
        let mut z = Tensor::cat(vec![img, txt], 1);

        let image_keys =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![false; b * n], [b, n]), &device);
        let masked = Tensor::cat(vec![image_keys, text_mask.bool_not()], 1)
            .reshape([b, 1, 1, t])
            .expand([b, c.heads, t, t]);

        let c_act = silu(self.t_embed.forward(s));
        for block in &self.blocks {
            z = block.forward(z, c_act.clone(), masked.clone());
        }
        let out = self.final_layer.forward(z.narrow(1, 0, n), c_act);
        self.unpatchify(out)
    }

    /// `(B, C, H, W)` → `(B, N, C·P·P)`: patches row-major, each flattened channel-major.
    fn patchify(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, ch, _, _] = x.dims();
        let (p, g) = (self.config.patch, self.config.grid());
        x.reshape([b, ch, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, g * g, ch * p * p])
    }

    /// `(B, N, out·P·P)` → `(B, out, H, W)`, the inverse of [`patchify`](Self::patchify).
    fn unpatchify(&self, t: Tensor<3>) -> Tensor<4> {
        let [b, _, _] = t.dims();
        let (p, g, ch) = (
            self.config.patch,
            self.config.grid(),
            self.config.out_channels,
        );
        t.reshape([b, g, g, ch, p, p])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, ch, g * p, g * p])
    }
}

impl Architecture for Dit {
    type Config = DitConfig;
    const CONFIG_KEY: &'static str = "rlrig.dit_config";
    const NAME: &'static str = "DiT";
    fn config(&self) -> &DitConfig {
        Dit::config(self)
    }
    fn device(&self) -> Device {
        Dit::device(self)
    }
    fn build(config: &DitConfig, device: &Device) -> Result<Self, ModelError> {
        Ok(Dit::new(config, device)?)
    }
}
