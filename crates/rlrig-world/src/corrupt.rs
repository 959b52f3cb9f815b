//! Procedural corruptions of world images: the imperfections of generated images, for testing
//! the oracle and (later) for training the Checker.

use rand::Rng;
use rand_distr_free::standard_normal;
use rlrig_contract::Image;

/// Adds independent Gaussian noise of standard deviation `sigma` (in 0–255 units) to every
/// channel, clamped to 0–255.
pub fn gaussian_noise<R: Rng>(image: &mut Image, sigma: f64, rng: &mut R) {
    for v in image.pixels_mut() {
        *v = (*v as f64 + sigma * standard_normal(rng))
            .round()
            .clamp(0.0, 255.0) as u8;
    }
}

/// Replaces every pixel by the mean of the `(2·radius+1)²` box around it (clamped at edges).
pub fn box_blur(image: &mut Image, radius: u32) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let src = image.pixels().to_vec();
    let r = radius as i64;
    for y in 0..h {
        for x in 0..w {
            let (mut sum, mut n) = ([0u32; 3], 0u32);
            for yy in (y - r).max(0)..=(y + r).min(h - 1) {
                for xx in (x - r).max(0)..=(x + r).min(w - 1) {
                    let i = ((yy * w + xx) * 3) as usize;
                    for k in 0..3 {
                        sum[k] += src[i + k] as u32;
                    }
                    n += 1;
                }
            }
            image.put(x as u32, y as u32, sum.map(|s| ((s + n / 2) / n) as u8));
        }
    }
}

/// Paints `count` single pixels of random colours at random places.
pub fn specks<R: Rng>(image: &mut Image, count: usize, rng: &mut R) {
    for _ in 0..count {
        let (x, y) = (
            rng.random_range(0..image.width()),
            rng.random_range(0..image.height()),
        );
        image.put(x, y, [rng.random(), rng.random(), rng.random()]);
    }
}

mod rand_distr_free {
    use rand::Rng;

    /// A standard normal draw (Box–Muller), to avoid a dependency for one function.
    pub fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
