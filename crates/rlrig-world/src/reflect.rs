//! What a Checker finds in an image and how it reads: the verdicts on a prompt's items and
//! relations, the score (the intrinsic reward) and the reflection sentence, shared by the
//! oracle (the exact reference) and learned Checkers, so that both speak the same words.
//!
//! * score = (present items + holding relations) / (items + relations), 1 for an empty prompt;
//! * the reflection has one sentence per problem, missing items first, then violated relations,
//!   in prompt order: `the green triangle is missing.`, `the red circle is right of the blue
//!   square, not left of it.` (or `the red circle is not clearly left of the blue square.` when
//!   no relation holds between the two); `all relations hold.` when there is no problem. A
//!   relation that cannot be told gets no sentence of its own: its missing endpoint has one.

use rlrig_contract::{CheckReport, Image, ItemVerdict, RelationVerdict};

use crate::edit::Edit;
use crate::geometry::{BBox, holds, relative_position};
use crate::oracle::{OracleConfig, detect_with};
use crate::vocab::{Object, Rel, WorldGraph};

/// A Checker's findings on one image, in the prompt's item and relation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Findings {
    /// One verdict per item.
    pub items: Vec<ItemVerdict>,
    /// One verdict per relation.
    pub relations: Vec<RelationVerdict>,
    /// Per relation, where the subject actually is relative to the object (GenEval's rule) when
    /// the relation is violated; empty otherwise.
    pub actual: Vec<Vec<Rel>>,
}

/// The oracle's findings: each item is present if a detected object has its colour and shape;
/// each relation holds or is violated by GenEval's rule on the detected boxes (the largest
/// detection of each object), or cannot be told when an endpoint is missing.
pub fn oracle_findings(graph: &WorldGraph, image: &Image, cfg: &OracleConfig) -> Findings {
    let found = detect_with(image, cfg);
    let box_of = |o: Object| {
        found
            .iter()
            .filter(|d| d.object == o)
            .max_by_key(|d| d.area)
            .map(|d| d.bbox)
    };
    let boxes: Vec<Option<BBox>> = graph.objects.iter().map(|&o| box_of(o)).collect();
    let items = boxes
        .iter()
        .map(|b| match b {
            Some(_) => ItemVerdict::Present,
            None => ItemVerdict::Missing,
        })
        .collect();
    let (mut relations, mut actual) = (Vec::new(), Vec::new());
    for &(a, rel, b) in &graph.relations {
        let (verdict, where_) = match (boxes[a], boxes[b]) {
            (Some(ba), Some(bb)) if holds(&ba, rel, &bb) => (RelationVerdict::Holds, Vec::new()),
            (Some(ba), Some(bb)) => (RelationVerdict::Violated, relative_position(&ba, &bb)),
            _ => (RelationVerdict::CannotTell, Vec::new()),
        };
        relations.push(verdict);
        actual.push(where_);
    }
    Findings {
        items,
        relations,
        actual,
    }
}

/// The fraction of requirements met: (present items + holding relations) / (items +
/// relations), 1 when nothing is asked.
pub fn score(items: &[ItemVerdict], relations: &[RelationVerdict]) -> f64 {
    let asked = items.len() + relations.len();
    let met = items.iter().filter(|&&v| v == ItemVerdict::Present).count()
        + relations
            .iter()
            .filter(|&&v| v == RelationVerdict::Holds)
            .count();
    if asked == 0 {
        1.0
    } else {
        met as f64 / asked as f64
    }
}

/// The reflection sentence of a set of findings (see the module docs).
///
/// # Panics
///
/// If the findings do not have one entry per item and relation of `graph`.
pub fn reflection(graph: &WorldGraph, f: &Findings) -> String {
    assert!(
        f.items.len() == graph.objects.len()
            && f.relations.len() == graph.relations.len()
            && f.actual.len() == graph.relations.len(),
        "reflection: findings do not match the prompt"
    );
    let mut sentences: Vec<String> = graph
        .objects
        .iter()
        .zip(&f.items)
        .filter(|(_, v)| **v == ItemVerdict::Missing)
        .map(|(o, _)| format!("the {o} is missing."))
        .collect();
    for ((&(a, rel, b), v), actual) in graph.relations.iter().zip(&f.relations).zip(&f.actual) {
        if *v != RelationVerdict::Violated {
            continue;
        }
        let (subject, object) = (graph.objects[a], graph.objects[b]);
        sentences.push(if actual.is_empty() {
            format!("the {subject} is not clearly {rel} the {object}.")
        } else {
            let words: Vec<&str> = actual.iter().map(|r| r.word()).collect();
            format!(
                "the {subject} is {} the {object}, not {rel} it.",
                words.join(" and ")
            )
        });
    }
    if sentences.is_empty() {
        "all relations hold.".to_owned()
    } else {
        sentences.join(" ")
    }
}

/// The report of a set of findings: verdicts, score and reflection.
pub fn report(graph: &WorldGraph, f: Findings) -> CheckReport {
    let reflection = reflection(graph, &f);
    CheckReport::new(
        f.items.clone(),
        f.relations.clone(),
        score(&f.items, &f.relations),
        reflection,
    )
}

