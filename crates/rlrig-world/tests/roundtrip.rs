//! Renderer → oracle parser round trips over thousands of sampled scenes, clean and degraded.

use std::collections::HashSet;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_contract::Image;
use rlrig_sg::{SceneGraph, Triple};
use rlrig_world::corrupt::{box_blur, gaussian_noise, specks};
use rlrig_world::{Canvas, parse, sample};

const SCENES: u64 = 2_000;

/// Whether `parsed` has exactly the items of `truth` and every one of its relations.
fn recovers(truth: &SceneGraph, parsed: &SceneGraph) -> bool {
    let mut want: Vec<String> = truth.entities();
    let mut got: Vec<String> = parsed.entities();
    want.sort();
    got.sort();
    let found: HashSet<Triple> = parsed.triples().into_iter().collect();
    want == got && truth.triples().iter().all(|t| found.contains(t))
}

fn explain(truth: &SceneGraph, parsed: &SceneGraph) -> String {
    format!(
        "prompt: {}\nparsed: {}",
        truth.prompt(),
        serde_json::to_string(parsed).unwrap()
    )
}

#[test]
fn sampled_scenes_round_trip_exactly_at_32_and_64() {
    for size in [32, 64] {
        let canvas = Canvas::new(size).unwrap();
        for i in 0..SCENES {
            let s = sample(&canvas, 7, i);
            assert!((2..=4).contains(&s.graph.items.len()));
            assert!((1..=4).contains(&s.graph.relations.len()));
            let parsed = parse(&s.image);
            assert!(
                recovers(&s.graph, &parsed),
                "size {size}, scene {i}\n{}",
                explain(&s.graph, &parsed)
            );
        }
    }
}

#[test]
fn solver_redraws_sampled_graphs_so_every_relation_holds() {
    for size in [32, 64] {
        let canvas = Canvas::new(size).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        for i in 0..SCENES {
            let s = sample(&canvas, 11, i);
            let (image, _) = canvas
                .render(&s.graph, &mut rng)
                .expect("sampled graphs are satisfiable");
            let parsed = parse(&image);
            assert!(
                recovers(&s.graph, &parsed),
                "size {size}, scene {i}\n{}",
                explain(&s.graph, &parsed)
            );
        }
    }
}

fn rate(size: u32, degrade: impl Fn(&mut Image, &mut ChaCha8Rng)) -> f64 {
    let canvas = Canvas::new(size).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 1_000;
    let ok = (0..n)
        .filter(|&i| {
            let mut s = sample(&canvas, 3, i);
            degrade(&mut s.image, &mut rng);
            recovers(&s.graph, &parse(&s.image))
        })
        .count();
    ok as f64 / n as f64
}

/// Degraded images: the recovery rates (1,000 seeded scenes each) are printed and held to a floor
/// a little under what was measured (docs/RESULTS.md states the measured rates), so that a parser
/// regression fails the test.
#[test]
fn noisy_images_still_parse() {
    type Degrade = fn(&mut Image, &mut ChaCha8Rng);
    let cases: [(&str, u32, f64, Degrade); 8] = [
        ("noise σ=16 + 8 specks", 32, 0.97, |im, r| {
            gaussian_noise(im, 16.0, r);
            specks(im, 8, r);
        }),
        ("noise σ=16 + 8 specks", 64, 0.98, |im, r| {
            gaussian_noise(im, 16.0, r);
            specks(im, 8, r);
        }),
        ("noise σ=32", 32, 0.97, |im, r| gaussian_noise(im, 32.0, r)),
        ("noise σ=32", 64, 0.98, |im, r| gaussian_noise(im, 32.0, r)),
        ("blur 3x3", 32, 0.94, |im, _| box_blur(im, 1)),
        ("blur 3x3", 64, 0.97, |im, _| box_blur(im, 1)),
        ("blur 3x3 + noise σ=16", 32, 0.91, |im, r| {
            box_blur(im, 1);
            gaussian_noise(im, 16.0, r);
        }),
        ("blur 3x3 + noise σ=16", 64, 0.97, |im, r| {
            box_blur(im, 1);
            gaussian_noise(im, 16.0, r);
        }),
    ];
    let mut failures = Vec::new();
    for (name, size, floor, f) in cases {
        let r = rate(size, f);
        println!("{name:>24} at {size}x{size}: {:.1}% recovered", r * 100.0);
        if r < floor {
            failures.push(format!("{name} at {size}: {r} < {floor}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
