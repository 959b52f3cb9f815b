//! The layers both network families share: multi-head attention with a key mask, the
//! pre-LayerNorm transformer block, the fixed sin-cos position embeddings, the initialisers of
//! the Linears, and the tanh GELU. They follow the conventions of [`crate::dit`]'s
//! documentation (`scripts/torch_reference/dit.py`).

use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Bool, Device, Tensor, TensorData};

/// `[sin(p·ω), cos(p·ω)]` for each position, `ω_i = 10000^(−i/(dim/2))`: `len(pos) × dim`
/// values, row-major.
fn sincos_1d(dim: usize, positions: impl Iterator<Item = usize>) -> Vec<Vec<f64>> {
    let half = dim / 2;
    positions
        .map(|p| {
            let args: Vec<f64> = (0..half)
                .map(|i| p as f64 / 10000f64.powf(i as f64 / half as f64))
                .collect();
            args.iter()
                .map(|a| a.sin())
                .chain(args.iter().map(|a| a.cos()))
                .collect()
        })
        .collect()
}

/// The fixed 2-D position embedding: `(grid², dim)`, tokens row-major, the column's 1-D
/// embedding first, the row's second.
pub(crate) fn sincos_2d(dim: usize, grid: usize, device: &Device) -> Tensor<2> {
    let cells = || (0..grid * grid).map(move |t| (t / grid, t % grid));
    let cols = sincos_1d(dim / 2, cells().map(|(_, c)| c));
    let rows = sincos_1d(dim / 2, cells().map(|(r, _)| r));
    let flat: Vec<f32> = cols
        .iter()
        .zip(&rows)
        .flat_map(|(c, r)| c.iter().chain(r).map(|&v| v as f32))
        .collect();
    Tensor::from_data(TensorData::new(flat, [grid * grid, dim]), device)
}

/// The fixed 1-D position embedding of `len` text tokens: `(len, dim)`.
pub(crate) fn sincos_text(dim: usize, len: usize, device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = sincos_1d(dim, 0..len)
        .into_iter()
        .flatten()
        .map(|v| v as f32)
        .collect();
    Tensor::from_data(TensorData::new(flat, [len, dim]), device)
}

/// A Linear with the given weight initialiser and a zero bias.
pub(crate) fn linear(d_in: usize, d_out: usize, init: Initializer, device: &Device) -> Linear {
    Linear {
        weight: init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
        bias: Some(Initializer::Zeros.init([d_out], device)),
    }
}

/// A Linear, Xavier-uniform with a zero bias.
pub(crate) fn xavier(d_in: usize, d_out: usize, device: &Device) -> Linear {
    linear(
        d_in,
        d_out,
        Initializer::XavierUniform { gain: 1.0 },
        device,
    )
}

/// A Linear that is all zeros (adaLN-Zero's modulation, zero-initialised outputs).
pub(crate) fn zeros(d_in: usize, d_out: usize, device: &Device) -> Linear {
    linear(d_in, d_out, Initializer::Zeros, device)
}

/// GELU, tanh approximation: `x/2·(1 + tanh(u))`, `u = √(2/π)·x·(1 + 0.044715·x²)`, computed
/// as the equal `x / (1 + exp(−2u))` with the exponent capped at 40 (where the result is
/// `x·4e−18`) so that neither the value nor the gradient can overflow. One fused operation
/// ([`crate::fused`]).
pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    crate::fused::gelu_tanh(x)
}

/// Multi-head self-attention with a key mask.
#[derive(Module, Debug)]
pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    /// `width` split over `heads`: one Xavier `Linear(D → 3D)` for `(q, k, v)` and the output
    /// projection (drawn in that order).
    pub(crate) fn new(width: usize, heads: usize, device: &Device) -> Self {
        Attention {
            qkv: xavier(width, 3 * width, device),
            proj: xavier(width, width, device),
            heads,
        }
    }

    /// `(B, T, D)` tokens and a `(B, H, T, T)` mask (`true` = masked) → `(B, T, D)`.
    pub(crate) fn forward(&self, x: Tensor<3>, masked: Tensor<4, Bool>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let dh = d / self.heads;
        let split = |x: Tensor<3>| x.reshape([b, t, self.heads, dh]).swap_dims(1, 2);
        let mut qkv = self.qkv.forward(x).chunk(3, 2).into_iter().map(split);
        let (q, k, v) = (
            qkv.next().expect("q"),
            qkv.next().expect("k"),
            qkv.next().expect("v"),
        );
        let out = crate::fused::attention(q, k, v, masked);
        self.proj.forward(out.swap_dims(1, 2).reshape([b, t, d]))
    }
}

/// A pre-LayerNorm transformer block: the VLMs' encoder and the DiT's optional text
/// encoder.
#[derive(Module, Debug)]
pub(crate) struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    /// A block of `width` with `heads` and an MLP of `mlp_ratio · width`.
    pub(crate) fn new(width: usize, heads: usize, mlp_ratio: usize, device: &Device) -> Self {
        Block {
            ln1: LayerNormConfig::new(width).init(device),
            attn: Attention::new(width, heads, device),
            ln2: LayerNormConfig::new(width).init(device),
            fc1: xavier(width, mlp_ratio * width, device),
            fc2: xavier(mlp_ratio * width, width, device),
        }
    }

    /// `z ← z + Attn(LN(z))`, `z ← z + MLP(LN(z))`; `masked` as [`Attention::forward`]'s.
    pub(crate) fn forward(&self, z: Tensor<3>, masked: Tensor<4, Bool>) -> Tensor<3> {
        let z = z.clone() + self.attn.forward(self.ln1.forward(z), masked);
        let h = self
            .fc2
            .forward(gelu_tanh(self.fc1.forward(self.ln2.forward(z.clone()))));
        z + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_tanh_formula_and_stays_finite() {
        let device = Device::flex().autodiff();
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05).collect();
        let n = xs.len();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device).require_grad();
        let y = gelu_tanh(x.clone());
        let grads = y.clone().sum().backward();
        let got: Vec<f32> = y.into_data().iter::<f32>().collect();
        for (&x, &y) in xs.iter().zip(&got) {
            let x = f64::from(x);
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
            let want = 0.5 * x * (1.0 + u.tanh());
            assert!(
                (f64::from(y) - want).abs() < 1e-5 * want.abs().max(1.0),
                "gelu({x}) = {y}, want {want}"
            );
        }
        let grad: Vec<f32> = x.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        assert!(grad.iter().all(|g| g.is_finite()));
        assert!((grad[n - 1] - 1.0).abs() < 1e-6 && grad[0].abs() < 1e-6);
    }

    #[test]
    fn sincos_positions_follow_the_reference_layout() {
        let device = Device::flex();
        let pos: Vec<f32> = sincos_2d(8, 2, &device).into_data().iter::<f32>().collect();
        // Token 1 is row 0, column 1: the first half encodes column 1, the second row 0.
        let token = &pos[8..16];
        let (w0, w1) = (1.0f64, 1.0f64 / 100.0); // ω_i = 10000^(−i/2) for a 4-dim 1-D embedding
        let want = [w0.sin(), w1.sin(), w0.cos(), w1.cos(), 0.0, 0.0, 1.0, 1.0];
        for (g, w) in token.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{token:?}");
        }
    }
}
