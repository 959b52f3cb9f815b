//! The rule policy and the scene editor on their own, and the whole reflect-edit cycle
//! (checker → rule policy → editor → checker) on mistaken renders.

mod common;

use common::{canvas, check_one, mean, obj, record};
use rlrig_baseline::{
    MistakenRenderer, MistakenRendererConfig, OracleChecker, OracleCheckerConfig, RulePolicy,
    RulePolicyConfig, SceneEditor, SceneEditorConfig,
};
use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Diffuser, EditPolicy, EditProposal, EditRequest, Editor,
    GenerateRequest, Image, ItemVerdict, ProposeRequest, RelationVerdict, SceneGraph,
};
use rlrig_world::{Colour, Edit, Shape, detect, judge, sample};

fn policy() -> RulePolicy {
    RulePolicy::new(RulePolicyConfig::default()).unwrap()
}

fn editor(context_loss: f64) -> SceneEditor {
    SceneEditor::new(SceneEditorConfig {
        context_loss,
        ..Default::default()
    })
    .unwrap()
}

fn checker() -> OracleChecker {
    OracleChecker::new(OracleCheckerConfig::default()).unwrap()
}

fn propose(prompt: &SceneGraph, image: &Image, report: CheckReport) -> EditProposal {
    policy()
        .propose(&[ProposeRequest {
            prompt: prompt.clone(),
            image: image.clone(),
            report,
            seed: 0,
        }])
        .unwrap()
        .remove(0)
}

fn edit_one(editor: &mut SceneEditor, image: &Image, edit_prompt: &str, seed: u64) -> Image {
    editor
        .edit(&[EditRequest {
            explore: false,
            image: image.clone(),
            edit_prompt: edit_prompt.into(),
            seed,
        }])
        .unwrap()
        .remove(0)
}

fn report(items: &[ItemVerdict], relations: &[RelationVerdict]) -> CheckReport {
    CheckReport {
        items: items.to_vec(),
        relations: relations.to_vec(),
        score: 0.0,
        reflection: String::new(),
        graph: None,
        estimates: None,
    }
}

/// A prompt of three items and two relations, and a blank image.
fn three_items() -> (SceneGraph, Image) {
    let prompt = record(
        &[("red", "circle"), ("blue", "square"), ("green", "triangle")],
        &[(0, "left of", 1), (1, "above", 2)],
    );
    (prompt, canvas().draw(&[]))
}

use ItemVerdict::{Missing, Present};
use RelationVerdict::{CannotTell, Holds, Violated};

#[test]
fn the_policy_follows_its_three_rules() {
    let (prompt, image) = three_items();
    let cases = [
        // A missing item is added, placed by a relation to a present item (turned round when
        // the missing item is the relation's object).
        (
            report(&[Present, Present, Missing], &[Holds, CannotTell]),
            "add a green triangle below the blue square",
        ),
        (
            report(&[Missing, Present, Present], &[CannotTell, Holds]),
            "add a red circle to the left of the blue square",
        ),
        // No present partner: a bare add.
        (
            report(&[Missing, Missing, Missing], &[CannotTell, CannotTell]),
            "add a red circle",
        ),
        // All present: the first violated relation becomes a move.
        (
            report(&[Present, Present, Present], &[Holds, Violated]),
            "move the blue square above the green triangle",
        ),
        // Nothing wrong: the first relation is re-asserted.
        (
            report(&[Present, Present, Present], &[Holds, Holds]),
            "move the red circle to the left of the blue square",
        ),
    ];
    for (r, want) in cases {
        let p = propose(&prompt, &image, r);
        assert_eq!(p.edit_prompt, want);
        assert!(p.token_ids.is_empty() && p.logprobs.is_empty());
        assert_eq!(p.policy_version, 0);
    }
    // No relations, nothing wrong: a recolour to the same colour, a no-op.
    let lone = record(&[("yellow", "square")], &[]);
    let p = propose(&lone, &image, report(&[Present], &[]));
    assert_eq!(p.edit_prompt, "recolour the yellow square to yellow");
    // Without placements, adds are bare.
    let mut bare = RulePolicy::new(RulePolicyConfig {
        place_added: false,
        ..Default::default()
    })
    .unwrap();
    let p = bare
        .propose(&[ProposeRequest {
            prompt: prompt.clone(),
            image: image.clone(),
            report: report(&[Present, Present, Missing], &[Holds, CannotTell]),
            seed: 0,
        }])
        .unwrap();
    assert_eq!(p[0].edit_prompt, "add a green triangle");
}

