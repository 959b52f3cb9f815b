//! What the parity tests share: reading reference files written by the fixture scripts, and the
//! relative error they are held to.

#![allow(dead_code)] // each test file uses its part

use std::path::Path;

use rlrig_sd::burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

/// A reference file: tensors as f32 (token ids widened) with their shapes, and its metadata.
pub struct Refs {
    bytes: Vec<u8>,
}

impl Refs {
    /// Reads `path`.
    pub fn open(path: &Path) -> Refs {
        Refs {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    /// The file's metadata (one `meta` key of JSON).
    pub fn meta(&self) -> serde_json::Value {
        let (_, m) = SafeTensors::read_metadata(&self.bytes).unwrap();
        serde_json::from_str(&m.metadata().as_ref().unwrap()["meta"]).unwrap()
    }

    /// A tensor's values and shape.
    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor {name}"));
        let v = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => t
                .data()
                .chunks(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            d => panic!("{name}: {d:?}"),
        };
        (v, t.shape().to_vec())
    }

    /// A tensor's values as f64 (timesteps).
    pub fn values(&self, name: &str) -> Vec<f64> {
        self.f32(name).0.into_iter().map(f64::from).collect()
    }

    /// A tensor on `device`.
    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (v, s) = self.f32(name);
        let shape: [usize; D] = s
            .try_into()
            .unwrap_or_else(|s| panic!("{name}: shape {s:?}"));
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// ‖out − ref‖ / ‖ref‖.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let diff: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// A tensor's values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}
