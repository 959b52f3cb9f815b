//! Fused operations for the networks' hot chains, as a burn backend extension: the tanh GELU,
//! LayerNorm with adaLN modulation, and masked attention, each with a hand-written backward.
//!
//! Under burn's autodiff each of these was a chain of 8–14 primitive operations, every one
//! allocating a temporary and recording a graph node (attention through burn's unfused
//! fallback). Here each is one graph node: the forward runs as one pass on `flex` (f32, vectorised
//! `exp`, rows split across the rayon pool) and the backward as one pass (GELU, LayerNorm) or
//! as five matrix products over the saved probabilities (attention). Other backends (wgpu,
//! CUDA) and dtypes run the trait's default bodies, composed of burn's primitives, so results
//! do not depend on the backend. The tests compare values and gradients with those
//! compositions.
//!
//! This is code that could go to burn itself: flex's autodiff attention and layer norm fall
//! back to the primitive chains (`burn_backend::ops::attention_fallback`, the default
//! `layer_norm`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Bool, Tensor};

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh GELU.
const GELU_CUBIC: f32 = 0.044715;
/// The cap on the GELU's exponent `−2u` (where the result is `x·4e−18`).
const GELU_EXP_CAP: f32 = 40.0;

/// The fused operations. Every method has a default body composed of burn's primitives;
/// `flex` overrides the forward and backward kernels for f32, autodiff records one node per
/// call.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait FusedOps: Backend {
    /// The tanh GELU, `x / (1 + exp(min(−2u, 40)))` with `u = √(2/π)·x·(1 + 0.044715·x²)`.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_tanh::<Self>(x)
    }

    /// The gradient of [`FusedOps::gelu_tanh`] at `x` times `grad`.
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_tanh_backward::<Self>(x, grad)
    }

    /// LayerNorm without affine parameters over the last axis of `(B, T, D)` `x`, modulated
    /// per batch row: `LN(x)·(1 + scale) + shift` with `(B, D)` `shift` and `scale`.
    fn ln_modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed::ln_modulate::<Self>(x, shift, scale, eps)
    }

    /// The gradients of [`FusedOps::ln_modulate`] for `x`, `shift` and `scale`.
    fn ln_modulate_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::ln_modulate_backward::<Self>(x, scale, grad, eps)
    }

    /// The attention probabilities `softmax(q·kᵀ/√d_h)` of `(B, H, T, d_h)` queries and keys
    /// with a `(B, H, T, T)` mask (`true` = masked). Rows with every key masked are zero.
    fn attention_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        masked: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::attention_probs::<Self>(q, k, masked)
    }
}

