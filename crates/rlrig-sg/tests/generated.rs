//! Generated inputs for the LAION-SG reader: thousands of damaged JSONL records, each read or
//! refused with an error naming the record, never a panic or a runaway allocation.

use proptest::prelude::*;
use rlrig_fuzz::{largest_allocation, mutated_text};
use rlrig_sg::read_jsonl;

#[global_allocator]
static METER: rlrig_fuzz::Meter = rlrig_fuzz::Meter;

/// No record, however damaged, may make the reader ask for more than this at once.
const MAX_ALLOCATION: usize = 16 << 20;

const RECORDS: &[&str] = &[
    include_str!("../../../tests/data/laion_sg_sample.jsonl"),
    include_str!("../../../tests/data/world_prompts.jsonl"),
];

const WORDS: &[&str] = &[
    "\"items\"",
    "\"relations\"",
    "\"item_id\"",
    "\"label\"",
    "\"attributes\"",
    "\"item1\"",
    "\"item2\"",
    "\"relation\"",
    "\"triple_id\"",
    "[]",
    "{}",
    "-3",
    "4294967296",
];

proptest! {
    #![proptest_config(rlrig_fuzz::config(3000))]

    #[test]
    fn damaged_records_are_read_or_refused(text in mutated_text(RECORDS, WORDS)) {
        let (read, largest) = largest_allocation(|| read_jsonl(&text, "generated.jsonl"));
        match read {
            // What was read is a record again: it writes and reads back the same.
            Ok(graphs) => {
                for g in graphs {
                    let line = serde_json::to_string(&g).unwrap();
                    prop_assert_eq!(read_jsonl(&line, "again").unwrap(), vec![g]);
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("generated.jsonl"), "unlocated: {e}"),
        }
        prop_assert!(largest <= MAX_ALLOCATION, "allocated {largest} bytes at once");
    }
}

#[test]
fn the_seeds_are_read() {
    for text in RECORDS {
        assert!(!read_jsonl(text, "seed").unwrap().is_empty());
    }
}
