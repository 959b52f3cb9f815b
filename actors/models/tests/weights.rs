//! Weights files: round trips, and clear errors for every way a file can be wrong.

mod common;

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use common::{model, tiny, values};
use rlrig_models::text::Tokenizer;
use rlrig_models::weights::{self, CONFIG_KEY, TensorProblem, WeightsError};
use rlrig_models::{Dit, DitConfig};
use safetensors::SafeTensors;

fn output(model: &Dit) -> Vec<f32> {
    let device = Device::flex();
    let c = model.config().clone();
    let text = Tokenizer::default()
        .batch(&["yellow square right of green circle"], &device)
        .unwrap();
    let x = Tensor::<4>::ones([1, c.in_channels, 32, 32], &device).mul_scalar(0.3);
    let s = Tensor::<1>::from_floats([0.4], &device);
    values(model.forward(x, s, text.ids().clone(), text.mask().clone()))
}

/// Rewrites a weights file, keeping the tensors `keep` accepts and replacing the metadata.
fn rewrite(
    from: &Path,
    to: &Path,
    keep: impl Fn(&str) -> bool,
    metadata: Option<HashMap<String, String>>,
) {
    let bytes = std::fs::read(from).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<_> = st.tensors().into_iter().filter(|(n, _)| keep(n)).collect();
    std::fs::write(to, safetensors::serialize(tensors, metadata).unwrap()).unwrap();
}

fn metadata_with(config: &DitConfig) -> Option<HashMap<String, String>> {
    Some(HashMap::from([(
        CONFIG_KEY.to_owned(),
        serde_json::to_string(config).unwrap(),
    )]))
}

#[test]
fn save_then_load_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("editor.safetensors");
    let original = model(4, 6, 12);
    weights::save(&original, &path).unwrap();
    let loaded = weights::load(&path, &Device::flex()).unwrap();
    assert_eq!(loaded.config(), original.config());
    let (a, b) = (output(&original), output(&loaded));
    assert!(a.iter().any(|&v| v != 0.0));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(weights::read_config(&path).unwrap(), tiny(4, 6));

    // Saving again replaces the file; load_expecting accepts the right architecture.
    let other = model(4, 6, 13);
    weights::save(&other, &path).unwrap();
    let reloaded = weights::load_expecting(&path, &tiny(4, 6), &Device::flex()).unwrap();
    assert_eq!(output(&reloaded), output(&other));
}

#[test]
fn a_missing_or_truncated_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let err = weights::load(&missing, &Device::flex()).unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("weights file {}: ", missing.display()))
    );

    let path = dir.path().join("model.safetensors");
    weights::save(&model(8, 3, 1), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let err = weights::load(&truncated, &Device::flex()).unwrap_err();
    assert!(matches!(err, WeightsError::Format { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("truncated.safetensors: not a valid safetensors file")
    );

    std::fs::write(&truncated, &bytes[..5]).unwrap();
    assert!(matches!(
        weights::load(&truncated, &Device::flex()),
        Err(WeightsError::Format { .. })
    ));
}

#[test]
fn another_architecture_than_expected_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights::save(&model(8, 3, 1), &path).unwrap();
    let wider = DitConfig {
        width: 64,
        ..tiny(8, 3)
    };
    let err = weights::load_expecting(&path, &wider, &Device::flex()).unwrap_err();
    assert!(
        matches!(err, WeightsError::ConfigMismatch { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("holds another architecture than expected: width is 32, expected 64"),
        "{err}"
    );
}

#[test]
fn tensors_that_do_not_fit_the_stored_architecture_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights::save(&model(8, 3, 1), &path).unwrap();

    // The metadata claims width 64; the tensors are width 32.
    let lying = dir.path().join("lying.safetensors");
    let wider = DitConfig {
        width: 64,
        ..tiny(8, 3)
    };
    rewrite(&path, &lying, |_| true, metadata_with(&wider));
    let err = weights::load(&lying, &Device::flex()).unwrap_err();
    let WeightsError::Tensors { problems, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(problems.contains(&TensorProblem::Shape {
        tensor: "patch_embed.weight".into(),
        expected: vec![192, 64],
        found: vec![192, 32],
    }));
    assert!(
        err.to_string().contains("lying.safetensors: tensors do not fit the architecture: tensor `blocks.0.ada.bias` has shape [192], the architecture needs [384]"),
        "{err}"
    );

    // One tensor left out.
    let partial = dir.path().join("partial.safetensors");
    rewrite(
        &path,
        &partial,
        |n| n != "blocks.1.fc2.bias",
        metadata_with(&tiny(8, 3)),
    );
    let err = weights::load(&partial, &Device::flex()).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "tensors do not fit the architecture: tensor `blocks.1.fc2.bias` is missing"
        ),
        "{err}"
    );

    // A deeper network's file claiming to be shallower.
    let deeper = dir.path().join("deeper.safetensors");
    let three = DitConfig {
        depth: 3,
        ..tiny(8, 3)
    };
    let three_path = dir.path().join("three.safetensors");
    weights::save(&Dit::new(&three, &Device::flex()).unwrap(), &three_path).unwrap();
    rewrite(&three_path, &deeper, |_| true, metadata_with(&tiny(8, 3)));
    let err = weights::load(&deeper, &Device::flex()).unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor `blocks.2.ada.bias` is not part of the architecture"),
        "{err}"
    );
}