impl FusedOps for burn::backend::Flex {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        flex::gelu_tanh(x)
    }

    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        flex::gelu_tanh_backward(x, grad)
    }

    fn ln_modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        flex::ln_modulate(x, shift, scale, eps)
    }

    fn ln_modulate_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex::ln_modulate_backward(x, scale, grad, eps)
    }

    fn attention_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        masked: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        flex::attention_probs(q, k, masked)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl FusedOps for burn::backend::Cube {}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Gelu;
        impl<B: FusedOps> Backward<B, 1> for Gelu {
            type State = FloatTensor<B>;
            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(parent) = parent {
                    grads.register::<B>(parent.id, B::gelu_tanh_backward(ops.state, grad));
                }
            }
        }
        let guard = x.node();
        let x = x.into_primitive();
        let y = B::gelu_tanh(x.clone());
        match Gelu.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn ln_modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LnModulate;
        impl<B: FusedOps> Backward<B, 3> for LnModulate {
            type State = (FloatTensor<B>, FloatTensor<B>, f64);
            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [px, pshift, pscale] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, scale, eps) = ops.state;
                let (dx, dshift, dscale) = B::ln_modulate_backward(x, scale, grad, eps);
                for (parent, g) in [(px, dx), (pshift, dshift), (pscale, dscale)] {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }
        let guards = [x.node(), shift.node(), scale.node()];
        let (x, shift, scale) = (
            x.into_primitive(),
            shift.into_primitive(),
            scale.into_primitive(),
        );
        let y = B::ln_modulate(x.clone(), shift, scale.clone(), eps);
        match LnModulate.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, scale, eps), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn attention_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        masked: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Probs;
        impl<B: FusedOps> Backward<B, 2> for Probs {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);
            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [pq, pk] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, p) = ops.state;
                let scale = 1.0 / (q.shape()[3] as f64).sqrt();
                // dS = P ∘ (dP − rowsum(dP ∘ P)), then S = s·q·kᵀ.
                let row = B::float_sum_dim(B::float_mul(grad.clone(), p.clone()), 3);
                let ds = B::float_mul(p, B::float_sub(grad, row));
                let ds = B::float_mul_scalar(ds, scale.into());
                if let Some(pq) = pq {
                    grads.register::<B>(pq.id, B::float_matmul(ds.clone(), k));
                }
                if let Some(pk) = pk {
                    grads.register::<B>(pk.id, B::float_matmul(B::float_transpose(ds), q));
                }
            }
        }
        let guards = [q.node(), k.node()];
        let (q, k) = (q.into_primitive(), k.into_primitive());
        let p = B::attention_probs(q.clone(), k.clone(), masked);
        match Probs.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((q, k, p.clone()), p),
            OpsKind::UnTracked(prep) => prep.finish(p),
        }
    }
}

/// [`FusedOps::gelu_tanh`] on a tensor.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::gelu_tanh(x.into_dispatch()))
}

/// [`FusedOps::ln_modulate`] on tensors: `(B, T, D)` tokens, `(B, D)` shift and scale.
pub fn ln_modulate(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>, eps: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::ln_modulate(
        x.into_dispatch(),
        shift.into_dispatch(),
        scale.into_dispatch(),
        eps,
    ))
}

/// Masked multi-head attention `softmax(q·kᵀ/√d_h)·v` of `(B, H, T, d_h)` tensors: the
/// probabilities as one fused node, the product with `v` as burn's matmul.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, masked: Tensor<4, Bool>) -> Tensor<4> {
    let p = Tensor::from_dispatch(<Dispatch as FusedOps>::attention_probs(
        q.into_dispatch(),
        k.into_dispatch(),
        masked.into_dispatch(),
    ));
    p.matmul(v)
}

/// The default bodies: each operation composed of burn's primitives.
mod composed {
    use super::*;

