//! Between burn tensors and the contract's images, and seeded starting noise.

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_contract::{Image, RoleError};

/// Standard-normal latents `[1, c, h, w]` from a seed.
pub(crate) fn noise(seed: u64, c: usize, h: usize, w: usize, device: &Device) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = c * h * w;
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        v.push((r * a.cos()) as f32);
        v.push((r * a.sin()) as f32);
    }
    v.truncate(n);
    Tensor::from_data(TensorData::new(v, [1, c, h, w]), device)
}

/// `[B, 3, H, W]` in `[0, 1]` → images.
pub(crate) fn to_images(t: Tensor<4>) -> Result<Vec<Image>, RoleError> {
    let [b, _, h, w] = t.dims();
    let data = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| RoleError(format!("{e:?}")))?;
    (0..b)
        .map(|i| {
            let mut px = vec![0u8; h * w * 3];
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let v = data[((i * 3 + c) * h + y) * w + x];
                        px[(y * w + x) * 3 + c] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            Image::from_raw(w as u32, h as u32, px).map_err(|e| RoleError(e.to_string()))
        })
        .collect()
}

/// An image → `[1, 3, H, W]` in `[0, 1]`.
pub(crate) fn from_image(img: &Image, device: &Device) -> Tensor<4> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = img.pixels();
    let mut v = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for i in 0..h * w {
            v[c * h * w + i] = px[i * 3 + c] as f32 / 255.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 3, h, w]), device)
}
