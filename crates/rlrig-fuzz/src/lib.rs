//! Generated-input testing for rlrig's parsers (a dev-dependency of the crates that parse).
//!
//! * [`mutated`]: a proptest strategy that takes a valid input (a seed) and damages it with a
//!   few byte-level mutations: deletions, insertions of tokens that parsers treat specially,
//!   replaced bytes, duplicated ranges and truncation. Inputs close to valid reach deep into a
//!   parser; random bytes would be refused at the first character.
//! * [`Meter`] and [`largest_allocation`]: a global allocator that records the largest single
//!   allocation a thread asks for, so a test can show that a malformed input is refused
//!   without allocating what its length fields claim.
//! * [`config`]: the shared proptest settings (how many cases each property gets in CI).
//!
//! A parser under these tests must turn every input into a value or an error: never a panic,
//! never an allocation beyond what the test allows. Failing cases are saved by proptest next to
//! the test file (`generated.regressions`) and replayed first on every later run.

#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence};

/// Tokens that parsers of TOML, JSON and rlrig's text formats treat specially.
pub const TOKENS: &[&str] = &[
    "\"",
    "'",
    "\\",
    "[",
    "]",
    "{",
    "}",
    "[[",
    "]]",
    "=",
    ",",
    ":",
    ".",
    "#",
    "\n",
    "\r\n",
    "\t",
    " ",
    "-",
    "+",
    "0",
    "-1",
    "1e309",
    "-0.0",
    "nan",
    "inf",
    "18446744073709551616",
    "9999999999",
    "true",
    "null",
    "\"\"",
    "\"\"\"",
    "\\u0000",
    "\\uD800",
    "é",
    "\u{0}",
    "\u{feff}",
    "💥",
];

/// The proptest settings for generated-input tests: `cases` inputs per property (the
/// `RLRIG_FUZZ_CASES` environment variable overrides it), failing inputs saved next to the
/// test's source file as `<file>.regressions` and replayed first on every later run.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("RLRIG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    }
}

/// One byte-level change to an input.
#[derive(Clone, Debug)]
enum Mutation {
    /// Deletes up to `len` bytes at `at`.
    Delete { at: Index, len: usize },
    /// Inserts a token at `at`.
    Insert { at: Index, token: Vec<u8> },
    /// Replaces the byte at `at`.
    Replace { at: Index, byte: u8 },
    /// Copies up to `len` bytes from `from` to `to`.
    Duplicate { from: Index, len: usize, to: Index },
    /// Cuts the input at `at`.
    Truncate { at: Index },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let pos = |at: &Index, n: usize| if n == 0 { 0 } else { at.index(n + 1) };
        let n = bytes.len();
        match self {
            Mutation::Delete { at, len } => {
                let start = pos(at, n);
                let end = (start + len).min(n);
                bytes.drain(start..end);
            }
            Mutation::Insert { at, token } => {
                let at = pos(at, n);
                bytes.splice(at..at, token.iter().copied());
            }
            Mutation::Replace { at, byte } if n > 0 => bytes[at.index(n)] = *byte,
            Mutation::Replace { .. } => {}
            Mutation::Duplicate { from, len, to } if n > 0 => {
                let start = from.index(n);
                let piece = bytes[start..(start + len).min(n)].to_vec();
                let to = pos(to, n);
                bytes.splice(to..to, piece);
            }
            Mutation::Duplicate { .. } => {}
            Mutation::Truncate { at } => bytes.truncate(pos(at, n)),
        }
    }
}

fn mutation(tokens: Vec<Vec<u8>>) -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        3 => proptest::sample::select(tokens),
        1 => proptest::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        3 => (any::<Index>(), 1..32usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        4 => (any::<Index>(), token).prop_map(|(at, token)| Mutation::Insert { at, token }),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace { at, byte }),
        1 => (any::<Index>(), 1..256usize, any::<Index>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// Inputs made from one of `seeds` by one to eight mutations, inserting [`TOKENS`] and
/// `extra_tokens` (words of the format under test) among others.
pub fn mutated(seeds: Vec<Vec<u8>>, extra_tokens: &[&str]) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "mutated needs at least one seed");
    let tokens: Vec<Vec<u8>> = TOKENS
        .iter()
        .chain(extra_tokens)
        .map(|t| t.as_bytes().to_vec())
        .collect();
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(tokens), 1..=8),
    )
        .prop_map(|(mut bytes, mutations)| {
            for m in &mutations {
                m.apply(&mut bytes);
            }
            bytes
        })
}

/// [`mutated`] as text: invalid UTF-8 becomes U+FFFD, as a reader of text files sees it.
pub fn mutated_text(seeds: &[&str], extra_tokens: &[&str]) -> impl Strategy<Value = String> {
    let seeds = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    mutated(seeds, extra_tokens).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Inputs made from one of `seeds` (texts of space-separated words) by one to three word-level
/// changes: a word replaced by one of `words`, a word deleted, or one of `words` inserted. For
/// small languages this reaches other valid sentences, which byte-level changes rarely do.
pub fn words_changed(seeds: &[&str], words: &[&str]) -> impl Strategy<Value = String> {
    assert!(!seeds.is_empty() && !words.is_empty());
    let seeds: Vec<String> = seeds.iter().map(|s| (*s).to_owned()).collect();
    let words: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
    let change = (0..3u8, any::<Index>(), proptest::sample::select(words));
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(change, 1..=3),
    )
        .prop_map(|(seed, changes)| {
            let mut sentence: Vec<String> = seed.split(' ').map(str::to_owned).collect();
            for (kind, at, word) in changes {
                let n = sentence.len();
                match kind {
                    0 if n > 0 => sentence[at.index(n)] = word,
                    1 if n > 0 => {
                        sentence.remove(at.index(n));
                    }
                    _ => sentence.insert(at.index(n + 1), word),
                }
            }
            sentence.join(" ")
        })
}

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

/// The system allocator, recording the largest allocation each thread asks for. A test binary
/// installs it with `#[global_allocator] static METER: rlrig_fuzz::Meter = rlrig_fuzz::Meter;`.
pub struct Meter;

// SAFETY: every call is forwarded unchanged to `System`; recording touches only a
// thread-local `Cell<usize>`, which neither allocates nor has a destructor.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its value with the largest single allocation (in bytes) this thread
/// asked for meanwhile. Meaningful only where [`Meter`] is the global allocator (else 0).
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn mutations_change_the_seed_and_stay_small() {
        let seed = b"name = \"infer\"\n[prompts]\ncount = 100\n".to_vec();
        let strategy = mutated(vec![seed.clone()], &["count"]);
        let mut runner = TestRunner::deterministic();
        let inputs: Vec<Vec<u8>> = (0..500)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect();
        let changed = inputs.iter().filter(|i| **i != seed).count();
        assert!(
            changed > 450,
            "only {changed} of 500 inputs differ from the seed"
        );
        assert!(inputs.iter().all(|i| i.len() <= seed.len() + 8 * 256));
        assert!(inputs.iter().any(|i| i.len() < seed.len()));
        assert!(inputs.iter().any(|i| i.len() > seed.len()));
    }
}