    pub(super) fn gelu_tanh<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let e = B::float_exp(neg_two_u_capped::<B>(x.clone()));
        B::float_div(x, B::float_add_scalar(e, 1.0.into()))
    }

    /// `min(−2u, 40)`.
    fn neg_two_u_capped<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let x2 = B::float_mul(x.clone(), x.clone());
        let inner = B::float_add_scalar(B::float_mul_scalar(x2, GELU_CUBIC.into()), 1.0.into());
        let u = B::float_mul(inner, x);
        B::float_clamp_max(
            B::float_mul_scalar(u, (-2.0 * SQRT_2_OVER_PI).into()),
            GELU_EXP_CAP.into(),
        )
    }

    /// With `σ = 1/(1+e)`, `e = exp(min(−2u, 40))`: `σ + x·σ·(1−σ)·2u'` where the cap is not
    /// active, `σ` where it is; `u' = √(2/π)·(1 + 3·0.044715·x²)`.
    pub(super) fn gelu_tanh_backward<B: Backend>(
        x: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let z = neg_two_u_capped::<B>(x.clone());
        // 1 where the cap is not active, 0 where it is: the gradient of `min(·, 40)`.
        let open = B::float_sign(B::float_add_scalar(
            B::float_neg(z.clone()),
            GELU_EXP_CAP.into(),
        ));
        let open = B::float_clamp_min(open, 0.0.into());
        let sigma = B::float_recip(B::float_add_scalar(B::float_exp(z), 1.0.into()));
        let x2 = B::float_mul(x.clone(), x.clone());
        let du = B::float_mul_scalar(
            B::float_add_scalar(
                B::float_mul_scalar(x2, (3.0 * GELU_CUBIC).into()),
                1.0.into(),
            ),
            (2.0 * SQRT_2_OVER_PI).into(),
        );
        let one_minus = B::float_neg(B::float_add_scalar(sigma.clone(), (-1.0).into()));
        let slope = B::float_mul(B::float_mul(B::float_mul(x, sigma.clone()), one_minus), du);
        let slope = B::float_mul(slope, open);
        B::float_mul(B::float_add(sigma, slope), grad)
    }

    /// `x̂ = (x − μ)/√(var + ε)` and `1/√(var + ε)`, over the last axis.
    fn normalise<B: Backend>(x: FloatTensor<B>, eps: f64) -> (FloatTensor<B>, FloatTensor<B>) {
        let mean = B::float_mean_dim(x.clone(), 2);
        let centered = B::float_sub(x, mean);
        let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 2);
        let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
        (B::float_mul(centered, rstd.clone()), rstd)
    }

    /// `(B, D)` → `(B, 1, D)`.
    fn per_row<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
        let [b, d] = t.shape().dims::<2>();
        B::float_reshape(t, [b, 1, d].into())
    }

    pub(super) fn ln_modulate<B: Backend>(
        x: FloatTensor<B>,
        shift: FloatTensor<B>,
        scale: FloatTensor<B>,
        eps: f64,
    ) -> FloatTensor<B> {
        let (xhat, _) = normalise::<B>(x, eps);
        let gain = B::float_add_scalar(per_row::<B>(scale), 1.0.into());
        B::float_add(B::float_mul(xhat, gain), per_row::<B>(shift))
    }

    /// `dshift = Σ_t g`, `dscale = Σ_t g·x̂`, and with `h = g·(1 + scale)`:
    /// `dx = (h − mean(h) − x̂·mean(h·x̂)) / √(var + ε)`.
    pub(super) fn ln_modulate_backward<B: Backend>(
        x: FloatTensor<B>,
        scale: FloatTensor<B>,
        grad: FloatTensor<B>,
        eps: f64,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let [b, _, d] = x.shape().dims::<3>();
        let (xhat, rstd) = normalise::<B>(x, eps);
        let dshift = B::float_reshape(B::float_sum_dim(grad.clone(), 1), [b, d].into());
        let dscale = B::float_reshape(
            B::float_sum_dim(B::float_mul(grad.clone(), xhat.clone()), 1),
            [b, d].into(),
        );
        let h = B::float_mul(grad, B::float_add_scalar(per_row::<B>(scale), 1.0.into()));
        let mean_h = B::float_mean_dim(h.clone(), 2);
        let mean_hx = B::float_mean_dim(B::float_mul(h.clone(), xhat.clone()), 2);
        let dx = B::float_sub(B::float_sub(h, mean_h), B::float_mul(xhat, mean_hx));
        (B::float_mul(dx, rstd), dshift, dscale)
    }

    pub(super) fn attention_probs<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        masked: BoolTensor<B>,
    ) -> FloatTensor<B> {
        let scale = 1.0 / (q.shape()[3] as f64).sqrt();
        let s = B::float_mul_scalar(B::float_matmul(q, B::float_transpose(k)), scale.into());
        let s = B::float_mask_fill(s, masked, f32::NEG_INFINITY.into());
        let max = B::float_clamp_min(B::float_max_dim(s.clone(), 3), f32::MIN.into());
        let e = B::float_exp(B::float_sub(s, max));
        let sum = B::float_clamp_min(B::float_sum_dim(e.clone(), 3), f32::MIN_POSITIVE.into());
        B::float_div(e, sum)
    }
}

