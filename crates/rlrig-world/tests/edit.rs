//! The edit-prompt language: round trips of the text, and edits applied to drawn scenes judged
//! by the oracle.

use std::collections::HashSet;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlrig_sg::Triple;
use rlrig_world::edit::{ApplyError, apply};
use rlrig_world::{Canvas, Colour, Edit, Object, Placed, Rel, Shape, parse, sample};

fn obj(colour: Colour, shape: Shape) -> Object {
    Object { colour, shape }
}

fn random_object(rng: &mut impl Rng) -> Object {
    obj(
        *Colour::ALL.choose(rng).unwrap(),
        *Shape::ALL.choose(rng).unwrap(),
    )
}

fn other_object(rng: &mut impl Rng, not: Object) -> Object {
    loop {
        let o = random_object(rng);
        if o != not {
            return o;
        }
    }
}

fn random_edit(rng: &mut impl Rng) -> Edit {
    let object = random_object(rng);
    let other = other_object(rng, object);
    let rel = *Rel::ALL.choose(rng).unwrap();
    match rng.random_range(0..6) {
        0 => Edit::Move {
            object,
            rel,
            anchor: other,
        },
        1 => Edit::Recolour {
            object,
            colour: *Colour::ALL.choose(rng).unwrap(),
        },
        2 => Edit::Add {
            object,
            placement: None,
        },
        3 => Edit::Add {
            object,
            placement: Some((rel, other)),
        },
        4 => Edit::Remove { object },
        _ => Edit::Swap {
            a: object,
            b: other,
        },
    }
}