#[test]
fn with_swap_reversed_the_policy_swaps_a_relation_the_checker_sees_reversed() {
    let (prompt, image) = three_items();
    let triple = |s: &str, p: &str, o: &str| rlrig_contract::sg::Triple {
        subject: s.into(),
        predicate: p.into(),
        object: o.into(),
    };
    let seen = |triples: Vec<rlrig_contract::sg::Triple>| {
        let mut r = report(&[Present, Present, Present], &[Violated, Holds]);
        r.graph = Some(rlrig_contract::sg::Extraction {
            triples,
            ..Default::default()
        });
        r
    };
    let mut swapping = RulePolicy::new(RulePolicyConfig {
        swap_reversed: true,
        ..Default::default()
    })
    .unwrap();
    let mut ask = |r: CheckReport| {
        swapping
            .propose(&[ProposeRequest {
                prompt: prompt.clone(),
                image: image.clone(),
                report: r,
                seed: 0,
            }])
            .unwrap()
            .remove(0)
            .edit_prompt
    };
    // The square is seen left of the circle: the asked relation reversed, so a swap.
    let reversed = seen(vec![
        triple("blue square", "left of", "red circle"),
        triple("blue square", "above", "green triangle"),
    ]);
    assert_eq!(
        ask(reversed.clone()),
        "swap the red circle and the blue square"
    );
    // Violated but not reversed (the circle is above the square): the rule's move.
    let other = seen(vec![triple("red circle", "above", "blue square")]);
    assert_eq!(
        ask(other),
        "move the red circle to the left of the blue square"
    );
    // No graph in the report: the rule's move.
    assert_eq!(
        ask(report(&[Present, Present, Present], &[Violated, Holds])),
        "move the red circle to the left of the blue square"
    );
    // Without the option the reversed relation is moved too.
    assert_eq!(
        propose(&prompt, &image, reversed).edit_prompt,
        "move the red circle to the left of the blue square"
    );
}

#[test]
fn the_policy_refuses_reports_that_do_not_fit_the_prompt() {
    let prompt = record(&[("red", "circle"), ("blue", "square")], &[(0, "above", 1)]);
    let e = policy()
        .propose(&[ProposeRequest {
            prompt,
            image: canvas().draw(&[]),
            report: report(&[Present], &[Holds]),
            seed: 0,
        }])
        .unwrap_err();
    assert!(
        e.0.contains(
            "the report has 1 item and 1 relation verdicts, the prompt 2 items and 1 relations"
        ),
        "{e}"
    );
}

