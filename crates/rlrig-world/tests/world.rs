//! The world's renderer, solver, vocabulary and oracle on hand-made cases.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_sg::{SceneGraph, read_jsonl};
use rlrig_world::corrupt::specks;
use rlrig_world::{
    Canvas, Colour, Object, Shape, WorldError, WorldGraph, detect, judge, parse, sample,
};

fn graph(jsonl: &str) -> SceneGraph {
    read_jsonl(jsonl, "test").unwrap().remove(0)
}

/// A record with the given `(colour, shape)` items and `(i, relation, j)` relations.
fn record(items: &[(&str, &str)], relations: &[(u64, &str, u64)]) -> SceneGraph {
    let items: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, (c, s))| format!(r#"{{"item_id":{i},"label":"{s}","attributes":["{c}"]}}"#))
        .collect();
    let rels: Vec<String> = relations
        .iter()
        .map(|(a, r, b)| format!(r#"{{"item1":{a},"relation":"{r}","item2":{b}}}"#))
        .collect();
    graph(&format!(
        r#"{{"items":[{}],"relations":[{}]}}"#,
        items.join(","),
        rels.join(",")
    ))
}

fn render_err(g: &SceneGraph) -> WorldError {
    Canvas::new(32)
        .unwrap()
        .render(g, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap_err()
}

#[test]
fn every_shape_fills_its_box_and_parses_back_at_many_sizes() {
    for size in [24, 32, 40, 48, 64, 100, 128] {
        let canvas = Canvas::new(size).unwrap();
        for (k, shape) in Shape::ALL.into_iter().enumerate() {
            for colour in Colour::ALL {
                let placed = canvas.place_at(Object { colour, shape }, k as u32, 3 - k as u32);
                let found = detect(&canvas.draw(&[placed]));
                assert_eq!(found.len(), 1, "{size}: {colour} {shape}");
                assert_eq!(found[0].object, Object { colour, shape }, "{size}");
                assert_eq!(
                    found[0].bbox, placed.bbox,
                    "{size}: {shape} must reach all sides of its box"
                );
                assert!(found[0].shape_iou > 0.99);
            }
        }
    }
}

#[test]
fn canvas_below_the_minimum_is_refused() {
    let e = Canvas::new(16).unwrap_err();
    assert!(e.to_string().contains("16x16 is too small"), "{e}");
}

#[test]
fn unsatisfiable_graphs_get_clear_errors() {
    let cycle = record(
        &[("red", "circle"), ("blue", "square"), ("green", "triangle")],
        &[(0, "left of", 1), (1, "left of", 2), (0, "right of", 2)],
    );
    let e = render_err(&cycle).to_string();
    assert!(e.contains("left-right relations form a cycle"), "{e}");
    assert!(
        e.contains("red circle") && e.contains("blue square") && e.contains("green triangle"),
        "{e}"
    );

    let contradiction = record(
        &[("red", "circle"), ("blue", "square")],
        &[(0, "above", 1), (0, "below", 1)],
    );
    assert!(
        render_err(&contradiction)
            .to_string()
            .contains("above-below relations form a cycle")
    );

    let selfrel = record(
        &[("red", "circle"), ("blue", "square")],
        &[(0, "left of", 0)],
    );
    assert_eq!(
        render_err(&selfrel).to_string(),
        "unsatisfiable scene graph: relations[0] asks the red circle to be left of itself"
    );

    let dup = record(
        &[("red", "circle"), ("red", "circle")],
        &[(0, "left of", 1)],
    );
    assert!(
        render_err(&dup)
            .to_string()
            .contains("items[0] and items[1] are both a red circle")
    );

    // Five objects in a strict left-to-right chain need five columns; the grid has four.
    let chain = record(
        &[
            ("red", "circle"),
            ("blue", "square"),
            ("green", "triangle"),
            ("yellow", "circle"),
            ("red", "square"),
        ],
        &[
            (0, "left of", 1),
            (1, "left of", 2),
            (2, "left of", 3),
            (3, "left of", 4),
        ],
    );
    assert!(matches!(
        render_err(&chain),
        WorldError::NoPlacement { items: 5 }
    ));

    let many: Vec<(&str, &str)> = Colour::ALL
        .iter()
        .flat_map(|c| [(c.word(), "circle"), (c.word(), "square")])
        .collect();
    assert!(matches!(
        render_err(&record(&many, &[])),
        WorldError::TooManyItems { items: 8 }
    ));
}

#[test]
fn satisfiable_edge_cases_render() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let canvas = Canvas::new(32).unwrap();
    // Diagonal: both relations on one pair; an isolated item; four in a row.
    for g in [
        record(
            &[("red", "circle"), ("blue", "square")],
            &[(0, "left of", 1), (0, "above", 1)],
        ),
        record(
            &[("red", "circle"), ("blue", "square"), ("green", "triangle")],
            &[(0, "below", 1)],
        ),
        record(
            &[
                ("red", "circle"),
                ("blue", "square"),
                ("green", "triangle"),
                ("yellow", "circle"),
            ],
            &[
                (0, "left of", 1),
                (1, "left of", 2),
                (2, "left of", 3),
                (0, "above", 3),
            ],
        ),
    ] {
        let (image, _) = canvas.render(&g, &mut rng).unwrap();
        let j = judge(&g, &image).unwrap();
        assert_eq!(j.relation_accuracy, Some(1.0), "{}", g.prompt());
        assert_eq!(j.scores.entity_iou, 1.0);
    }
}

#[test]
fn out_of_vocabulary_records_list_every_problem() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/laion_sg_sample.jsonl"
    ))
    .unwrap();
    let records = read_jsonl(&text, "laion_sg_sample.jsonl").unwrap();
    assert_eq!(records.len(), 3);
    for r in &records {
        let e = WorldGraph::from_scene_graph(r).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("outside the built-in world's vocabulary")
        );
        let image = Canvas::new(32).unwrap().draw(&[]);
        assert!(
            judge(r, &image).is_err(),
            "the oracle must refuse {:?}",
            r.img_id
        );
    }
    let e = WorldGraph::from_scene_graph(&records[1]).unwrap_err();
    assert!(
        e.problems
            .contains(&r#"items[0].label "house" is not a shape"#.to_string()),
        "{e}"
    );
    assert!(
        e.problems
            .contains(&r#"items[1].attributes []: expected exactly one colour"#.to_string()),
        "{e}"
    );
    assert!(
        e.problems
            .contains(&r#"relations[0].relation "near" is not a relation"#.to_string()),
        "{e}"
    );
    assert!(
        !e.problems
            .iter()
            .any(|p| p.contains("relations[1].relation")),
        "`above` is in the vocabulary: {e}"
    );
}

#[test]
fn specks_are_ignored_and_a_blank_canvas_is_empty() {
    let canvas = Canvas::new(32).unwrap();
    let mut blank = canvas.draw(&[]);
    assert!(parse(&blank).items.is_empty());
    specks(&mut blank, 30, &mut ChaCha8Rng::seed_from_u64(2));
    assert!(
        parse(&blank).items.is_empty(),
        "single-pixel specks are not objects"
    );
}

#[test]
fn judge_scores_a_violated_relation() {
    let canvas = Canvas::new(32).unwrap();
    // Drawn with the circle right of the square; the prompt asks for left of.
    let drawn = [
        canvas.place_at(
            Object {
                colour: Colour::Red,
                shape: Shape::Circle,
            },
            3,
            1,
        ),
        canvas.place_at(
            Object {
                colour: Colour::Blue,
                shape: Shape::Square,
            },
            0,
            1,
        ),
    ];
    let prompt = record(
        &[("red", "circle"), ("blue", "square")],
        &[(0, "left of", 1)],
    );
    let j = judge(&prompt, &canvas.draw(&drawn)).unwrap();
    assert_eq!(j.relation_accuracy, Some(0.0));
    assert_eq!(j.scores.entity_iou, 1.0);
    // The judge may only name the prompt's predicate `left of`: it finds `blue square left of
    // red circle`, which is not the prompt's triple.
    assert_eq!(j.scores.sg_iou, 0.0);
    assert_eq!(j.scores.relation_iou, 1.0);
}

#[test]
fn samples_are_reproducible_per_seed_and_index() {
    let canvas = Canvas::new(32).unwrap();
    let a = sample(&canvas, 42, 17);
    let b = sample(&canvas, 42, 17);
    assert_eq!(a.graph, b.graph);
    assert_eq!(a.image, b.image);
    assert_ne!(sample(&canvas, 43, 17).image, a.image);
    assert_eq!(a.graph.name.as_deref(), Some("000017.png"));
    // Every item is distinct by colour and shape.
    for i in 0..500 {
        let s = sample(&canvas, 1, i);
        let mut objs = s.world.objects.clone();
        objs.sort();
        objs.dedup();
        assert_eq!(objs.len(), s.world.objects.len());
    }
}
