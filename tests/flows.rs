//! Flow files: every valid fixture passes `rlrig validate`'s checks; every invalid fixture
//! fails with exactly the error text in its `.expected` file (file, line, column, key, what was
//! expected). `RLRIG_BLESS=1 cargo test --test flows` rewrites the `.expected` files after a
//! deliberate change of wording — review the diff.

use std::path::{Path, PathBuf};

use rlrig::builtin_registry;

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/flows")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// Loads and checks a flow as `rlrig validate` does, with a path relative to the repo root.
fn check(path: &Path, sets: &[String]) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = path.strip_prefix(root).unwrap_or(path);
    let text = std::fs::read_to_string(path).unwrap();
    if rlrig_flow::flow_kind(&text) == rlrig_flow::FlowKind::Pretrain {
        let loaded = rlrig_flow::load_as::<rlrig_flow::PretrainFlow>(rel, &text, sets)
            .map_err(|e| e.to_string())?;
        return rlrig_models::jobs::Job::from_flow(&loaded)
            .map(drop)
            .map_err(|e| e.to_string());
    }
    let loaded = rlrig_flow::load_str(rel, &text, sets).map_err(|e| e.to_string())?;
    builtin_registry()
        .check_flow(&loaded)
        .map_err(|e| e.to_string())
}

#[test]
fn valid_fixtures_and_shipped_flows_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let mut all = fixtures("valid");
    all.extend(
        std::fs::read_dir(root.join("flows"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml")),
    );
    assert!(all.len() >= 6);
    for f in all {
        check(&f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn invalid_fixtures_fail_with_the_expected_text() {
    let bless = std::env::var_os("RLRIG_BLESS").is_some();
    let all = fixtures("invalid");
    assert!(all.len() >= 15);
    let mut mismatches = Vec::new();
    for f in all {
        let err = check(&f, &[]).expect_err(&format!("{} must be rejected", f.display()));
        let expected_path = f.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, format!("{err}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file", f.display()));
        if expected.trim_end() != err {
            mismatches.push(format!(
                "{}:\n  expected: {}\n  got:      {err}",
                f.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn overrides_change_values_and_errors_point_at_them() {
    let infer = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/infer.toml");
    let text = std::fs::read_to_string(&infer).unwrap();
    let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let loaded = rlrig_flow::load_str(
        Path::new("flows/infer.toml"),
        &text,
        &sets(&[
            "cycle.max_rounds=5",
            "prompts.count=7",
            "actors.editor.settings.context_loss=0.5",
            "name=other",
        ]),
    )
    .unwrap();
    assert_eq!(loaded.flow.cycle.max_rounds, 5);
    assert_eq!(loaded.flow.prompts.count, Some(7));
    assert_eq!(loaded.flow.name, "other");
    assert_eq!(loaded.flow.actors["editor"].settings["context_loss"], 0.5);

    let e = rlrig_flow::load_str(
        Path::new("flows/infer.toml"),
        &text,
        &sets(&["cycle.max_rounds=lots"]),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--set cycle.max_rounds=lots: `cycle.max_rounds`: invalid type: string \"lots\", expected u32"
    );
    let e = rlrig_flow::load_str(
        Path::new("flows/infer.toml"),
        &text,
        &sets(&["engine.max_in_flihgt=3"]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("did you mean `max_in_flight`?"),
        "{e}"
    );
    let e = rlrig_flow::load_str(Path::new("flows/infer.toml"), &text, &sets(&["name.x=3"]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--set name.x=3: `name` is a value, not a table"
    );
    let e =
        rlrig_flow::load_str(Path::new("flows/infer.toml"), &text, &sets(&["nokey"])).unwrap_err();
    assert!(e.to_string().contains("expected `dotted.key=value`"));
}

#[test]
fn the_committed_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/flow.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rlrig_flow::schema(),
        "flows/flow.schema.json is stale: run `cargo run -- schema > flows/flow.schema.json`"
    );
}