#[test]
fn the_editor_applies_edits_and_leaves_bad_ones_alone() {
    let canvas = canvas();
    let red = obj(Colour::Red, Shape::Circle);
    let blue = obj(Colour::Blue, Shape::Square);
    let green = obj(Colour::Green, Shape::Triangle);
    let image = canvas.draw(&[
        canvas.place_at(red, 3, 0),
        canvas.place_at(blue, 0, 0),
        canvas.place_at(green, 2, 2),
    ]);
    let mut ed = editor(0.0);
    let prompt = record(
        &[("red", "circle"), ("blue", "square")],
        &[(0, "left of", 1)],
    );
    assert!(judge(&prompt, &image).unwrap().relation_accuracy == Some(0.0));
    let edited = edit_one(
        &mut ed,
        &image,
        "move the red circle to the left of the blue square",
        1,
    );
    // Column 0 is taken by the blue square itself, so nothing is left of it: unchanged.
    assert_eq!(edited, image);
    let edited = edit_one(
        &mut ed,
        &image,
        "move the blue square to the right of the red circle",
        1,
    );
    assert_eq!(edited, image, "nothing is right of column 3");
    let edited = edit_one(
        &mut ed,
        &image,
        "swap the red circle and the blue square",
        1,
    );
    assert_eq!(
        judge(&prompt, &edited).unwrap().relation_accuracy,
        Some(1.0)
    );
    // The green triangle stayed where it was.
    let green_box = |img: &Image| {
        detect(img)
            .into_iter()
            .find(|d| d.object == green)
            .unwrap()
            .bbox
    };
    assert_eq!(green_box(&edited), green_box(&image));
    // Prompts that do not parse, or name objects not there, change nothing.
    for bad in [
        "make it nicer",
        "remove the yellow circle",
        "add a red circle",
        "move the red circle above the red circle",
    ] {
        assert_eq!(edit_one(&mut ed, &image, bad, 1), image, "{bad}");
    }
    // A real edit changes the image, deterministically in the seed.
    let removed = edit_one(&mut ed, &image, "remove the green triangle", 1);
    assert_eq!(detect(&removed).len(), 2);
    let added = edit_one(
        &mut ed,
        &image,
        "add a yellow circle below the red circle",
        5,
    );
    assert_eq!(
        added,
        edit_one(
            &mut ed,
            &image,
            "add a yellow circle below the red circle",
            5
        )
    );
    assert_eq!(detect(&added).len(), 4);
}

#[test]
fn context_loss_disturbs_only_objects_the_edit_does_not_name() {
    let canvas = canvas();
    let s = (0..)
        .map(|i| sample(&canvas, 41, i))
        .find(|s| s.placed.len() == 4)
        .unwrap();
    let [a, b, c, d] = [0, 1, 2, 3].map(|k| s.placed[k].object);
    let edit = format!("swap the {a} and the {b}");
    let boxes = |img: &Image| {
        let found = detect(img);
        [a, b, c, d].map(|o| found.iter().find(|x| x.object == o).unwrap().bbox)
    };
    let clean = boxes(&edit_one(&mut editor(0.0), &s.image, &edit, 3));
    let mut moved = [0; 4];
    for seed in 0..20 {
        let lossy = boxes(&edit_one(&mut editor(1.0), &s.image, &edit, seed));
        assert_eq!(lossy[..2], clean[..2], "the named objects are exact");
        for k in 2..4 {
            moved[k] += (lossy[k] != clean[k]) as u32;
        }
    }
    assert_eq!(
        moved,
        [0, 0, 20, 20],
        "context_loss 1 moves every other object"
    );
}

#[test]
fn the_editor_refuses_images_that_are_not_world_canvases() {
    let e = editor(0.0)
        .edit(&[EditRequest {
            explore: false,
            image: Image::filled(40, 32, [255; 3]),
            edit_prompt: "remove the red circle".into(),
            seed: 0,
        }])
        .unwrap_err();
    assert_eq!(
        e.0,
        "SceneEditor: request 0: the image is 40x32; the world redraws square canvases only"
    );
    let e = editor(0.0)
        .edit(&[EditRequest {
            explore: false,
            image: Image::filled(16, 16, [255; 3]),
            edit_prompt: "remove the red circle".into(),
            seed: 0,
        }])
        .unwrap_err();
    assert!(e.0.contains("16x16 is too small"), "{e}");
}

/// Mean checker score over the images, and per-image scores.
fn scores(
    checker: &mut OracleChecker,
    prompts: &[SceneGraph],
    images: &[Image],
) -> Vec<CheckReport> {
    let batch: Vec<CheckRequest> = prompts
        .iter()
        .zip(images)
        .map(|(p, i)| CheckRequest {
            prompt: p.clone(),
            image: i.clone(),
        })
        .collect();
    checker.check(&batch).unwrap()
}

