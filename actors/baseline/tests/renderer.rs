//! The mistaken renderer: exact without mistakes, measurably wrong with them, deterministic,
//! and failing cleanly on prompts the world cannot draw.

mod common;

use common::{canvas, mean, record};
use rlrig_baseline::{MistakenRenderer, MistakenRendererConfig};
use rlrig_contract::{Diffuser, GenerateRequest};
use rlrig_world::{judge, sample};

const PROMPTS: u64 = 200;

fn requests(seed: u64) -> Vec<GenerateRequest> {
    let canvas = canvas();
    (0..PROMPTS)
        .map(|i| GenerateRequest {
            prompt: sample(&canvas, seed, i).graph,
            seed: 1_000 + i,
            explore: false,
        })
        .collect()
}

fn renderer(mistake_rate: f64, weights: [f64; 4]) -> MistakenRenderer {
    let [swap, misplace, recolour, drop] = weights;
    MistakenRenderer::new(MistakenRendererConfig {
        mistake_rate,
        swap,
        misplace,
        recolour,
        drop,
        ..Default::default()
    })
    .unwrap()
}

const DEFAULT_WEIGHTS: [f64; 4] = [0.4, 0.4, 0.1, 0.1];

/// Relation accuracy and entity IoU of each image against its prompt, by the oracle.
fn judged(batch: &[GenerateRequest], r: &mut MistakenRenderer) -> (Vec<f64>, Vec<f64>) {
    let images = r.generate(batch).unwrap();
    assert_eq!(images.len(), batch.len());
    batch
        .iter()
        .zip(&images)
        .map(|(req, img)| {
            assert_eq!((img.width(), img.height()), (32, 32));
            let j = judge(&req.prompt, img).unwrap();
            (j.relation_accuracy.unwrap(), j.scores.entity_iou)
        })
        .unzip()
}

#[test]
fn without_mistakes_every_prompt_is_satisfied() {
    let batch = requests(31);
    let (accuracy, entities) = judged(&batch, &mut renderer(0.0, DEFAULT_WEIGHTS));
    for (i, (&a, &e)) in accuracy.iter().zip(&entities).enumerate() {
        assert_eq!((a, e), (1.0, 1.0), "{}", batch[i].prompt.prompt());
    }
}

#[test]
fn with_mistakes_relation_accuracy_drops() {
    let batch = requests(31);
    let (accuracy, _) = judged(&batch, &mut renderer(1.0, DEFAULT_WEIGHTS));
    let m = mean(&accuracy);
    println!("mistake_rate 1, default weights: mean relation accuracy {m:.3}");
    assert!(m < 0.75, "mean relation accuracy {m}");
    let (half, _) = judged(&batch, &mut renderer(0.5, DEFAULT_WEIGHTS));
    let h = mean(&half);
    println!("mistake_rate 0.5, default weights: mean relation accuracy {h:.3}");
    assert!(m < h && h < 1.0, "{m} {h}");
}

#[test]
fn each_kind_of_mistake_does_what_it_says() {
    let batch = requests(32);
    // A swap turns one prompt relation round: no image satisfies its prompt.
    let (accuracy, entities) = judged(&batch, &mut renderer(1.0, [1.0, 0.0, 0.0, 0.0]));
    assert!(accuracy.iter().all(|&a| a < 1.0));
    assert!(entities.iter().all(|&e| e == 1.0));
    // A drop or a recolour always loses one prompt item.
    for weights in [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]] {
        let (_, entities) = judged(&batch, &mut renderer(1.0, weights));
        assert!(entities.iter().all(|&e| e < 1.0), "{weights:?}");
    }
    // A misplaced object keeps every item and sometimes still satisfies the prompt.
    let (accuracy, entities) = judged(&batch, &mut renderer(1.0, [0.0, 1.0, 0.0, 0.0]));
    assert!(entities.iter().all(|&e| e == 1.0));
    let m = mean(&accuracy);
    assert!(m > 0.2 && m < 0.95, "{m}");
}

#[test]
fn the_request_seed_decides_the_image() {
    let batch = requests(33);
    let mut r = renderer(0.5, DEFAULT_WEIGHTS);
    let first = r.generate(&batch).unwrap();
    assert_eq!(r.generate(&batch).unwrap(), first);
    // Rendering one request alone gives the same image as in a batch.
    assert_eq!(r.generate(&batch[7..8]).unwrap()[0], first[7]);
    let reseeded: Vec<GenerateRequest> = batch
        .iter()
        .map(|g| GenerateRequest {
            seed: g.seed + 7_777,
            ..g.clone()
        })
        .collect();
    let other = r.generate(&reseeded).unwrap();
    let differ = first.iter().zip(&other).filter(|(a, b)| a != b).count();
    assert!(differ > PROMPTS as usize / 2, "{differ}");
}

#[test]
fn prompts_the_world_cannot_draw_fail_with_its_explanation() {
    let mut r = renderer(0.5, DEFAULT_WEIGHTS);
    let outside = record(&[("red", "mountain")], &[]);
    let e = r
        .generate(&[GenerateRequest {
            prompt: outside,
            seed: 0,
            explore: false,
        }])
        .unwrap_err();
    assert!(
        e.0.contains("request 0") && e.0.contains(r#"items[0].label "mountain" is not a shape"#),
        "{e}"
    );
    let cycle = record(
        &[("red", "circle"), ("blue", "square")],
        &[(0, "left of", 1), (1, "left of", 0)],
    );
    let ok = requests(34).remove(0);
    let e = r
        .generate(&[
            ok,
            GenerateRequest {
                prompt: cycle,
                seed: 0,
                explore: false,
            },
        ])
        .unwrap_err();
    assert!(
        e.0.starts_with("MistakenRenderer: request 1 (prompt ")
            && e.0.contains("left-right relations form a cycle"),
        "{e}"
    );
}
