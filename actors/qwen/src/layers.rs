//! Layers both towers use: RMSNorm, the rotary helper and the SwiGLU MLP.

use burn::module::{Module, Param};
use burn::nn::LinearConfig;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use rlrig_hf::lora::Proj;

/// RMSNorm: `w · x / √(mean(x²) + ε)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    weight: Param<Tensor<1>>,
    eps: f64,
}

impl RmsNorm {
    /// A norm of width `d` with unit weights.
    pub fn new(d: usize, eps: f64, device: &Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }

    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let rms = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        (x / rms) * self.weight.val().unsqueeze::<D>()
    }
}

/// `[x₁, x₂] → [−x₂, x₁]` over the last dimension.
pub fn rotate_half<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let d = x.dims()[D - 1];
    let first = x.clone().narrow(D - 1, 0, d / 2);
    let second = x.narrow(D - 1, d / 2, d - d / 2);
    Tensor::cat(vec![second.neg(), first], D - 1)
}

/// The SwiGLU MLP `down(silu(gate(x)) · up(x))` (with biases in the vision tower, without in
/// the decoder).
#[derive(Module, Debug)]
pub struct Mlp {
    pub(crate) gate_proj: Proj,
    pub(crate) up_proj: Proj,
    pub(crate) down_proj: Proj,
}

impl Mlp {
    pub(crate) fn new(width: usize, inner: usize, bias: bool, device: &Device) -> Self {
        let l = |i, o| Proj::new(LinearConfig::new(i, o).with_bias(bias).init(device));
        Mlp {
            gate_proj: l(width, inner),
            up_proj: l(width, inner),
            down_proj: l(inner, width),
        }
    }

    pub(crate) fn forward<const D: usize>(&self, x: Tensor<D>, lora: bool) -> Tensor<D> {
        let gate = silu(self.gate_proj.forward(x.clone(), lora));
        self.down_proj
            .forward(gate * self.up_proj.forward(x, lora), lora)
    }
}