#[test]
fn a_file_without_or_with_a_broken_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights::save(&model(8, 3, 1), &path).unwrap();

    let bare = dir.path().join("bare.safetensors");
    rewrite(&path, &bare, |_| true, None);
    let err = weights::load(&bare, &Device::flex()).unwrap_err();
    assert!(matches!(err, WeightsError::NoConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("no `rlrig.dit_config` entry"));

    let broken = dir.path().join("broken.safetensors");
    let meta = Some(HashMap::from([(
        CONFIG_KEY.to_owned(),
        r#"{"width": 32}"#.to_owned(),
    )]));
    rewrite(&path, &broken, |_| true, meta);
    assert!(matches!(
        weights::load(&broken, &Device::flex()),
        Err(WeightsError::BadConfig { .. })
    ));

    let invalid = dir.path().join("invalid.safetensors");
    let bad = DitConfig {
        patch: 5,
        ..tiny(8, 3)
    };
    rewrite(&path, &invalid, |_| true, metadata_with(&bad));
    let err = weights::load(&invalid, &Device::flex()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("invalid DiT config: patch 5 does not divide image_size 32"),
        "{err}"
    );
}

#[test]
fn a_text_encoder_grown_onto_a_trained_dit_starts_as_the_same_function() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffuser.safetensors");
    let trained = model(8, 3, 21);
    weights::save(&trained, &path).unwrap();

    let device = Device::flex();
    let grown_config = DitConfig {
        text_layers: 2,
        ..tiny(8, 3)
    };
    let fresh = Dit::new(&grown_config, &device).unwrap();
    let (grown, new) = weights::load_extending(&path, fresh).unwrap();
    assert_eq!(grown.config(), &grown_config);
    // Only the encoder's tensors are new; the zero projection hides them at first.
    assert!(!new.is_empty());
    assert!(new.iter().all(|n| n.starts_with("text.")), "{new:?}");
    assert!(new.contains(&"text.proj.weight".to_owned()), "{new:?}");
    let (a, b) = (output(&trained), output(&grown));
    assert!(a.iter().any(|&v| v != 0.0));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
    // Once the encoder has weights it changes the output, and it saves and loads whole.
    let grown = common::perturb(grown, 0.05, 22);
    assert_ne!(output(&grown), a);
    let grown_path = dir.path().join("grown.safetensors");
    weights::save(&grown, &grown_path).unwrap();
    let loaded = weights::load_expecting(&grown_path, &grown_config, &device).unwrap();
    assert_eq!(output(&loaded), output(&grown));
    // The grown file is not a plain DiT's: loading it as one names the architecture.
    let err = weights::load_expecting(&grown_path, &tiny(8, 3), &device).unwrap_err();
    assert!(err.to_string().contains("text_layers"), "{err}");
}

#[test]
fn extending_still_refuses_tensors_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    let wider = DitConfig {
        width: 64,
        ..tiny(8, 3)
    };
    let device = Device::flex();
    weights::save(&Dit::new(&wider, &device).unwrap(), &path).unwrap();
    let target = Dit::new(&tiny(8, 3), &device).unwrap();
    let err = weights::load_extending(&path, target).unwrap_err();
    assert!(
        matches!(&err, WeightsError::Tensors { problems, .. }
            if problems.iter().any(|p| matches!(p, TensorProblem::Shape { .. }))),
        "{err:?}"
    );

    // A file with a tensor the model lacks (its text encoder) cannot be squeezed into it.
    let grown = DitConfig {
        text_layers: 1,
        ..tiny(8, 3)
    };
    weights::save(&Dit::new(&grown, &device).unwrap(), &path).unwrap();
    let err = weights::load_extending(&path, Dit::new(&tiny(8, 3), &device).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor `text.blocks.0.attn.proj.bias` is not part of the architecture"),
        "{err}"
    );
}
