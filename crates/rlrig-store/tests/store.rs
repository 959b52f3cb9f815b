//! The sled trajectory store on disk: round trips, atomicity, versioning.

use rlrig_contract::{
    CheckReport, EditProposal, Image, ItemVerdict, Outcome, RelationVerdict, Role, Step,
    StepOutput, Trajectory,
};
use rlrig_sg::read_jsonl;
use rlrig_store::{SCHEMA_VERSION, StoreError, TrajectoryStore};

fn trajectory(id: u64) -> Trajectory {
    let prompt = read_jsonl(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}]}"#,
        "t",
    )
    .unwrap()
    .remove(0);
    let img = Image::filled(4, 4, [1, 2, 3]);
    let step = |round, role, output| Step {
        round,
        actor: format!("{role}"),
        role,
        output,
        attempts: 1,
        elapsed_ms: 2,
    };
    Trajectory {
        id,
        prompt,
        seed: 7,
        steps: vec![
            step(0, Role::Diffuser, StepOutput::Image(img.clone())),
            step(
                0,
                Role::Checker,
                StepOutput::Report(CheckReport {
                    items: vec![ItemVerdict::Present],
                    relations: vec![RelationVerdict::CannotTell],
                    score: 0.5,
                    reflection: "hm.".into(),
                }),
            ),
            step(
                1,
                Role::Policy,
                StepOutput::Edit(EditProposal {
                    edit_prompt: "remove the red circle".into(),
                    token_ids: vec![1, 2],
                    logprobs: vec![-0.5, -0.25],
                    policy_version: 3,
                }),
            ),
            step(1, Role::Editor, StepOutput::Image(img)),
        ],
        outcome: Outcome::Done {
            answer: 3,
            score: None,
        },
        started_unix_ms: 1,
        elapsed_ms: 9,
    }
}

#[test]
fn trajectories_round_trip_through_disk_with_shared_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = TrajectoryStore::open(&path).unwrap();
        for id in [3, 1, 2] {
            store.put(&trajectory(id)).unwrap();
        }
        store.flush().unwrap();
    }
    let store = TrajectoryStore::open(&path).unwrap();
    assert_eq!(store.ids().unwrap(), vec![1, 2, 3]);
    assert_eq!(store.get(2).unwrap().unwrap(), trajectory(2));
    assert!(store.get(9).unwrap().is_none());
    assert_eq!(store.image_count(), 1, "identical images are stored once");
}

#[test]
fn foreign_and_future_stores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A sled database that is not ours.
    let foreign = dir.path().join("foreign");
    {
        let db = sled::open(&foreign).unwrap();
        db.insert("hello", "world").unwrap();
        db.flush().unwrap();
    }
    let e = TrajectoryStore::open(&foreign).err().unwrap();
    assert!(matches!(e, StoreError::Incompatible { .. }));
    assert!(
        e.to_string().contains("not an rlrig trajectory store"),
        "{e}"
    );

    // Ours, but from another schema version.
    let other = dir.path().join("other");
    {
        TrajectoryStore::open(&other).unwrap();
    }
    {
        let db = sled::open(&other).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let e = TrajectoryStore::open(&other).err().unwrap();
    assert!(
        e.to_string()
            .contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
        "{e}"
    );
}