/// Why [`repair`] found no edit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepairError {
    /// The report's verdicts do not match the prompt.
    #[error(
        "the report has {items} item and {relations} relation verdicts, the prompt {prompt_items} items and {prompt_relations} relations"
    )]
    Mismatch {
        /// Item verdicts in the report.
        items: usize,
        /// Relation verdicts in the report.
        relations: usize,
        /// Items of the prompt.
        prompt_items: usize,
        /// Relations of the prompt.
        prompt_relations: usize,
    },
    /// The prompt has no items.
    #[error("the prompt has no items: there is nothing to edit")]
    NoItems,
}

/// The edit that repairs the first problem of a report, by three rules (the baseline Actor's,
/// and the target the learned Actor imitates before RL):
///
/// 1. the first missing item is added, placed by the first relation that ties it to a present
///    item when `place_added` (`add a green triangle below the red circle`);
/// 2. else the subject of the first violated relation between two different objects is moved
///    (`move the red circle to the left of the blue square`);
/// 3. else (nothing is wrong) the first relation between two different objects is re-asserted
///    by a move, and a prompt without one gets a no-op recolour of its first item.
///
/// An error when the verdicts do not match the prompt or the prompt has no items.
pub fn repair(
    graph: &WorldGraph,
    items: &[ItemVerdict],
    relations: &[RelationVerdict],
    place_added: bool,
) -> Result<Edit, RepairError> {
    if items.len() != graph.objects.len() || relations.len() != graph.relations.len() {
        return Err(RepairError::Mismatch {
            items: items.len(),
            relations: relations.len(),
            prompt_items: graph.objects.len(),
            prompt_relations: graph.relations.len(),
        });
    }
    let Some(&first) = graph.objects.first() else {
        return Err(RepairError::NoItems);
    };
    let present = |i: usize| items[i] == ItemVerdict::Present;
    let distinct = |a: usize, b: usize| graph.objects[a] != graph.objects[b];

    if let Some(m) = (0..graph.objects.len()).find(|&i| !present(i)) {
        let placement = place_added
            .then(|| {
                graph.relations.iter().find_map(|&(a, rel, b)| {
                    if a == m && present(b) && distinct(a, b) {
                        Some((rel, graph.objects[b]))
                    } else if b == m && present(a) && distinct(a, b) {
                        Some((rel.inverse(), graph.objects[a]))
                    } else {
                        None
                    }
                })
            })
            .flatten();
        return Ok(Edit::Add {
            object: graph.objects[m],
            placement,
        });
    }
    let movable = |r: &&(usize, Rel, usize)| distinct(r.0, r.2);
    let violated = graph
        .relations
        .iter()
        .zip(relations)
        .filter(|(_, v)| **v == RelationVerdict::Violated)
        .map(|(r, _)| r)
        .find(movable);
    let chosen = violated.or_else(|| graph.relations.iter().find(movable));
    Ok(match chosen {
        Some(&(a, rel, b)) => Edit::Move {
            object: graph.objects[a],
            rel,
            anchor: graph.objects[b],
        },
        None => Edit::Recolour {
            object: first,
            colour: first.colour,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Colour, Shape};

    fn red_circle_and_blue_square(rel: Rel) -> WorldGraph {
        let red = Object {
            colour: Colour::Red,
            shape: Shape::Circle,
        };
        let blue = Object {
            colour: Colour::Blue,
            shape: Shape::Square,
        };
        WorldGraph {
            objects: vec![red, blue],
            relations: vec![(0, rel, 1)],
        }
    }

    fn violated(actual: Vec<Rel>) -> Findings {
        Findings {
            items: vec![ItemVerdict::Present; 2],
            relations: vec![RelationVerdict::Violated],
            actual: vec![actual],
        }
    }

    #[test]
    fn a_violation_with_no_relation_at_all_is_not_clearly_anything() {
        // Centres 1 px apart: within GenEval's threshold, so no relation holds either way.
        let a = BBox {
            x0: 0,
            y0: 0,
            x1: 7,
            y1: 7,
        };
        let b = BBox {
            x0: 1,
            y0: 0,
            x1: 8,
            y1: 7,
        };
        let g = red_circle_and_blue_square(Rel::LeftOf);
        let r = report(&g, violated(relative_position(&a, &b)));
        assert_eq!(
            r.reflection,
            "the red circle is not clearly left of the blue square."
        );
        assert_eq!(r.score, 2.0 / 3.0);
        let far = BBox {
            x0: 20,
            y0: 0,
            x1: 27,
            y1: 7,
        };
        let g = red_circle_and_blue_square(Rel::Above);
        assert_eq!(
            reflection(&g, &violated(relative_position(&a, &far))),
            "the red circle is left of the blue square, not above it."
        );
    }

    #[test]
    fn missing_items_come_first_and_cannot_tell_says_nothing() {
        let g = red_circle_and_blue_square(Rel::LeftOf);
        let f = Findings {
            items: vec![ItemVerdict::Present, ItemVerdict::Missing],
            relations: vec![RelationVerdict::CannotTell],
            actual: vec![vec![]],
        };
        let r = report(&g, f);
        assert_eq!(r.reflection, "the blue square is missing.");
        assert_eq!(r.score, 1.0 / 3.0);
        assert_eq!(score(&[], &[]), 1.0);
    }
}
