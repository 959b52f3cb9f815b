//! Generated inputs for the edit-prompt parser: thousands of damaged edit prompts, each parsed
//! to an edit that writes back exactly the prompt, or refused with an error that names it.

use proptest::prelude::*;
use rlrig_fuzz::mutated_text;
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

proptest! {
    #![proptest_config(rlrig_fuzz::config(5000))]

    #[test]
    fn damaged_edit_prompts_parse_exactly_or_are_refused(text in mutated_text(PROMPTS, WORDS)) {
        match Edit::parse(&text) {
            Ok(edit) => prop_assert_eq!(edit.to_string(), text.trim()),
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.starts_with("edit prompt "), "{}", message);
                prop_assert!(message.contains(": word "), "{}", message);
            }
        }
    }
}
