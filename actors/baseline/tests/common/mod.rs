//! Helpers shared by the baseline tests.

#![allow(dead_code)]

use rlrig_contract::{CheckReport, CheckRequest, Checker, Image, SceneGraph};
use rlrig_sg::read_jsonl;
use rlrig_world::{Canvas, Colour, Object, Shape};

/// A record with the given `(colour, shape)` items and `(i, relation, j)` relations.
pub fn record(items: &[(&str, &str)], relations: &[(u64, &str, u64)]) -> SceneGraph {
    let items: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, (c, s))| format!(r#"{{"item_id":{i},"label":"{s}","attributes":["{c}"]}}"#))
        .collect();
    let rels: Vec<String> = relations
        .iter()
        .map(|(a, r, b)| format!(r#"{{"item1":{a},"relation":"{r}","item2":{b}}}"#))
        .collect();
    read_jsonl(
        &format!(
            r#"{{"items":[{}],"relations":[{}]}}"#,
            items.join(","),
            rels.join(",")
        ),
        "test",
    )
    .unwrap()
    .remove(0)
}

pub fn obj(colour: Colour, shape: Shape) -> Object {
    Object { colour, shape }
}

pub fn canvas() -> Canvas {
    Canvas::new(32).unwrap()
}

/// The checker's report on one image.
pub fn check_one(checker: &mut impl Checker, prompt: &SceneGraph, image: &Image) -> CheckReport {
    checker
        .check(&[CheckRequest {
            prompt: prompt.clone(),
            image: image.clone(),
        }])
        .unwrap()
        .remove(0)
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}
