//! Config validation and config-file reading of the baselines.

use rlrig_baseline::{
    MistakenRenderer, MistakenRendererConfig, OracleChecker, OracleCheckerConfig, RulePolicy,
    RulePolicyConfig, SceneEditor, SceneEditorConfig,
};

#[test]
fn defaults_are_valid_and_documented_values() {
    let r = MistakenRenderer::new(MistakenRendererConfig::default()).unwrap();
    assert_eq!(
        *r.config(),
        MistakenRendererConfig {
            size: 32,
            mistake_rate: 0.5,
            swap: 0.4,
            misplace: 0.4,
            recolour: 0.1,
            drop: 0.1,
        }
    );
    let c = OracleChecker::new(OracleCheckerConfig::default()).unwrap();
    assert_eq!(c.config().max_colour_distance, 90.0);
    assert_eq!(c.config().min_area_fraction, 0.2);
    assert!(
        RulePolicy::new(RulePolicyConfig::default())
            .unwrap()
            .config()
            .place_added
    );
    let e = SceneEditor::new(SceneEditorConfig::default()).unwrap();
    assert_eq!(e.config().context_loss, 0.05);
}

#[test]
fn out_of_range_values_are_refused_naming_the_key() {
    let renderer = |c: MistakenRendererConfig| MistakenRenderer::new(c).unwrap_err().to_string();
    assert_eq!(
        renderer(MistakenRendererConfig {
            mistake_rate: 1.5,
            ..Default::default()
        }),
        "MistakenRenderer config: `mistake_rate` = 1.5: must be a probability in [0, 1]"
    );
    assert_eq!(
        renderer(MistakenRendererConfig {
            size: 16,
            ..Default::default()
        }),
        "MistakenRenderer config: `size` = 16: must be at least 24 (pixels per side)"
    );
    assert_eq!(
        renderer(MistakenRendererConfig {
            drop: -0.1,
            ..Default::default()
        }),
        "MistakenRenderer config: `drop` = -0.1: must be a finite weight of at least 0"
    );
    assert!(
        renderer(MistakenRendererConfig {
            misplace: f64::NAN,
            ..Default::default()
        })
        .contains("`misplace` = NaN")
    );
    let zero = MistakenRendererConfig {
        swap: 0.0,
        misplace: 0.0,
        recolour: 0.0,
        drop: 0.0,
        ..Default::default()
    };
    assert!(renderer(zero.clone()).contains("all 0 while mistake_rate is above 0"));
    // With no mistakes asked for, zero weights are fine.
    MistakenRenderer::new(MistakenRendererConfig {
        mistake_rate: 0.0,
        ..zero
    })
    .unwrap();

    assert_eq!(
        SceneEditor::new(SceneEditorConfig {
            context_loss: -0.01,
            ..Default::default()
        })
        .unwrap_err()
        .to_string(),
        "SceneEditor config: `context_loss` = -0.01: must be a probability in [0, 1]"
    );
    assert_eq!(
        OracleChecker::new(OracleCheckerConfig {
            max_colour_distance: 0.0,
            ..Default::default()
        })
        .unwrap_err()
        .to_string(),
        "OracleChecker config: `max_colour_distance` = 0: must be a finite RGB distance above 0"
    );
    assert_eq!(
        OracleChecker::new(OracleCheckerConfig {
            min_area_fraction: 2.0,
            ..Default::default()
        })
        .unwrap_err()
        .key,
        "min_area_fraction"
    );
}

#[test]
fn config_files_default_missing_keys_and_refuse_unknown_ones() {
    let c: MistakenRendererConfig = toml::from_str("mistake_rate = 0.25\nsize = 64").unwrap();
    assert_eq!(
        c,
        MistakenRendererConfig {
            mistake_rate: 0.25,
            size: 64,
            ..Default::default()
        }
    );
    let empty: SceneEditorConfig = toml::from_str("").unwrap();
    assert_eq!(empty, SceneEditorConfig::default());
    let e = toml::from_str::<SceneEditorConfig>("context_los = 0.1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `context_los`"), "{e}");
    assert!(e.contains("context_loss"), "{e}");
    let e = toml::from_str::<RulePolicyConfig>("place_added = 1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("place_added"), "{e}");
    let e = toml::from_str::<OracleCheckerConfig>("speckle = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `speckle`"), "{e}");
}