/// The f32 kernels on flex; other dtypes run the compositions.
mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{BoolStore, DType, TensorData};
    use rayon::prelude::*;

    use super::*;

    /// Elements per rayon task of the element-wise kernels.
    const CHUNK: usize = 16 * 1024;

    /// `t` laid out contiguously over exactly its own buffer (itself, without a copy, when it
    /// already is): read with [`values`], or written in place by `storage_mut` when `t` owns
    /// the buffer (copied once when it is shared).
    fn dense(t: FlexTensor) -> FlexTensor {
        let n = t.shape().num_elements();
        let exact = t.layout().contiguous_offsets() == Some((0, n))
            && t.bytes().len() == n * std::mem::size_of::<f32>();
        if exact { t } else { t.to_contiguous() }
    }

    /// The f32 elements of a [`dense`] tensor.
    fn values(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>().expect("a dense f32 tensor")
    }

    fn tensor(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    fn all_f32(ts: &[&FlexTensor]) -> bool {
        ts.iter().all(|t| t.dtype() == DType::F32)
    }

    pub(super) fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x]) {
            return composed::gelu_tanh::<Flex>(x);
        }
        let shape = x.shape();
        let x = dense(x);
        let xs = values(&x);
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(o, x)| simd::gelu(x, o));
        tensor(out, shape)
    }

    pub(super) fn gelu_tanh_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &grad]) || x.shape() != grad.shape() {
            return composed::gelu_tanh_backward::<Flex>(x, grad);
        }
        let x = dense(x);
        let xs = values(&x);
        let mut grad = dense(grad);
        grad.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(g, x)| simd::gelu_backward(x, g));
        grad
    }

    /// `(B, T, D)` with `(B, D)` modulation, or `None` for other shapes.
    fn ln_dims(x: &FlexTensor, rows: &FlexTensor) -> Option<[usize; 3]> {
        let (xs, rs) = (x.shape(), rows.shape());
        (xs.num_dims() == 3 && rs.num_dims() == 2 && rs[0] == xs[0] && rs[1] == xs[2])
            .then(|| [xs[0], xs[1], xs[2]])
    }

    pub(super) fn ln_modulate(
        x: FlexTensor,
        shift: FlexTensor,
        scale: FlexTensor,
        eps: f64,
    ) -> FlexTensor {
        let dims = ln_dims(&x, &shift).filter(|_| ln_dims(&x, &scale).is_some());
        let (Some([_, t, d]), true) = (dims, all_f32(&[&x, &shift, &scale])) else {
            return composed::ln_modulate::<Flex>(x, shift, scale, eps);
        };
        let shape = x.shape();
        let (x, shift, scale) = (dense(x), dense(shift), dense(scale));
        let (xs, sh, sc) = (values(&x), values(&shift), values(&scale));
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(t * d)
            .zip(xs.par_chunks(t * d))
            .enumerate()
            .for_each(|(b, (o, x))| {
                let (sh, sc) = (&sh[b * d..(b + 1) * d], &sc[b * d..(b + 1) * d]);
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let (mean, rstd) = moments(x, eps);
                    for i in 0..d {
                        o[i] = (x[i] - mean) * rstd * (1.0 + sc[i]) + sh[i];
                    }
                }
            });
        tensor(out, shape)
    }

    /// The mean and `1/√(var + ε)` of a row (two passes, f32 accumulators as PyTorch's).
    fn moments(x: &[f32], eps: f64) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + eps as f32).sqrt())
    }

    pub(super) fn ln_modulate_backward(
        x: FlexTensor,
        scale: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let ok = all_f32(&[&x, &scale, &grad]) && x.shape() == grad.shape();
        let (Some([b, t, d]), true) = (ln_dims(&x, &scale), ok) else {
            return composed::ln_modulate_backward::<Flex>(x, scale, grad, eps);
        };
        let shape = x.shape();
        let (x, scale, grad) = (dense(x), dense(scale), dense(grad));
        let (xs, sc, gs) = (values(&x), values(&scale), values(&grad));
        let mut dx = vec![0f32; xs.len()];
        let mut dshift = vec![0f32; b * d];
        let mut dscale = vec![0f32; b * d];
        dx.par_chunks_mut(t * d)
            .zip(dshift.par_chunks_mut(d).zip(dscale.par_chunks_mut(d)))
            .enumerate()
            .for_each(|(bi, (dx, (dsh, dsc)))| {
                let sc = &sc[bi * d..(bi + 1) * d];
                let rows = bi * t * d..(bi + 1) * t * d;
                let (x, g) = (&xs[rows.clone()], &gs[rows]);
                let mut xhat = vec![0f32; d];
                let mut h = vec![0f32; d];
                for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let (mean, rstd) = moments(x, eps);
                    let (mut sum_h, mut sum_hx) = (0f32, 0f32);
                    for i in 0..d {
                        xhat[i] = (x[i] - mean) * rstd;
                        dsh[i] += g[i];
                        dsc[i] += g[i] * xhat[i];
                        h[i] = g[i] * (1.0 + sc[i]);
                        sum_h += h[i];
                        sum_hx += h[i] * xhat[i];
                    }
                    let (mean_h, mean_hx) = (sum_h / d as f32, sum_hx / d as f32);
                    for i in 0..d {
                        dx[i] = (h[i] - mean_h - xhat[i] * mean_hx) * rstd;
                    }
                }
            });
        let rows = burn::tensor::Shape::from([b, d]);
        (
            tensor(dx, shape),
            tensor(dshift, rows.clone()),
            tensor(dscale, rows),
        )
    }

    pub(super) fn attention_probs(q: FlexTensor, k: FlexTensor, masked: FlexTensor) -> FlexTensor {
        use burn::backend::ops::FloatTensorOps;
        let byte_mask = matches!(
            masked.dtype(),
            DType::Bool(BoolStore::Native | BoolStore::U8)
        );
        let (qs, ks) = (q.shape(), k.shape());
        let scores = burn::tensor::Shape::from([qs[0], qs[1], qs[2], ks[2]]);
        if !all_f32(&[&q, &k]) || !byte_mask || masked.shape() != scores {
            return composed::attention_probs::<Flex>(q, k, masked);
        }
        let scale = 1.0 / (q.shape()[3] as f32).sqrt();
        let mut s = dense(Flex::float_matmul(q, Flex::float_transpose(k)));
        let n = s.shape()[3];
        let m = masked.to_contiguous();
        let (start, end) = m.layout().contiguous_offsets().expect("contiguous");
        let mask: &[u8] = &m.bytes()[start..end];
        s.storage_mut::<f32>()
            .par_chunks_mut(CHUNK.next_multiple_of(n))
            .zip(mask.par_chunks(CHUNK.next_multiple_of(n)))
            .for_each(|(s, m)| {
                for (row, m) in s.chunks_mut(n).zip(m.chunks(n)) {
                    simd::masked_softmax(row, m, scale);
                }
            });
        s
    }
}

