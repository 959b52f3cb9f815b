//! The sled trajectory store on disk: round trips, the commit log, duplicates, versioning.

use rlrig_contract::{
    Branch, CheckReport, EditProposal, Image, ItemVerdict, Outcome, RelationVerdict, Role, Step,
    StepOutput, Trajectory,
};
use rlrig_sg::read_jsonl;
use std::time::Duration;

use rlrig_store::{FORMAT, SCHEMA_VERSION, StoreError, TrajectoryStore};

fn trajectory(id: u64) -> Trajectory {
    let prompt = read_jsonl(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}]}"#,
        "t",
    )
    .unwrap()
    .remove(0);
    let img = Image::filled(4, 4, [1, 2, 3]);
    let step = |round, role, output| Step {
        chain: None,
        round,
        actor: format!("{role}"),
        role,
        output,
        attempts: 1,
        elapsed_ms: 2,
        branch: None,
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
                    graph: None,
                    estimates: None,
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
        for (seq, id) in [3, 1, 2].into_iter().enumerate() {
            assert_eq!(store.put(&trajectory(id)).unwrap(), seq as u64);
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

#[test]
fn version_1_stores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    {
        let db = sled::open(&path).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format", FORMAT).unwrap();
        meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
        db.open_tree("trajectories")
            .unwrap()
            .insert(1u64.to_be_bytes(), "{}")
            .unwrap();
        db.flush().unwrap();
    }
    let e = TrajectoryStore::open(&path).err().unwrap();
    assert!(matches!(e, StoreError::Incompatible { .. }), "{e}");
    assert!(e.to_string().contains("schema version 1;"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("reads version {SCHEMA_VERSION}")),
        "{e}"
    );
}

/// Ids in commit order, read back through the log in batches of `batch`.
fn read_all(store: &TrajectoryStore, batch: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let got = store.committed_after(cursor, batch).unwrap();
        if got.is_empty() {
            return out;
        }
        assert!(got.len() <= batch);
        cursor = Some(got.last().unwrap().0);
        out.extend(got.into_iter().map(|(seq, t)| (seq, t.id)));
    }
}

#[test]
fn sequence_numbers_are_gap_free_and_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrajectoryStore::open(&dir.path().join("store")).unwrap();
    assert_eq!(store.next_seq().unwrap(), 0);
    assert!(store.committed_after(None, 10).unwrap().is_empty());
    let ids = [40, 7, 13, 2, 99];
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(store.put(&trajectory(*id)).unwrap(), i as u64);
        assert_eq!(store.next_seq().unwrap(), i as u64 + 1);
        assert!(store.contains(*id).unwrap());
    }
    assert!(!store.contains(8).unwrap());
    let expected: Vec<(u64, u64)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64, *id))
        .collect();
    assert_eq!(read_all(&store, 2), expected);
    assert_eq!(read_all(&store, 100), expected);
}

#[test]
fn concurrent_writers_get_distinct_gap_free_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrajectoryStore::open(&dir.path().join("store")).unwrap();
    let per = 25u64;
    let seqs: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|w| {
                let store = &store;
                s.spawn(move || {
                    (0..per)
                        .map(|i| {
                            let id = w * 1000 + i;
                            (store.put(&trajectory(id)).unwrap(), id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(
        sorted.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (0..4 * per).collect::<Vec<_>>()
    );
    assert_eq!(store.next_seq().unwrap(), 4 * per);
    assert_eq!(
        read_all(&store, 7),
        sorted,
        "the log agrees with what put returned"
    );
}

#[test]
fn committed_after_respects_cursor_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrajectoryStore::open(&dir.path().join("store")).unwrap();
    for id in 0..10 {
        store.put(&trajectory(100 + id)).unwrap();
    }
    let seqs = |v: Vec<(u64, Trajectory)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(seqs(store.committed_after(None, 3).unwrap()), vec![0, 1, 2]);
    assert_eq!(
        seqs(store.committed_after(Some(2), 3).unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(
        seqs(store.committed_after(Some(7), 100).unwrap()),
        vec![8, 9]
    );
    assert!(store.committed_after(Some(9), 100).unwrap().is_empty());
    assert!(
        store
            .committed_after(Some(u64::MAX), 100)
            .unwrap()
            .is_empty()
    );
    assert!(store.committed_after(None, 0).unwrap().is_empty());
    let (seq, t) = store.committed_after(Some(4), 1).unwrap().remove(0);
    assert_eq!((seq, t.clone()), (5, trajectory(105)));
}

#[test]
fn duplicate_ids_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrajectoryStore::open(&dir.path().join("store")).unwrap();
    store.put(&trajectory(1)).unwrap();
    store.put(&trajectory(2)).unwrap();
    let mut again = trajectory(1);
    again.seed = 99;
    // A new image, to show the aborted transaction stored none of it.
    again.steps[0].output = StepOutput::Image(Image::filled(4, 4, [9, 9, 9]));
    let e = store.put(&again).unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { id: 1, .. }), "{e}");
    assert!(
        e.to_string().contains("trajectory 1 is already stored"),
        "{e}"
    );
    assert_eq!(store.len(), 2);
    assert_eq!(store.next_seq().unwrap(), 2);
    assert_eq!(store.image_count(), 1);
    assert_eq!(store.get(1).unwrap().unwrap(), trajectory(1));
    assert_eq!(read_all(&store, 10), vec![(0, 1), (1, 2)]);
    // The counter did not move: the next put gets 2.
    assert_eq!(store.put(&trajectory(3)).unwrap(), 2);
}

#[test]
fn branches_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrajectoryStore::open(&dir.path().join("store")).unwrap();
    let mut t = trajectory(5);
    t.steps[2].branch = Some(Branch {
        index: 3,
        kept: true,
    });
    t.steps[3].branch = Some(Branch {
        index: 1,
        kept: false,
    });
    store.put(&t).unwrap();
    store.put(&trajectory(6)).unwrap();
    assert_eq!(store.get(5).unwrap().unwrap(), t);
    assert_eq!(store.get(6).unwrap().unwrap(), trajectory(6));
    assert!(
        store
            .get(6)
            .unwrap()
            .unwrap()
            .steps
            .iter()
            .all(|s| s.branch.is_none())
    );
}

#[test]
fn reopening_keeps_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let store = TrajectoryStore::open(&path).unwrap();
        for id in [5, 6, 7] {
            store.put(&trajectory(id)).unwrap();
        }
        store.flush().unwrap();
    }
    {
        let store = TrajectoryStore::open(&path).unwrap();
        assert_eq!(store.next_seq().unwrap(), 3);
        assert_eq!(store.put(&trajectory(8)).unwrap(), 3);
        assert!(matches!(
            store.put(&trajectory(5)),
            Err(StoreError::Duplicate { id: 5, .. })
        ));
        store.flush().unwrap();
    }
    let store = TrajectoryStore::open(&path).unwrap();
    assert_eq!(store.next_seq().unwrap(), 4);
    assert_eq!(read_all(&store, 3), vec![(0, 5), (1, 6), (2, 7), (3, 8)]);
}

