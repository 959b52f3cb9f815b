//! Generated inputs for the edit-prompt parser: thousands of damaged edit prompts, each parsed
//! to an edit that writes back exactly the prompt, or refused with an error that names it.

use proptest::prelude::*;
use rlrig_fuzz::{mutated_text, words_changed};
use rlrig_world::Edit;

const PROMPTS: &[&str] = &[
    "move the red circle to the left of the blue square",
    "move the green triangle below the yellow circle",
    "recolour the red circle to green",
    "add a yellow triangle",
    "add a yellow triangle above the red circle",
    "remove the red circle",
    "swap the red circle and the blue square",
];

/// The language's words, so that mutations often make other valid prompts.
const WORDS: &[&str] = &[
    "move",
    "recolour",
    "add",
    "remove",
    "swap",
    "the",
    "a",
    "and",
    "to",
    "of",
    "left",
    "right",
    "above",
    "below",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    " the ",
    "to the left of",
    "to the right of",
];

/// Byte-level damage, and word-level changes that often make other valid prompts.
fn prompts() -> impl Strategy<Value = String> {
    prop_oneof![mutated_text(PROMPTS, WORDS), words_changed(PROMPTS, WORDS)]
}

proptest! {
    #![proptest_config(rlrig_fuzz::config(5000))]

    #[test]
    fn damaged_edit_prompts_parse_exactly_or_are_refused(text in prompts()) {
        match Edit::parse(&text) {
            Ok(edit) => prop_assert_eq!(edit.to_string(), text.trim()),
            // The error quotes the prompt, then says what is wrong: the first wrong word, or
            // an object named twice.
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.starts_with(&format!("edit prompt {text:?}: ")), "{}", message);
                prop_assert!(
                    message.contains(": word ") || message.contains(" twice"),
                    "{}",
                    message
                );
            }
        }
    }
}

/// The generator reaches valid prompts other than the seeds, so the round trip above is
/// exercised, not only the refusals.
#[test]
fn the_damaged_prompts_include_other_valid_prompts() {
    use proptest::strategy::{Strategy, ValueTree};
    let strategy = prompts();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let texts: Vec<String> = (0..5000)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let new_valid = texts
        .iter()
        .filter(|t| !PROMPTS.contains(&t.trim()) && Edit::parse(t).is_ok())
        .count();
    assert!(
        new_valid >= 20,
        "only {new_valid} of 5000 are other valid prompts"
    );
}
