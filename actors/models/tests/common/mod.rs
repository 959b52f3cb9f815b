//! Helpers shared by the integration tests: small configurations and perturbed models.

#![allow(dead_code)]

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_models::rectified_flow::normal_tensor;
use rlrig_models::{Dit, DitConfig};

/// A small DiT that runs in milliseconds: 32×32, width 32, depth 2, 2 heads.
pub fn tiny(patch: usize, in_channels: usize) -> DitConfig {
    DitConfig {
        patch,
        in_channels,
        width: 32,
        depth: 2,
        heads: 2,
        ..DitConfig::diffuser()
    }
}

/// Adds `N(0, scale²)` noise to every parameter, so that the zero-initialised layers stop
/// hiding the network (a fresh DiT outputs exactly 0).
pub fn perturb(model: Dit, scale: f64, seed: u64) -> Dit {
    struct Noise {
        rng: ChaCha8Rng,
        scale: f64,
    }
    impl ModuleMapper for Noise {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                let noise = normal_tensor(t.dims(), &mut self.rng, &t.device());
                t + noise.mul_scalar(self.scale)
            })
        }
    }
    model.map(&mut Noise {
        rng: ChaCha8Rng::seed_from_u64(seed),
        scale,
    })
}

/// A perturbed tiny model on the CPU.
pub fn model(patch: usize, in_channels: usize, seed: u64) -> Dit {
    let device = Device::flex();
    device.seed(seed);
    perturb(
        Dit::new(&tiny(patch, in_channels), &device).unwrap(),
        0.05,
        seed,
    )
}

/// The values of a tensor on the host.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Largest absolute difference between two tensors.
pub fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