#[test]
fn floats_round_trip_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = TrajectoryStore::open(&dir.path().join("store")).unwrap();
    let mut t = trajectory(1);
    // serde_json's default float parser reads these back 1 ulp off.
    let scores = [0.9599396416570379, 0.9163724451342369];
    let StepOutput::Report(r) = &mut t.steps[1].output else {
        unreachable!()
    };
    r.score = scores[0];
    t.outcome = Outcome::Done {
        answer: 3,
        score: Some(scores[1]),
    };
    store.put(&t).unwrap();
    let back = store.get(1).unwrap().unwrap();
    let StepOutput::Report(r) = &back.steps[1].output else {
        unreachable!()
    };
    assert_eq!(r.score.to_bits(), scores[0].to_bits());
    assert_eq!(back, t);
}

#[test]
fn a_held_store_is_waited_for_then_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let held = TrajectoryStore::open(&path).unwrap();
    let start = std::time::Instant::now();
    let e = TrajectoryStore::open_waiting(&path, Duration::from_millis(300))
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(e.to_string().contains("in use by another process"), "{e}");
    // The holder lost nothing and still writes.
    held.put(&trajectory(7)).unwrap();
    held.flush().unwrap();

    // Released while another opener waits: that opener gets the store.
    let waiter = std::thread::spawn({
        let path = path.clone();
        move || TrajectoryStore::open_waiting(&path, Duration::from_secs(10))
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(held);
    let store = waiter.join().unwrap().unwrap();
    assert_eq!(store.ids().unwrap(), vec![7]);
}

/// A store of `n` trajectories at `path`, closed.
fn filled_store(path: &std::path::Path, n: u64) {
    let store = TrajectoryStore::open(path).unwrap();
    for id in 0..n {
        store.put(&trajectory(id)).unwrap();
    }
    store.flush().unwrap();
}

/// Opens the store and reads every trajectory: what a command on a run does.
fn read_everything(path: &std::path::Path) -> Result<usize, StoreError> {
    let store = TrajectoryStore::open(path)?;
    let ids = store.ids()?;
    for id in &ids {
        store.get(*id)?;
    }
    Ok(ids.len())
}

#[test]
fn a_truncated_store_is_refused_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    filled_store(&path, 200);
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("db"))
        .unwrap();
    db.set_len(4096).unwrap();
    drop(db);
    let e = read_everything(&path).unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("trajectory store {} is damaged: ", path.display())),
        "{e}"
    );
}

/// Overwrites at seeded random places of the store's files: every read ends in a value or an
/// error naming the store, never a panic.
#[test]
fn overwritten_store_files_give_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    filled_store(&clean, 200);
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&clean)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 33) % below.max(1)
    };
    let (mut ok, mut refused) = (0, 0);
    for case in 0..40 {
        let path = dir.path().join(format!("case{case}"));
        std::fs::create_dir(&path).unwrap();
        for f in &files {
            std::fs::copy(f, path.join(f.file_name().unwrap())).unwrap();
        }
        let victim = path.join(
            files[next(files.len() as u64) as usize]
                .file_name()
                .unwrap(),
        );
        let mut bytes = std::fs::read(&victim).unwrap();
        let at = next(bytes.len() as u64) as usize;
        let n = (1 + next(2000) as usize).min(bytes.len() - at);
        for b in &mut bytes[at..at + n] {
            *b = next(256) as u8;
        }
        std::fs::write(&victim, &bytes).unwrap();
        let read = std::panic::catch_unwind(|| read_everything(&path));
        match read {
            Ok(Ok(count)) => {
                assert_eq!(
                    count, 200,
                    "case {case}: a store that opens holds everything"
                );
                ok += 1;
            }
            Ok(Err(e)) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                refused += 1;
            }
            Err(_) => panic!("case {case}: reading {} panicked", victim.display()),
        }
    }
    eprintln!("{refused} of 40 damaged stores refused, {ok} read whole");
    assert!(refused > 0, "no overwrite was noticed ({ok} read fine)");
}