/// Loops written for the compiler's vectoriser, compiled for AVX-512, AVX2 + FMA and the
/// baseline and chosen at run time.
mod simd {
    use super::{GELU_CUBIC, GELU_EXP_CAP, SQRT_2_OVER_PI};

    /// `exp(x)` for `x ≤ 88`, relative error below 2e−7: `2^n · p(r)` with `x = n·ln2 + r`,
    /// `|r| ≤ ln2/2` and a degree-6 polynomial (Cephes' `expf` coefficients); `0` below −87.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        let x = x.clamp(-87.0, 88.0);
        // Round to nearest by the 1.5·2²³ trick: `t`'s low mantissa bits are then `n` itself,
        // so `2ⁿ` comes from integer operations (a float → int `as` cast would not vectorise).
        const ROUND: f32 = 12_582_912.0;
        let t = x * LOG2E + ROUND;
        let n = t - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = 1.987_569_1e-4f32;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 0.166_666_65;
        let p = p * r + 0.5;
        let p = p * r * r + r + 1.0;
        let two_n = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
        p * f32::from_bits(two_n)
    }

    macro_rules! dispatch {
        ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
            $(#[$doc])*
            pub(super) fn $name($($arg: $ty),*) {
                #[inline(always)]
                fn body($($arg: $ty),*) $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                    unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                    if std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512dq")
                        && std::is_x86_feature_detected!("avx512vl")
                    {
                        // SAFETY: the features were detected on this CPU.
                        return unsafe { v4($($arg),*) };
                    }
                    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                        // SAFETY: the features were detected on this CPU.
                        return unsafe { v3($($arg),*) };
                    }
                }
                body($($arg),*)
            }
        };
    }

    /// Partial accumulators of the row reductions.
    const LANES: usize = 16;

    /// `min(−2u, 40)` of the tanh GELU.
    #[inline(always)]
    fn neg_two_u(x: f32) -> f32 {
        ((-2.0 * SQRT_2_OVER_PI) * x * (GELU_CUBIC * x * x + 1.0)).min(GELU_EXP_CAP)
    }

    dispatch! {
        /// `out = gelu(x)`.
        fn gelu(x: &[f32], out: &mut [f32]) {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = x / (1.0 + exp(neg_two_u(x)));
            }
        }
    }

    dispatch! {
        /// `g ← gelu'(x)·g`.
        fn gelu_backward(x: &[f32], g: &mut [f32]) {
            for (g, &x) in g.iter_mut().zip(x) {
                let z = neg_two_u(x);
                let sigma = 1.0 / (1.0 + exp(z));
                let du = (2.0 * SQRT_2_OVER_PI) * (3.0 * GELU_CUBIC * x * x + 1.0);
                let slope = if z >= GELU_EXP_CAP { 0.0 } else { x * sigma * (1.0 - sigma) * du };
                *g *= sigma + slope;
            }
        }
    }

    dispatch! {
        /// Row ← `softmax(scale·row)` over the keys whose mask byte is 0 (masked keys get 0;
        /// a fully masked row is all 0).
        fn masked_softmax(row: &mut [f32], masked: &[u8], scale: f32) {
            // Sixteen lanes of partial maxima and sums over whole chunks, then the tail: a
            // strict left-to-right float reduction would not vectorise.
            let split = row.len() / LANES * LANES;
            let (body, tail) = row.split_at_mut(split);
            let (mbody, mtail) = masked.split_at(split);
            let mut lanes = [f32::MIN; LANES];
            for (c, m) in body.chunks_exact_mut(LANES).zip(mbody.chunks_exact(LANES)) {
                for i in 0..LANES {
                    c[i] = if m[i] != 0 { f32::NEG_INFINITY } else { c[i] * scale };
                    lanes[i] = lanes[i].max(c[i]);
                }
            }
            let mut max = lanes.iter().fold(f32::MIN, |a, &b| a.max(b));
            for (v, &m) in tail.iter_mut().zip(mtail) {
                *v = if m != 0 { f32::NEG_INFINITY } else { *v * scale };
                max = max.max(*v);
            }
            let mut lanes = [0f32; LANES];
            for (c, m) in body.chunks_exact_mut(LANES).zip(mbody.chunks_exact(LANES)) {
                for i in 0..LANES {
                    c[i] = if m[i] != 0 { 0.0 } else { exp(c[i] - max) };
                    lanes[i] += c[i];
                }
            }
            let mut sum: f32 = lanes.iter().sum();
            for (v, &m) in tail.iter_mut().zip(mtail) {
                *v = if m != 0 { 0.0 } else { exp(*v - max) };
                sum += *v;
            }
            let inv = 1.0 / sum.max(f32::MIN_POSITIVE);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::module::{attention as burn_attention, layer_norm};
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Device, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn values(t: Tensor<3>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    fn random(shape: [usize; 3], spread: f32, rng: &mut ChaCha8Rng) -> TensorData {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-spread..spread)).collect();
        TensorData::new(v, shape)
    }

    /// `|a − b| ≤ tol·max(1, |b|)` element-wise.
    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn vectorised_exp_is_within_3e_7_of_f64_exp() {
        for i in -86_000..=87_900 {
            let x = i as f32 * 1e-3;
            let (got, want) = (simd::exp(x), f64::from(x).exp());
            let rel = ((f64::from(got) - want) / want).abs();
            assert!(rel < 3e-7, "exp({x}) = {got}, want {want} (rel {rel:e})");
        }
        assert_eq!(simd::exp(0.0), 1.0);
    }

    #[test]
    fn gelu_and_its_gradient_match_the_composed_chain() {
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Values up to ±30 reach the capped exponent; 20,000 elements span several rayon tasks.
        let data = random([4, 50, 100], 30.0, &mut rng);
        let weights = random([4, 50, 100], 1.0, &mut rng);
        let w = Tensor::<3>::from_data(weights, &device);
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(data.clone(), &device).require_grad();
            let y = if fused {
                gelu_tanh(x.clone())
            } else {
                let z = x
                    .clone()
                    .square()
                    .mul_scalar(GELU_CUBIC)
                    .add_scalar(1.0)
                    .mul(x.clone());
                let z = z.mul_scalar(-2.0 * SQRT_2_OVER_PI).clamp_max(GELU_EXP_CAP);
                x.clone().div(z.exp().add_scalar(1.0))
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            let g = x.grad(&grads).expect("x is tracked");
            (
                values(y.inner()),
                g.into_data().iter::<f32>().collect::<Vec<_>>(),
            )
        };
        let ((y, g), (y_ref, g_ref)) = (run(true), run(false));
        assert_close(&y, &y_ref, 1e-6, "gelu");
        assert_close(&g, &g_ref, 1e-5, "gelu'");
        assert!(g.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn ln_modulate_and_its_gradients_match_layer_norm_then_modulation() {
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (b, t, d) = (3, 37, 64);
        let data = random([b, t, d], 3.0, &mut rng);
        let mods = random([2, b, d], 0.5, &mut rng);
        let weights = random([b, t, d], 1.0, &mut rng);
        let w = Tensor::<3>::from_data(weights, &device);
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(data.clone(), &device).require_grad();
            let m = Tensor::<3>::from_data(mods.clone(), &device);
            let shift = m.clone().narrow(0, 0, 1).reshape([b, d]).require_grad();
            let scale = m.narrow(0, 1, 1).reshape([b, d]).require_grad();
            let y = if fused {
                ln_modulate(x.clone(), shift.clone(), scale.clone(), 1e-6)
            } else {
                let gamma = Tensor::<1>::ones([d], &device);
                layer_norm(x.clone(), gamma, None, 1e-6)
                    * (scale.clone().unsqueeze_dim::<3>(1) + 1.0)
                    + shift.clone().unsqueeze_dim::<3>(1)
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            let grad = |t: Tensor<2>| {
                t.grad(&grads)
                    .expect("tracked")
                    .into_data()
                    .iter::<f32>()
                    .collect::<Vec<_>>()
            };
            let gx = x
                .grad(&grads)
                .expect("tracked")
                .into_data()
                .iter::<f32>()
                .collect::<Vec<_>>();
            (values(y.inner()), gx, grad(shift), grad(scale))
        };
        let (fused, reference) = (run(true), run(false));
        assert_close(&fused.0, &reference.0, 1e-5, "y");
        assert_close(&fused.1, &reference.1, 1e-4, "dx");
        assert_close(&fused.2, &reference.2, 1e-5, "dshift");
        assert_close(&fused.3, &reference.3, 1e-4, "dscale");
    }

    #[test]
    fn attention_and_its_gradients_match_burns_attention() {
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, h, t, dh) = (2, 3, 29, 16);
        let qkv: Vec<TensorData> = (0..3)
            .map(|_| random([b * h, t, dh], 1.5, &mut rng))
            .collect();
        // Key padding: the last `i` keys of batch row `i` masked, and every query keeps a key.
        let mask: Vec<bool> = (0..b * h * t * t)
            .map(|i| (i % t) >= t - (i / (h * t * t)) * 5)
            .collect();
        let weights = random([b * h, t, dh], 1.0, &mut rng);
        let run = |fused: bool| {
            let [q, k, v] = [0, 1, 2].map(|i| {
                Tensor::<3>::from_data(qkv[i].clone(), &device)
                    .reshape([b, h, t, dh])
                    .require_grad()
            });
            let masked =
                Tensor::<4, Bool>::from_data(TensorData::new(mask.clone(), [b, h, t, t]), &device);
            let o = if fused {
                attention(q.clone(), k.clone(), v.clone(), masked)
            } else {
                let options = AttentionModuleOptions::default();
                burn_attention(q.clone(), k.clone(), v.clone(), Some(masked), None, options)
            };
            let w = Tensor::<3>::from_data(weights.clone(), &device).reshape([b, h, t, dh]);
            let grads = (o.clone() * w).sum().backward();
            let mut out = vec![o.into_data().iter::<f32>().collect::<Vec<_>>()];
            for x in [q, k, v] {
                out.push(
                    x.grad(&grads)
                        .expect("tracked")
                        .into_data()
                        .iter::<f32>()
                        .collect(),
                );
            }
            out
        };
        let (fused, reference) = (run(true), run(false));
        for (i, what) in ["o", "dq", "dk", "dv"].iter().enumerate() {
            assert_close(&fused[i], &reference[i], 1e-5, what);
        }
    }

    #[test]
    fn the_composed_default_bodies_match_the_flex_kernels() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let flex = |d: &TensorData| FlexTensor::from_data(d.clone());
        let vals = |t: FlexTensor| t.into_data().iter::<f32>().collect::<Vec<_>>();
        let (b, t, d) = (2, 11, 24);
        let x = random([b, t, d], 6.0, &mut rng);
        let g = random([b, t, d], 1.0, &mut rng);
        let rows = random([1, b, d], 0.5, &mut rng).convert::<f32>();
        let rows = TensorData::new(rows.iter::<f32>().collect(), [b, d]);
        assert_close(
            &vals(Flex::gelu_tanh(flex(&x))),
            &vals(composed::gelu_tanh::<Flex>(flex(&x))),
            1e-6,
            "gelu",
        );
        assert_close(
            &vals(Flex::gelu_tanh_backward(flex(&x), flex(&g))),
            &vals(composed::gelu_tanh_backward::<Flex>(flex(&x), flex(&g))),
            1e-5,
            "gelu'",
        );
        let fused = Flex::ln_modulate_backward(flex(&x), flex(&rows), flex(&g), 1e-6);
        let reference =
            composed::ln_modulate_backward::<Flex>(flex(&x), flex(&rows), flex(&g), 1e-6);
        assert_close(&vals(fused.0), &vals(reference.0), 1e-4, "dx");
        assert_close(&vals(fused.1), &vals(reference.1), 1e-5, "dshift");
        assert_close(&vals(fused.2), &vals(reference.2), 1e-4, "dscale");
        assert_close(
            &vals(Flex::ln_modulate(flex(&x), flex(&rows), flex(&rows), 1e-6)),
            &vals(composed::ln_modulate::<Flex>(
                flex(&x),
                flex(&rows),
                flex(&rows),
                1e-6,
            )),
            1e-5,
            "ln_modulate",
        );
    }
}
