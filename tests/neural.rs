//! The neural kinds in real runs: the Diffuser and Editor with weights files made here (a small
//! random network), and `flows/infer.toml` with the four shipped, trained networks (whose
//! quality `rlrig quality` and docs/RESULTS.md's tables measure; here: that they run and keep the
//! contract).

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
            "flows/infer-baseline.toml".into(),
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
    let store = TrajectoryStore::open(&tmp.path().join("infer-baseline/store")).unwrap();
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

#[test]
fn the_shipped_networks_run_the_infer_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = format!("run_dir={}", tmp.path().display());
    let o = rlrig(&[
        "run",
        "flows/infer.toml",
        "--set",
        "prompts.count=6",
        "--set",
        "cycle.max_rounds=1",
        "--set",
        &run_dir,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("6 done, 0 failed"), "{}", text(&o));
    let store = TrajectoryStore::open(&tmp.path().join("infer/store")).unwrap();
    let mut edits = 0;
    for id in 0..6 {
        let t = store.get(id).unwrap().unwrap();
        for step in &t.steps {
            match &step.output {
                StepOutput::Report(r) => {
                    // The Checker's score is the share of its own verdicts met.
                    let met = r
                        .items
                        .iter()
                        .filter(|v| **v == rlrig_contract::ItemVerdict::Present)
                        .count()
                        + r.relations
                            .iter()
                            .filter(|v| **v == rlrig_contract::RelationVerdict::Holds)
                            .count();
                    let asked = r.items.len() + r.relations.len();
                    assert_eq!(r.score, met as f64 / asked as f64);
                }
                StepOutput::Edit(e) => {
                    edits += 1;
                    // The Policy's tokens: one log-prob each, ended by <eos>, and a prompt in
                    // the edit language.
                    assert_eq!(e.token_ids.len(), e.logprobs.len());
                    assert_eq!(e.token_ids.last(), Some(&rlrig_models::text::EOS));
                    assert!(e.logprobs.iter().all(|l| *l <= 0.0));
                    rlrig_world::edit::Edit::parse(&e.edit_prompt)
                        .unwrap_or_else(|err| panic!("{err}"));
                }
                _ => {}
            }
        }
    }
    assert!(
        edits > 0,
        "the Checker found nothing to repair in six prompts"
    );
}

#[test]
fn quality_measures_the_shipped_networks_and_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    for which in ["editor", "checker", "policy"] {
        let json = tmp.path().join(format!("{which}.json"));
        let o = rlrig(&[
            "quality",
            which,
            "--n",
            "5",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{which}: {}", text(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        match which {
            "editor" => assert_eq!(v["clean"]["all"]["edits"], 5, "{v}"),
            "checker" => assert_eq!(v["scenes"], 5, "{v}"),
            _ => assert_eq!(v["oracle_reflection"]["scenes"], 5, "{v}"),
        }
    }
    // A weights file that is not there is named.
    let o = rlrig(&[
        "quality",
        "checker",
        "--n",
        "2",
        "--checker",
        "nope.safetensors",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope.safetensors"), "{}", text(&o));
}
