//! LAION-SG's IoU metrics on hand-computed cases.

use rlrig_sg::metrics::Extraction;
use rlrig_sg::{
    IouScores, MeanScores, SceneGraph, Triple, iou, read_jsonl, relation_accuracy, score,
};

fn t(s: &str, p: &str, o: &str) -> Triple {
    Triple {
        subject: s.into(),
        predicate: p.into(),
        object: o.into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn truth() -> SceneGraph {
    // red circle left of blue square; blue square above green triangle; yellow circle
    read_jsonl(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}, {"item_id": 1, "label": "square", "attributes": ["blue"]}, {"item_id": 2, "label": "triangle", "attributes": ["green"]}, {"item_id": 3, "label": "circle", "attributes": ["yellow"]}], "relations": [{"item1": 0, "relation": "left of", "item2": 1}, {"item1": 1, "relation": "above", "item2": 2}]}"#,
        "t",
    )
    .unwrap()
    .remove(0)
}

#[test]
fn set_iou_by_hand() {
    assert_eq!(iou(["a", "b"], ["b", "c"]), 1.0 / 3.0);
    assert_eq!(iou(["a"], ["a"]), 1.0);
    assert_eq!(iou(["a"], ["b"]), 0.0);
    // Empty union is 0, not NaN; one empty side is 0.
    assert_eq!(iou(Vec::<&str>::new(), Vec::<&str>::new()), 0.0);
    assert_eq!(iou(["a"], Vec::<&str>::new()), 0.0);
    // Duplicates count once on either side.
    assert_eq!(iou(["a", "a", "b"], ["a", "a"]), 0.5);
    assert_eq!(iou(["a", "b", "b"], ["b", "b", "c", "c"]), 1.0 / 3.0);
    // Exact strings: case and spacing matter.
    assert_eq!(iou(["Red circle"], ["red circle"]), 0.0);
}

#[test]
fn image_scores_by_hand() {
    let g = truth();
    let found = Extraction {
        // One right triple, one duplicated, one wrong.
        triples: vec![
            t("red circle", "left of", "blue square"),
            t("red circle", "left of", "blue square"),
            t("blue square", "below", "green triangle"),
        ],
        entities: strings(&[
            "red circle",
            "blue square",
            "blue square",
            "green triangle",
            "purple cat",
        ]),
        predicates: strings(&["left of", "below"]),
    };
    let s = score(&g, &found);
    // Triples: truth {rc<bs, bs^gt}, found {rc<bs, bs_gt}: 1 / 3.
    // Entities: truth 4, found 4 distinct, shared 3 → 3 / 5.
    // Predicates: truth {left of, above}, found {left of, below} → 1 / 3.
    assert_eq!(
        s,
        IouScores {
            sg_iou: 1.0 / 3.0,
            entity_iou: 3.0 / 5.0,
            relation_iou: 1.0 / 3.0
        }
    );
    assert_eq!(relation_accuracy(&g, &found), Some(0.5));

    // Nothing extracted: all zero.
    let none = score(&g, &Extraction::default());
    assert_eq!(none, IouScores::default());
    // A graph scored against itself is perfect.
    assert_eq!(
        score(&g, &Extraction::from(&g)),
        IouScores {
            sg_iou: 1.0,
            entity_iou: 1.0,
            relation_iou: 1.0
        }
    );
}

#[test]
fn prompts_without_relations_have_no_relation_accuracy_and_zero_relation_iou() {
    let g = read_jsonl(
        r#"{"items": [{"item_id": 0, "label": "circle", "attributes": ["red"]}]}"#,
        "t",
    )
    .unwrap()
    .remove(0);
    let found = Extraction::from(&g);
    assert_eq!(relation_accuracy(&g, &found), None);
    let s = score(&g, &found);
    assert_eq!((s.sg_iou, s.entity_iou, s.relation_iou), (0.0, 1.0, 0.0));
}

#[test]
fn judged_view_keeps_only_what_the_prompt_asks_about() {
    let g = truth();
    let found = Extraction {
        triples: vec![
            t("red circle", "left of", "blue square"),
            t("blue square", "right of", "red circle"), // predicate not asked about
            t("purple cat", "above", "blue square"),    // subject not in the prompt
        ],
        entities: strings(&["red circle", "purple cat"]),
        predicates: strings(&["left of", "right of"]),
    };
    let judged = found.as_judged_against(&g);
    assert_eq!(
        judged.triples,
        vec![t("red circle", "left of", "blue square")]
    );
    assert_eq!(judged.entities, strings(&["red circle"]));
    assert_eq!(judged.predicates, strings(&["left of"]));
}

#[test]
fn means_over_images() {
    let m = MeanScores::from_images([
        (
            IouScores {
                sg_iou: 1.0,
                entity_iou: 0.5,
                relation_iou: 0.0,
            },
            Some(1.0),
        ),
        (
            IouScores {
                sg_iou: 0.0,
                entity_iou: 1.0,
                relation_iou: 0.5,
            },
            None,
        ),
        (
            IouScores {
                sg_iou: 0.5,
                entity_iou: 0.0,
                relation_iou: 1.0,
            },
            Some(0.0),
        ),
    ]);
    assert_eq!(m.n, 3);
    assert_eq!(
        m.mean,
        IouScores {
            sg_iou: 0.5,
            entity_iou: 0.5,
            relation_iou: 0.5
        }
    );
    assert_eq!(m.relation_accuracy, Some(0.5));
    assert_eq!(MeanScores::from_images([]).mean, IouScores::default());
}
