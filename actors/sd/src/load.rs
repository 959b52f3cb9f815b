//! PyTorch-layout safetensors into burn modules, with errors that name the tensors.

use std::path::Path;

use burn::module::Module;
use burn::store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::DType;

use crate::SdError;

/// Loads `path` into `model`: names remapped by `remaps` (regex → replacement), tensors whose
/// name ends with one of `ignore` (checkpoint buffers) dropped, PyTorch's Linear layout and norm names adapted. Every tensor of
/// the model must be there with its shape, and every tensor of the file (but the ignored)
/// must be used: a missing, unexpected or misshapen tensor is an error naming it.
pub(crate) fn pytorch_weights<M: Module + ModuleSnapshot>(
    model: &mut M,
    path: &Path,
    remaps: &[(&str, &str)],
    ignore: &[&str],
) -> Result<(), SdError> {
    if !path.is_file() {
        return Err(SdError::Missing(path.to_owned()));
    }
    let mut store = SafetensorsStore::from_file(path)
        // fp16 / bf16 checkpoints are widened to the model's f32 as they load.
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
        .skip_enum_variants(true)
        .allow_partial(true);
    for (from, to) in remaps {
        store = store.with_key_remapping(*from, *to);
    }
    let fail = |message: String| SdError::Weights {
        path: path.to_owned(),
        message,
    };
    let result = model
        .load_from(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    let unused: Vec<&String> = result
        .unused
        .iter()
        .filter(|n| !ignore.iter().any(|s| n.ends_with(s)))
        .collect();
    let mut problems = Vec::new();
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(n, _)| n.as_str()).collect();
        problems.push(format!("missing tensors: {}", names.join(", ")));
    }
    if !unused.is_empty() {
        problems.push(format!(
            "tensors this configuration has no place for (another architecture?): {}",
            unused
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for e in &result.errors {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(problems.join("; ")))
    }
}
