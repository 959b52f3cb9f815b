//! The neural Diffuser and Editor kinds in a real run: weights files made here (a small random
//! network — the shipped, trained ones are judged by `flows/infer-neural.toml`, not by tests).

use std::path::Path;
use std::process::Command;

use rlrig_contract::StepOutput;
use rlrig_models::burn::tensor::Device;
use rlrig_models::{Dit, DitConfig, weights};
use rlrig_store::TrajectoryStore;

fn tiny(base: DitConfig, path: &Path) {
    let config = DitConfig {
        patch: 8,
        width: 16,
        depth: 1,
        heads: 2,
        ..base
    };
    weights::save(&Dit::new(&config, &Device::flex()).unwrap(), path).unwrap();
}

fn rlrig(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn neural_diffuser_and_editor_play_their_roles_in_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, e) = (
        tmp.path().join("d.safetensors"),
        tmp.path().join("e.safetensors"),
    );
    tiny(DitConfig::diffuser(), &d);
    tiny(DitConfig::editor(), &e);
    let run_dir = format!("run_dir={}", tmp.path().display());
    let args = |d: &Path, e: &Path| {
        vec![
            "run".to_string(),
            "flows/infer.toml".into(),
            "--set".into(),
            "prompts.count=6".into(),
            "--set".into(),
            run_dir.clone(),
            "--set".into(),
            "actors.diffuser.kind=neural.diffuser".into(),
            "--set".into(),
            format!(
                "actors.diffuser.settings={{ weights = \"{}\", steps = 2 }}",
                d.display()
            ),
            "--set".into(),
            "actors.editor.kind=neural.editor".into(),
            "--set".into(),
            format!(
                "actors.editor.settings={{ weights = \"{}\", steps = 2 }}",
                e.display()
            ),
        ]
    };
    let a = args(&d, &e);
    let o = rlrig(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let store = TrajectoryStore::open(&tmp.path().join("infer/store")).unwrap();
    assert_eq!(store.len(), 6);
    let t = store.get(0).unwrap().unwrap();
    match &t.steps[0].output {
        StepOutput::Image(img) => assert_eq!((img.width(), img.height()), (32, 32)),
        other => panic!("{other:?}"),
    }
    drop(store);

    // An editor's weights where a diffuser's belong: refused before anything runs.
    let mut a = args(&e, &e);
    a.push("--overwrite".into());
    let o = rlrig(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("holds an editor") && text(&o).contains("actor \"diffuser\""),
        "{}",
        text(&o)
    );

    // A missing file names the file.
    let missing = tmp.path().join("nope.safetensors");
    let mut a = args(&missing, &e);
    a.push("--overwrite".into());
    let o = rlrig(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(text(&o).contains("nope.safetensors"), "{}", text(&o));
}
