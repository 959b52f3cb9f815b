//! Generated inputs for the `rlrig-actor/1` protocol: thousands of damaged hello and reply
//! lines, as a misbehaving process could write them, each accepted or refused with an error,
//! never a panic or an allocation far beyond the line's own size.

use proptest::prelude::*;
use rlrig_contract::{ItemVerdict, RelationVerdict, SceneGraph};
use rlrig_fuzz::{largest_allocation, mutated_text};

use super::*;

#[global_allocator]
static METER: rlrig_fuzz::Meter = rlrig_fuzz::Meter;

/// No line, however damaged, may make rlrig ask for more than this at once.
const MAX_ALLOCATION: usize = 16 << 20;

fn request() -> CheckRequest {
    let line = include_str!("../../../../tests/data/world_prompts.jsonl")
        .lines()
        .next()
        .unwrap();
    let prompt: SceneGraph = serde_json::from_str(line).unwrap();
    CheckRequest {
        prompt,
        image: Image::filled(8, 8, [9, 9, 9]),
    }
}

fn report_line() -> String {
    let r = request();
    let report = CheckReport::new(
        vec![ItemVerdict::Present; r.prompt.items.len()],
        vec![RelationVerdict::Holds; r.prompt.relations.len()],
        1.0,
        "all holds".into(),
    );
    let report = serde_json::to_string(&report).unwrap();
    format!(r#"{{"id": 9, "results": [{report}, {report}]}}"#)
}

fn image_line() -> String {
    let image = serde_json::to_string(&WireImage::encode(&Image::filled(4, 4, [1, 2, 3])).unwrap());
    format!(
        r#"{{"id": 9, "results": [{}, {}]}}"#,
        image.unwrap(),
        r#"{"width": 1}"#
    )
}

const PROPOSALS: &str = r#"{"id": 9, "results": [{"edit_prompt": "remove the red circle", "token_ids": [1, 2], "logprobs": [-0.5, -0.25], "policy_version": 3}, {"edit_prompt": "add a red circle", "token_ids": [], "logprobs": [], "policy_version": 3}]}"#;

const WORDS: &[&str] = &[
    r#""id""#,
    r#""results""#,
    r#""error""#,
    r#""score""#,
    r#""items""#,
    r#""relations""#,
    r#""png_base64""#,
    r#""width""#,
    r#""height""#,
    r#""present""#,
    r#""holds""#,
    "iVBORw0KGgo",
];

/// Parses `text` as a reply to batch 9 of two requests, with each role's decoder.
fn parse_all(text: &str, request: &CheckRequest) -> Vec<Result<(), String>> {
    fn done<R>(r: Result<Vec<R>, ExternalErrorKind>) -> Result<(), String> {
        r.map(drop).map_err(|e| e.to_string())
    }
    vec![
        done(parse_reply(text, 2, 9, 2, |i, v| {
            decode_report(i, v, request)
        })),
        done(parse_reply(text, 2, 9, 2, decode_image)),
        done(parse_reply(text, 2, 9, 2, decode_proposal)),
    ]
}

proptest! {
    #![proptest_config(rlrig_fuzz::config(2000))]

    #[test]
    fn damaged_replies_are_decoded_or_refused(
        text in mutated_text(&[&report_line(), &image_line(), PROPOSALS], WORDS)
    ) {
        let request = request();
        let (parsed, largest) = largest_allocation(|| parse_all(&text, &request));
        for r in parsed {
            if let Err(message) = r {
                prop_assert!(message.contains("batch") || message.contains("line 2"), "{}", message);
            }
        }
        prop_assert!(largest <= MAX_ALLOCATION.max(64 * text.len()), "allocated {largest} bytes");
    }

    #[test]
    fn damaged_hellos_are_accepted_or_refused(
        text in mutated_text(&[r#"{"protocol": "rlrig-actor/1", "role": "checker"}"#], WORDS)
    ) {
        // Every refusal says it is about the hello.
        if let Err(e) = check_hello(&text, Role::Checker, 1) {
            prop_assert!(e.to_string().contains("hello"), "{}", e);
        }
    }
}

#[test]
fn the_seeds_are_accepted() {
    let request = request();
    assert_eq!(parse_all(&report_line(), &request)[0], Ok(()));
    assert_eq!(parse_all(PROPOSALS, &request)[2], Ok(()));
    // The second image of this seed is incomplete: the first decodes, the line is refused.
    let e = parse_all(&image_line(), &request)[1].clone().unwrap_err();
    assert!(e.contains("results[1]"), "{e}");
}