#[test]
fn random_edits_round_trip_through_their_text() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut forms = HashSet::new();
    for _ in 0..5_000 {
        let e = random_edit(&mut rng);
        let text = e.to_string();
        assert_eq!(Edit::parse(&text), Ok(e), "{text}");
        assert_eq!(text.parse::<Edit>(), Ok(e));
        assert!(!text.contains("  ") && text == text.trim() && text == text.to_lowercase());
        forms.insert(text.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(forms.len(), 5, "{forms:?}");
}

/// The relations that hold between two objects in the oracle's reading of `scene` drawn.
fn judged(canvas: &Canvas, scene: &[Placed]) -> HashSet<Triple> {
    let g = parse(&canvas.draw(scene));
    let mut items: Vec<String> = g.entities();
    let mut want: Vec<String> = scene.iter().map(|p| p.object.to_string()).collect();
    items.sort();
    want.sort();
    assert_eq!(
        items, want,
        "the oracle must see exactly the scene's objects"
    );
    g.triples().into_iter().collect()
}

fn triple(a: Object, rel: Rel, b: Object) -> Triple {
    Triple {
        subject: a.to_string(),
        predicate: rel.word().into(),
        object: b.to_string(),
    }
}

fn cell_of(scene: &[Placed], o: Object) -> (u32, u32) {
    scene.iter().find(|p| p.object == o).unwrap().cell
}

#[test]
fn every_form_applied_to_sampled_scenes_does_what_it_says() {
    let canvas = Canvas::new(32).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let (mut moved, mut added, mut no_cell) = (0, 0, 0);
    for i in 0..300 {
        let s = sample(&canvas, 3, i);
        let scene = &s.placed;
        let present: Vec<Object> = scene.iter().map(|p| p.object).collect();
        let &a = present.choose(&mut rng).unwrap();
        let b = *present
            .iter()
            .filter(|&&o| o != a)
            .collect::<Vec<_>>()
            .choose(&mut rng)
            .unwrap();
        let rel = *Rel::ALL.choose(&mut rng).unwrap();
        let absent = loop {
            let o = random_object(&mut rng);
            if !present.contains(&o) {
                break o;
            }
        };

        // Move: the relation holds after, nothing else moved, the move was the nearest one.
        let edit = Edit::Move {
            object: a,
            rel,
            anchor: *b,
        };
        match apply(&canvas, scene, &edit, &mut rng) {
            Ok(after) => {
                assert!(
                    judged(&canvas, &after).contains(&triple(a, rel, *b)),
                    "{edit}"
                );
                for (p, q) in scene.iter().zip(&after) {
                    assert!(p.object == a || p == q, "{edit} moved the {}", p.object);
                }
                let before = cell_of(scene, a);
                let now = cell_of(&after, a);
                if judged(&canvas, scene).contains(&triple(a, rel, *b)) {
                    assert_eq!(before, now, "{edit}: the relation held, nothing to move");
                }
                moved += 1;
            }
            Err(e) => {
                assert_eq!(
                    e,
                    ApplyError::NoFreeCell {
                        object: a,
                        placement: Some((rel, *b))
                    }
                );
                no_cell += 1;
            }
        }

        // Recolour to a colour no object of that shape has.
        if let Some(&colour) = Colour::ALL
            .iter()
            .filter(|&&c| !present.contains(&obj(c, a.shape)))
            .collect::<Vec<_>>()
            .choose(&mut rng)
        {
            let edit = Edit::Recolour {
                object: a,
                colour: *colour,
            };
            let after = apply(&canvas, scene, &edit, &mut rng).unwrap();
            judged(&canvas, &after);
            assert_eq!(cell_of(&after, obj(*colour, a.shape)), cell_of(scene, a));
        }

        // Add with a placement, and without.
        let edit = Edit::Add {
            object: absent,
            placement: Some((rel, a)),
        };
        if let Ok(after) = apply(&canvas, scene, &edit, &mut rng) {
            assert_eq!(after.len(), scene.len() + 1);
            assert!(
                judged(&canvas, &after).contains(&triple(absent, rel, a)),
                "{edit}"
            );
            added += 1;
        }
        let edit = Edit::Add {
            object: absent,
            placement: None,
        };
        let after = apply(&canvas, scene, &edit, &mut rng).unwrap();
        assert_eq!(after.len(), scene.len() + 1);
        judged(&canvas, &after);

        // Remove.
        let after = apply(&canvas, scene, &Edit::Remove { object: a }, &mut rng).unwrap();
        assert_eq!(after.len(), scene.len() - 1);
        judged(&canvas, &after);

        // Swap: every relation between the two turns round.
        let edit = Edit::Swap { a, b: *b };
        let after = apply(&canvas, scene, &edit, &mut rng).unwrap();
        let (before, now) = (judged(&canvas, scene), judged(&canvas, &after));
        for r in Rel::ALL {
            assert_eq!(
                before.contains(&triple(a, r, *b)),
                now.contains(&triple(*b, r, a)),
                "{edit}"
            );
        }
    }
    // Most moves and anchored adds find a cell; the rest cannot (an anchor in the first
    // column, asked to have something to its left, or every such cell taken).
    assert_eq!(moved + no_cell, 300);
    assert!(
        moved > 200 && added > 200 && no_cell > 0,
        "{moved} {added} {no_cell}"
    );
}

#[test]
fn move_picks_the_nearest_cell_that_satisfies_the_relation() {
    let canvas = Canvas::new(32).unwrap();
    let red_circle = obj(Colour::Red, Shape::Circle);
    let blue_square = obj(Colour::Blue, Shape::Square);
    let green_triangle = obj(Colour::Green, Shape::Triangle);
    // Red circle at (3, 1), right of the blue square at (1, 1); the green triangle at (0, 1)
    // blocks the cell straight left of the square.
    let scene = [
        canvas.place_at(red_circle, 3, 1),
        canvas.place_at(blue_square, 1, 1),
        canvas.place_at(green_triangle, 0, 1),
    ];
    let edit = Edit::parse("move the red circle to the left of the blue square").unwrap();
    let mut seen = HashSet::new();
    for seed in 0..32 {
        let after = apply(&canvas, &scene, &edit, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        assert_eq!(&after[1..], &scene[1..]);
        seen.insert(after[0].cell);
    }
    // Column 0 is the only column left of column 1; (0, 0) and (0, 2) are both 4 steps away.
    assert_eq!(seen, HashSet::from([(0, 0), (0, 2)]));
}

#[test]
fn errors_name_what_is_wrong() {
    let canvas = Canvas::new(32).unwrap();
    let red_circle = obj(Colour::Red, Shape::Circle);
    let blue_square = obj(Colour::Blue, Shape::Square);
    let scene = [
        canvas.place_at(red_circle, 0, 0),
        canvas.place_at(blue_square, 1, 0),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut err = |text: &str| {
        apply(&canvas, &scene, &Edit::parse(text).unwrap(), &mut rng)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("remove the green circle"),
        "the green circle is not in the scene"
    );
    assert_eq!(
        err("swap the red circle and the yellow square"),
        "the yellow square is not in the scene"
    );
    assert_eq!(
        err("move the red circle above the green triangle"),
        "the anchor, the green triangle, is not in the scene"
    );
    assert_eq!(
        err("add a green triangle below the yellow circle"),
        "the anchor, the yellow circle, is not in the scene"
    );
    assert_eq!(
        err("move the blue square to the left of the red circle"),
        "no free cell puts the blue square to the left of the red circle"
    );
    assert_eq!(
        err("add a green triangle above the blue square"),
        "no free cell puts the green triangle above the blue square"
    );
    assert_eq!(
        err("add a red circle"),
        "the scene already has a red circle; the edit would duplicate it"
    );
    // Recolouring into an object that is already there.
    let clash = [
        canvas.place_at(red_circle, 0, 0),
        canvas.place_at(obj(Colour::Blue, Shape::Circle), 1, 0),
    ];
    assert_eq!(
        apply(
            &canvas,
            &clash,
            &Edit::parse("recolour the red circle to blue").unwrap(),
            &mut ChaCha8Rng::seed_from_u64(0)
        )
        .unwrap_err()
        .to_string(),
        "the scene already has a blue circle; the edit would duplicate it"
    );
    // Recolouring to its own colour is a no-op, not a clash with itself.
    let same = Edit::parse("recolour the red circle to red").unwrap();
    assert_eq!(
        apply(&canvas, &clash, &same, &mut ChaCha8Rng::seed_from_u64(0)).unwrap(),
        clash.to_vec()
    );
    // Edits built in code that name one object twice are refused too.
    let twice = Edit::Swap {
        a: red_circle,
        b: red_circle,
    };
    assert_eq!(
        apply(&canvas, &clash, &twice, &mut ChaCha8Rng::seed_from_u64(0)),
        Err(ApplyError::SameObject { object: red_circle })
    );
    // A grid with every cell taken has no cell for another object. (The vocabulary has 12
    // objects, so only a broken scene that repeats some can fill all 16 cells.)
    let all: Vec<Object> = Colour::ALL
        .iter()
        .flat_map(|&c| Shape::ALL.map(|s| obj(c, s)))
        .collect();
    let (newcomer, others) = all.split_last().unwrap();
    let full: Vec<Placed> = (0..16u32)
        .map(|k| canvas.place_at(others[k as usize % others.len()], k % 4, k / 4))
        .collect();
    let edit = Edit::Add {
        object: *newcomer,
        placement: None,
    };
    assert_eq!(
        apply(&canvas, &full, &edit, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err()
            .to_string(),
        format!("no free cell is left for the {newcomer}")
    );
}