#[test]
fn the_reflect_edit_cycle_repairs_mistaken_renders() {
    const PROMPTS: u64 = 200;
    const ROUNDS: usize = 3;
    let canvas = canvas();
    let prompts: Vec<SceneGraph> = (0..PROMPTS).map(|i| sample(&canvas, 51, i).graph).collect();
    let mut renderer = MistakenRenderer::new(MistakenRendererConfig {
        mistake_rate: 1.0,
        ..Default::default()
    })
    .unwrap();
    let generate: Vec<GenerateRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerateRequest {
            prompt: p.clone(),
            seed: i as u64,
            explore: false,
        })
        .collect();
    let mut images = renderer.generate(&generate).unwrap();
    let (mut checker, mut policy, mut editor) = (checker(), policy(), editor(0.0));
    let mut reports = scores(&mut checker, &prompts, &images);
    let mut means = vec![mean(&reports.iter().map(|r| r.score).collect::<Vec<_>>())];
    let start_accuracy = mean(
        &prompts
            .iter()
            .zip(&images)
            .map(|(p, i)| judge(p, i).unwrap().relation_accuracy.unwrap())
            .collect::<Vec<_>>(),
    );
    for round in 0..ROUNDS {
        let ask: Vec<ProposeRequest> = prompts
            .iter()
            .zip(&images)
            .zip(&reports)
            .map(|((p, i), r)| ProposeRequest {
                prompt: p.clone(),
                image: i.clone(),
                report: r.clone(),
                seed: round as u64,
            })
            .collect();
        let proposals = policy.propose(&ask).unwrap();
        for p in &proposals {
            Edit::parse(&p.edit_prompt).unwrap();
        }
        let edits: Vec<EditRequest> = images
            .iter()
            .zip(&proposals)
            .enumerate()
            .map(|(k, (i, p))| EditRequest {
                explore: false,
                image: i.clone(),
                edit_prompt: p.edit_prompt.clone(),
                seed: (round * 1_000 + k) as u64,
            })
            .collect();
        images = editor.edit(&edits).unwrap();
        let next = scores(&mut checker, &prompts, &images);
        // With no context loss an add or a move repairs its item or relation and touches
        // nothing else, but a moved object can break another of its relations: count the
        // images that got worse.
        let worse = reports
            .iter()
            .zip(&next)
            .filter(|(a, b)| b.score < a.score)
            .count();
        assert!(
            worse < PROMPTS as usize / 10,
            "round {round}: {worse} images worse"
        );
        reports = next;
        means.push(mean(&reports.iter().map(|r| r.score).collect::<Vec<_>>()));
        println!(
            "round {}: mean checker score {:.3} -> {:.3}, {worse} of {PROMPTS} images worse",
            round + 1,
            means[round],
            means[round + 1]
        );
    }
    let end_accuracy = mean(
        &prompts
            .iter()
            .zip(&images)
            .map(|(p, i)| judge(p, i).unwrap().relation_accuracy.unwrap())
            .collect::<Vec<_>>(),
    );
    println!("oracle relation accuracy {start_accuracy:.3} -> {end_accuracy:.3}");
    assert!(
        means[1] > means[0] + 0.15,
        "one round must clearly raise the mean score: {means:?}"
    );
    assert!(means[ROUNDS] >= means[1], "{means:?}");
    assert!(
        end_accuracy > start_accuracy + 0.2,
        "{start_accuracy} {end_accuracy}"
    );
}

#[test]
fn the_cycle_leaves_satisfied_images_alone() {
    let canvas = canvas();
    let mut checker = checker();
    let mut ed = editor(0.0);
    for i in 0..50 {
        let s = sample(&canvas, 61, i);
        let r = check_one(&mut checker, &s.graph, &s.image);
        let p = propose(&s.graph, &s.image, r);
        assert_eq!(
            edit_one(&mut ed, &s.image, &p.edit_prompt, i),
            s.image,
            "{}",
            p.edit_prompt
        );
    }
}
