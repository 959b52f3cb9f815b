//! A tour of the built-in world from Rust: sample a scene, redraw its graph, degrade the image
//! the way a generator would, and let the oracle judge it.
//!
//! `cargo run --example world_tour`

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_world::corrupt::{box_blur, gaussian_noise};
use rlrig_world::{Canvas, judge, sample};

fn main() {
    let canvas = Canvas::new(32).expect("32 is a valid canvas");
    let s = sample(&canvas, 0, 3);
    println!("prompt: {}", s.graph.prompt());

    // Any satisfiable graph can be drawn anew; the solver picks one of its layouts at random.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut image, placed) = canvas
        .render(&s.graph, &mut rng)
        .expect("sampled graphs are satisfiable");
    for p in &placed {
        println!("  {} in cell {:?}", p.object, p.cell);
    }

    box_blur(&mut image, 1);
    gaussian_noise(&mut image, 16.0, &mut rng);
    let j = judge(&s.graph, &image).expect("the prompt is in the world's vocabulary");
    println!(
        "after blur and noise: SG-IoU {:.3}, Entity-IoU {:.3}, Relation-IoU {:.3}, relation accuracy {:?}",
        j.scores.sg_iou, j.scores.entity_iou, j.scores.relation_iou, j.relation_accuracy
    );
}
