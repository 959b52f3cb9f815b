//! The DiT's shapes, its zero initialisation, and its text masking.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{max_diff, model, tiny, values};
use rlrig_models::text::{PAD, TextBatch, Tokenizer};
use rlrig_models::{Dit, DitConfig};

fn inputs(config: &DitConfig, batch: usize, device: &Device) -> (Tensor<4>, Tensor<1>) {
    let x = Tensor::<4>::from_data(
        TensorData::new(
            (0..batch * config.in_channels * config.image_size * config.image_size)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<_>>(),
            [
                batch,
                config.in_channels,
                config.image_size,
                config.image_size,
            ],
        ),
        device,
    );
    let s = Tensor::<1>::from_data(
        TensorData::new((0..batch).map(|i| 0.1 + 0.2 * i as f32).collect(), [batch]),
        device,
    );
    (x, s)
}

#[test]
fn forward_shapes_for_patch_4_and_8_and_3_or_6_channels() {
    let device = Device::flex();
    let tok = Tokenizer::default();
    for (patch, in_channels) in [(4, 3), (8, 3), (4, 6), (8, 6)] {
        let config = tiny(patch, in_channels);
        assert_eq!(config.num_patches(), (32 / patch) * (32 / patch));
        let model = model(patch, in_channels, 1);
        let text = tok
            .batch(
                &[
                    "red circle left of blue square",
                    "",
                    "remove the red circle",
                ],
                &device,
            )
            .unwrap();
        let (x, s) = inputs(&config, 3, &device);
        let v = model.forward(x, s, text.ids().clone(), text.mask().clone());
        assert_eq!(v.dims(), [3, 3, 32, 32], "patch {patch}, in {in_channels}");
        assert!(values(v).iter().all(|x| x.is_finite()));
    }
}

#[test]
fn a_fresh_network_predicts_zero_and_has_the_documented_size() {
    let device = Device::flex();
    let config = DitConfig::diffuser();
    let model = Dit::new(&config, &device).unwrap();
    let text = Tokenizer::default()
        .batch(&["green triangle"], &device)
        .unwrap();
    let (x, s) = inputs(&config, 1, &device);
    let v = model.forward(x, s, text.ids().clone(), text.mask().clone());
    assert!(values(v).iter().all(|&x| x == 0.0), "adaLN-Zero output");
    // The reference's parameter count (scripts/torch_reference/dit.py, vocabulary 32).
    let d = 128;
    let linear = |i: usize, o: usize| i * o + o;
    let block =
        linear(d, 3 * d) + linear(d, d) + linear(d, 4 * d) + linear(4 * d, d) + linear(d, 6 * d);
    let expected = linear(48, d)
        + linear(256, d)
        + linear(d, d)
        + 32 * d
        + 6 * block
        + linear(d, 2 * d)
        + linear(d, 48);
    assert_eq!(model.num_params(), expected);
}

#[test]
fn padding_tokens_are_not_attended_to() {
    for text_layers in [0, 2] {
        padding_is_not_attended_to_with(text_layers);
    }
}

/// Without and with the text encoder (whose padding must stay out of the real tokens too).
fn padding_is_not_attended_to_with(text_layers: usize) {
    let device = Device::flex();
    let config = DitConfig {
        text_layers,
        ..tiny(8, 3)
    };
    device.seed(2);
    let model = common::perturb(Dit::new(&config, &device).unwrap(), 0.05, 2);
    let ids = Tokenizer::default()
        .encode("red circle above blue square")
        .unwrap();
    let real = ids.iter().filter(|&&id| id != PAD).count();
    let clean = TextBatch::from_ids(std::slice::from_ref(&ids), &device).unwrap();
    // The same real tokens, garbage where the mask says padding.
    let mut garbage = ids.clone();
    for id in &mut garbage[real..] {
        *id = 7;
    }
    let garbage_ids = Tensor::<2, Int>::from_data(
        TensorData::new(
            garbage.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [1, 48],
        ),
        &device,
    );
    let (x, s) = inputs(&config, 1, &device);
    let a = model.forward(
        x.clone(),
        s.clone(),
        clean.ids().clone(),
        clean.mask().clone(),
    );
    let b = model.forward(x.clone(), s.clone(), garbage_ids, clean.mask().clone());
    assert!(
        max_diff(a.clone(), b) < 1e-6,
        "padding leaked into the output"
    );

    // ... while the real tokens matter.
    let other = Tokenizer::default()
        .batch(&["red circle below blue square"], &device)
        .unwrap();
    let c = model.forward(x, s, other.ids().clone(), other.mask().clone());
    assert!(
        max_diff(a, c) > 1e-4,
        "the prompt does not reach the output"
    );
}

#[test]
fn invalid_configs_are_refused() {
    let device = Device::flex();
    let bad = DitConfig {
        patch: 5,
        ..DitConfig::diffuser()
    };
    assert_eq!(
        Dit::new(&bad, &device).unwrap_err().to_string(),
        "invalid DiT config: patch 5 does not divide image_size 32"
    );
    let bad = DitConfig {
        heads: 3,
        ..DitConfig::diffuser()
    };
    assert!(
        Dit::new(&bad, &device)
            .unwrap_err()
            .to_string()
            .contains("heads 3")
    );
    let bad = DitConfig {
        vocab_size: 10,
        ..DitConfig::diffuser()
    };
    assert!(Dit::new(&bad, &device).is_err());
    let json = serde_json::to_string(&DitConfig::editor()).unwrap();
    assert_eq!(
        serde_json::from_str::<DitConfig>(&json).unwrap(),
        DitConfig::editor()
    );
    assert!(serde_json::from_str::<DitConfig>(r#"{"width": 3}"#).is_err());
}

#[test]
fn with_the_text_encoder_rows_are_independent_and_the_unconditional_prompt_finite() {
    let device = Device::flex();
    let config = DitConfig {
        text_layers: 2,
        ..tiny(8, 3)
    };
    device.seed(5);
    let model = common::perturb(Dit::new(&config, &device).unwrap(), 0.05, 5);
    let tok = Tokenizer::default();
    let prompts = [
        "red circle left of blue square",
        "",
        "green triangle above yellow square ; blue circle right of the green triangle",
    ];
    let text = tok.batch(&prompts, &device).unwrap();
    let (x, s) = inputs(&config, 3, &device);
    let together = model.forward(
        x.clone(),
        s.clone(),
        text.ids().clone(),
        text.mask().clone(),
    );
    assert!(values(together.clone()).iter().all(|v| v.is_finite()));
    // Each row is what it is alone: the other rows do not reach it.
    for (row, prompt) in prompts.iter().enumerate() {
        let alone = tok.batch(&[*prompt], &device).unwrap();
        let v = model.forward(
            x.clone().narrow(0, row, 1),
            s.clone().narrow(0, row, 1),
            alone.ids().clone(),
            alone.mask().clone(),
        );
        assert!(
            max_diff(v, together.clone().narrow(0, row, 1)) < 1e-5,
            "row {row}"
        );
    }
}
