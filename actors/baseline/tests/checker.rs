//! The oracle checker's verdicts, score and reflection.

mod common;

use common::{canvas, check_one, obj, record};
use rlrig_baseline::{OracleChecker, OracleCheckerConfig};
use rlrig_contract::{CheckRequest, Checker, ItemVerdict, RelationVerdict};
use rlrig_world::{Colour, Shape, sample};

fn checker() -> OracleChecker {
    OracleChecker::new(OracleCheckerConfig::default()).unwrap()
}

#[test]
fn clean_sampled_scenes_score_one_and_all_relations_hold() {
    let canvas = canvas();
    let mut checker = checker();
    let batch: Vec<CheckRequest> = (0..200)
        .map(|i| {
            let s = sample(&canvas, 21, i);
            CheckRequest {
                prompt: s.graph,
                image: s.image,
            }
        })
        .collect();
    let reports = checker.check(&batch).unwrap();
    assert_eq!(reports.len(), batch.len());
    for (req, report) in batch.iter().zip(&reports) {
        let prompt = req.prompt.prompt();
        assert_eq!(report.score, 1.0, "{prompt}: {report:?}");
        assert_eq!(report.reflection, "all relations hold.", "{prompt}");
        assert_eq!(report.items.len(), req.prompt.items.len());
        assert!(report.items.iter().all(|&v| v == ItemVerdict::Present));
        assert_eq!(report.relations.len(), req.prompt.relations.len());
        assert!(
            report
                .relations
                .iter()
                .all(|&v| v == RelationVerdict::Holds)
        );
    }
}

#[test]
fn a_violated_relation_and_a_missing_item_are_reported() {
    let canvas = canvas();
    // The red circle stands right of the blue square; the green triangle is not drawn.
    let image = canvas.draw(&[
        canvas.place_at(obj(Colour::Red, Shape::Circle), 3, 0),
        canvas.place_at(obj(Colour::Blue, Shape::Square), 0, 0),
    ]);
    let prompt = record(
        &[("red", "circle"), ("blue", "square"), ("green", "triangle")],
        &[
            (0, "left of", 1),
            (2, "above", 1),
            (1, "left of", 0),
            (1, "below", 0),
        ],
    );
    let report = check_one(&mut checker(), &prompt, &image);
    assert_eq!(
        report.items,
        [
            ItemVerdict::Present,
            ItemVerdict::Present,
            ItemVerdict::Missing
        ]
    );
    assert_eq!(
        report.relations,
        [
            RelationVerdict::Violated,
            RelationVerdict::CannotTell,
            RelationVerdict::Holds,
            RelationVerdict::Violated,
        ]
    );
    // 2 present items + 1 holding relation out of 3 items + 4 relations.
    assert!((report.score - 3.0 / 7.0).abs() < 1e-12, "{}", report.score);
    assert_eq!(
        report.reflection,
        "the green triangle is missing. \
         the red circle is right of the blue square, not left of it. \
         the blue square is left of the red circle, not below it."
    );
}

#[test]
fn a_diagonal_violation_names_both_directions() {
    let canvas = canvas();
    let image = canvas.draw(&[
        canvas.place_at(obj(Colour::Yellow, Shape::Triangle), 2, 3),
        canvas.place_at(obj(Colour::Green, Shape::Square), 0, 1),
    ]);
    let prompt = record(
        &[("yellow", "triangle"), ("green", "square")],
        &[(0, "above", 1)],
    );
    let report = check_one(&mut checker(), &prompt, &image);
    assert_eq!(report.relations, [RelationVerdict::Violated]);
    assert_eq!(report.score, 2.0 / 3.0);
    assert_eq!(
        report.reflection,
        "the yellow triangle is right of and below the green square, not above it."
    );
}

#[test]
fn an_empty_image_misses_everything() {
    let prompt = record(&[("red", "circle"), ("blue", "square")], &[(0, "above", 1)]);
    let report = check_one(&mut checker(), &prompt, &canvas().draw(&[]));
    assert_eq!(report.score, 0.0);
    assert_eq!(report.relations, [RelationVerdict::CannotTell]);
    assert_eq!(
        report.reflection,
        "the red circle is missing. the blue square is missing."
    );
}

#[test]
fn a_prompt_outside_the_vocabulary_fails_with_the_worlds_message() {
    let prompt = record(&[("purple", "circle")], &[]);
    let e = checker()
        .check(&[CheckRequest {
            prompt,
            image: canvas().draw(&[]),
        }])
        .unwrap_err();
    assert!(
        e.0.starts_with("OracleChecker: request 0 (prompt \"purple circle\"): outside the built-in world's vocabulary"),
        "{e}"
    );
    assert!(
        e.0.contains(r#"items[0].attributes[0] "purple" is not a colour"#),
        "{e}"
    );
}
