//! The tokenizer covers every prompt the world samples, every edit-prompt form and every
//! reflection.

use rlrig_models::text::{BOS, EOS, PROMPT_VOCAB_SIZE, TextError, Tokenizer, VOCAB};
use rlrig_models::vlm_data::{Pool, oracle_findings, problem_scene};
use rlrig_world::{Canvas, Colour, Edit, Object, Rel, reflect, sample};

fn objects() -> Vec<Object> {
    Object::all().collect()
}

/// Every edit the edit-prompt language can express.
fn all_edits() -> Vec<Edit> {
    let objs = objects();
    let mut edits = Vec::new();
    for &object in &objs {
        edits.push(Edit::Add {
            object,
            placement: None,
        });
        edits.push(Edit::Remove { object });
        for colour in Colour::ALL {
            edits.push(Edit::Recolour { object, colour });
        }
        for &other in objs.iter().filter(|&&o| o != object) {
            edits.push(Edit::Swap {
                a: object,
                b: other,
            });
            for rel in Rel::ALL {
                edits.push(Edit::Move {
                    object,
                    rel,
                    anchor: other,
                });
                edits.push(Edit::Add {
                    object,
                    placement: Some((rel, other)),
                });
            }
        }
    }
    edits
}

#[test]
fn every_sampled_world_prompt_encodes_and_decodes() {
    let tok = Tokenizer::default();
    let canvas = Canvas::new(32).unwrap();
    let mut longest = 0;
    for seed in 0..3 {
        for index in 0..400 {
            let prompt = sample(&canvas, seed, index).graph.prompt();
            let ids = tok
                .encode(&prompt)
                .unwrap_or_else(|e| panic!("sample {seed}/{index}: {e}"));
            assert_eq!(ids.len(), 48);
            longest = longest.max(tok.tokens(&prompt).unwrap().len());
            assert_eq!(tok.decode(&ids).unwrap(), prompt);
        }
    }
    // 4 relations of 6 words and 3 separators: well inside 48.
    assert!(
        (9..=27).contains(&longest),
        "longest prompt: {longest} tokens"
    );
}

#[test]
fn every_edit_form_encodes_and_decodes() {
    let tok = Tokenizer::default();
    let edits = all_edits();
    assert!(edits.len() > 1000);
    for edit in edits {
        let text = edit.to_string();
        let ids = tok
            .encode(&text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

#[test]
fn every_vocabulary_word_is_used_by_the_world_the_edits_or_the_reflections() {
    let tok = Tokenizer::default();
    let full = Tokenizer::full(512);
    let canvas = Canvas::new(32).unwrap();
    let mut seen = vec![false; VOCAB.len()];
    seen[0] = true; // <pad>
    seen[BOS as usize] = true; // the decoder's markers are never read from text
    seen[EOS as usize] = true;
    let prompts = (0..200)
        .map(|i| sample(&canvas, 9, i).graph.prompt())
        .chain(all_edits().into_iter().map(|e| e.to_string()));
    for p in prompts {
        for id in tok.tokens(&p).unwrap() {
            assert!((id as usize) < PROMPT_VOCAB_SIZE);
            seen[id as usize] = true;
        }
    }
    for i in 0..300 {
        let scene = problem_scene(&canvas, 9, i, &Pool::default(), 0.0);
        let f = oracle_findings(&scene);
        for id in full.tokens(&reflect::reflection(&scene.graph, &f)).unwrap() {
            seen[id as usize] = true;
        }
    }
    // Two objects too close for any relation to hold (generated images do that): the
    // reflection says "not clearly".
    let scene = problem_scene(&canvas, 9, 0, &Pool::default(), 0.0);
    let mut f = oracle_findings(&scene);
    f.items.fill(rlrig_contract::ItemVerdict::Present);
    f.relations.fill(rlrig_contract::RelationVerdict::Violated);
    f.actual.iter_mut().for_each(Vec::clear);
    for id in full.tokens(&reflect::reflection(&scene.graph, &f)).unwrap() {
        seen[id as usize] = true;
    }
    let unused: Vec<_> = VOCAB.iter().zip(&seen).filter(|(_, s)| !**s).collect();
    assert!(unused.is_empty(), "unused words: {unused:?}");
}

#[test]
fn out_of_vocabulary_and_overlong_prompts_are_refused() {
    let tok = Tokenizer::default();
    let err = tok
        .encode("move the purple circle above the red square")
        .unwrap_err();
    assert_eq!(
        err,
        TextError::UnknownWord {
            prompt: "move the purple circle above the red square".into(),
            word: "purple".into()
        }
    );
    // 7 triples: 7·6 words and 6 separators fill the 48 tokens exactly.
    let full = ["red circle left of blue square"; 7].join("; ");
    assert_eq!(tok.tokens(&full).unwrap().len(), 48);
    assert!(tok.encode(&full).unwrap().iter().all(|&id| id != 0));
    let longer = ["red circle left of blue square"; 8].join("; ");
    let err = tok.encode(&longer).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("prompt {longer:?} has 55 tokens; at most 48 fit")
    );
}
