//! PyTorch-layout safetensors into burn modules, with errors that name the tensors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::DType;
use serde::Deserialize;

use crate::HfError;

/// Loads `path` into `model`: names remapped by `remaps` (regex → replacement), tensors whose
/// name ends with one of `ignore` (checkpoint buffers) dropped, PyTorch's Linear layout and norm names adapted. Every tensor of
/// the model must be there with its shape, and every tensor of the file (but the ignored)
/// must be used: a missing, unexpected or misshapen tensor is an error naming it.
///
/// When `path` is not there but `<path>.index.json` is (transformers' and diffusers' sharded
/// checkpoints: a `weight_map` from tensor to shard file), every shard it names is loaded.
pub fn pytorch_weights<M: Module + ModuleSnapshot>(
    model: &mut M,
    path: &Path,
    remaps: &[(&str, &str)],
    ignore: &[&str],
) -> Result<(), HfError> {
    let index = PathBuf::from(format!("{}.index.json", path.display()));
    let shards = if path.is_file() {
        vec![path.to_owned()]
    } else if index.is_file() {
        shard_files(&index)?
    } else {
        return Err(HfError::Missing(path.to_owned()));
    };
    let origin = if shards.len() == 1 {
        &shards[0]
    } else {
        &index
    };
    let fail = |message: String| HfError::Weights {
        path: origin.to_owned(),
        message,
    };
    // A model tensor is missing when no shard has it; a file tensor is unused when the model
    // has no place for it.
    let mut missing: Option<BTreeSet<String>> = None;
    let mut unused = BTreeSet::new();
    let mut problems = Vec::new();
    for shard in &shards {
        let mut store = SafetensorsStore::from_file(shard)
            // fp16 / bf16 checkpoints are widened to the model's f32 as they load.
            .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
            .skip_enum_variants(true)
            .allow_partial(true);
        for (from, to) in remaps {
            store = store.with_key_remapping(*from, *to);
        }
        let result = model.load_from(&mut store).map_err(|e| HfError::Weights {
            path: shard.clone(),
            message: e.to_string(),
        })?;
        let here: BTreeSet<String> = result.missing.iter().map(|(n, _)| n.clone()).collect();
        missing = Some(match missing {
            None => here,
            Some(m) => m.intersection(&here).cloned().collect(),
        });
        unused.extend(
            result
                .unused
                .iter()
                .filter(|n| !ignore.iter().any(|s| n.ends_with(s)))
                .cloned(),
        );
        problems.extend(result.errors.iter().map(|e| e.to_string()));
    }
    let missing = missing.unwrap_or_default();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        problems.insert(0, format!("missing tensors: {}", names.join(", ")));
    }
    if !unused.is_empty() {
        problems.push(format!(
            "tensors this configuration has no place for (another architecture?): {}",
            unused
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(problems.join("; ")))
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The shard files an index names, beside it, each once; a missing one is an error naming it.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, HfError> {
    let map: ShardIndex = crate::read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = map.weight_map.values().collect();
    if files.is_empty() {
        return Err(HfError::Config {
            path: index.to_owned(),
            message: "`weight_map` names no shard".into(),
        });
    }
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(HfError::Missing(p))
            }
        })
        .collect()
}
