//! The edit-prompt language: what the Policy role (the paper's *Actor*) writes and the Editor
//! role applies, over the world's vocabulary.
//!
//! # Grammar
//!
//! Plain English, lowercase, words separated by single spaces (leading and trailing whitespace
//! is trimmed; everything else must match exactly). `<obj>` is `<colour> <shape>` (`red
//! circle`); `<where>` is `to the left of`, `to the right of`, `above` or `below`
//! ([`Rel::LeftOf`], [`Rel::RightOf`], [`Rel::Above`], [`Rel::Below`]).
//!
//! | form | example |
//! |---|---|
//! | `move the <obj> <where> the <obj>` | `move the red circle to the left of the blue square` |
//! | `recolour the <obj> to <colour>` | `recolour the red circle to green` |
//! | `add a <obj>` | `add a yellow triangle` |
//! | `add a <obj> <where> the <obj>` | `add a yellow triangle above the red circle` |
//! | `remove the <obj>` | `remove the red circle` |
//! | `swap the <obj> and the <obj>` | `swap the red circle and the blue square` |
//!
//! A move, a swap, or an add with an anchor must name two different objects. Recolouring an
//! object to its own colour is valid and changes nothing.
//!
//! A parse error names the prompt, the 1-based index of the first wrong word, what was expected
//! there and what was found: `edit prompt "move the purple circle to the left of the blue
//! square": word 3: expected a colour (red, green, blue, yellow), found "purple"`.
//!
//! [`Display`](fmt::Display) writes the canonical text, and `Edit::parse(&e.to_string()) ==
//! Ok(e)` for every valid edit. Serde writes an edit as that text and reads it back with
//! [`Edit::parse`].
//!
//! # Applying an edit ([`apply`])
//!
//! A scene is a list of [`Placed`] objects, each in a cell of the canvas's 4×4 grid; a cell is
//! *free* when no other object stands in it. Relations are GenEval's rule
//! ([`holds`]) between the cell's box and the anchor's box.
//!
//! * **move**: the object goes to the free cell (its own cell counts as free) in which the
//!   relation to the anchor holds, nearest to its current cell by Manhattan distance on the
//!   grid, ties broken at random. If the relation already holds it stays where it is. Every
//!   other object stays.
//! * **recolour**: the object keeps its cell and takes the new colour; an error if another
//!   object already has that colour and shape.
//! * **add**: the new object goes to a free cell chosen at random among those in which the
//!   placement holds (any free cell without a placement); an error if it is already there.
//! * **remove**: the object is taken out.
//! * **swap**: the two objects exchange cells.
//!
//! Objects keep their order in the scene; an added object comes last. When a scene holds the
//! same object twice (a broken image), an edit acts on the first.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::canvas::{Canvas, GRID, Placed};
use crate::geometry::{BBox, holds};
use crate::vocab::{Colour, Object, Rel, Shape};

/// One edit of a scene, in the edit-prompt language (see the [module docs](self)).
///
/// Serialised as its canonical text (`"remove the red circle"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Edit {
    /// `move the <object> <rel> the <anchor>`.
    Move {
        /// The object that moves.
        object: Object,
        /// Where it goes, relative to `anchor`.
        rel: Rel,
        /// The object it is placed relative to; it does not move.
        anchor: Object,
    },
    /// `recolour the <object> to <colour>`.
    Recolour {
        /// The object to recolour.
        object: Object,
        /// Its new colour.
        colour: Colour,
    },
    /// `add a <object>`, or `add a <object> <rel> the <anchor>`.
    Add {
        /// The new object.
        object: Object,
        /// Where it goes: `rel` relative to an object already in the scene.
        placement: Option<(Rel, Object)>,
    },
    /// `remove the <object>`.
    Remove {
        /// The object to take out.
        object: Object,
    },
    /// `swap the <a> and the <b>`.
    Swap {
        /// One object.
        a: Object,
        /// The other.
        b: Object,
    },
}

/// An edit prompt that is not in the edit-prompt language.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("edit prompt {prompt:?}: {problem}")]
pub struct EditParseError {
    /// The prompt as given.
    pub prompt: String,
    /// What is wrong with it.
    pub problem: EditProblem,
}

/// What is wrong with an edit prompt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditProblem {
    /// A word is not what the grammar allows there.
    #[error("word {index}: expected {expected}, found {}", describe_found(.found))]
    UnexpectedWord {
        /// 1-based index of the word.
        index: usize,
        /// What the grammar allows there, e.g. `a colour (red, green, blue, yellow)`.
        expected: String,
        /// The word found (`""` for an extra space); `None` at the end of the prompt.
        found: Option<String>,
    },
    /// A move, swap or anchored add that names one object twice.
    #[error("{verb} names the {object} twice; it needs two different objects")]
    SameObject {
        /// `move`, `swap` or `add`.
        verb: &'static str,
        /// The object named twice.
        object: Object,
    },
}

fn describe_found(found: &Option<String>) -> String {
    match found.as_deref() {
        None => "the end of the prompt".into(),
        Some("") => "an extra space".into(),
        Some(w) => format!("{w:?}"),
    }
}

/// Why an edit cannot be applied to a scene.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The object the edit acts on is not in the scene.
    #[error("the {object} is not in the scene")]
    NotInScene {
        /// The missing object.
        object: Object,
    },
    /// The anchor of a move or an add is not in the scene.
    #[error("the anchor, the {anchor}, is not in the scene")]
    AnchorNotInScene {
        /// The missing anchor.
        anchor: Object,
    },
    /// No free cell of the grid satisfies the placement.
    #[error("{}", no_free_cell(*.object, *.placement))]
    NoFreeCell {
        /// The object to place.
        object: Object,
        /// The required placement, if any.
        placement: Option<(Rel, Object)>,
    },
    /// The result would hold two objects of one colour and shape.
    #[error("the scene already has a {object}; the edit would duplicate it")]
    WouldDuplicate {
        /// The object that would be duplicated.
        object: Object,
    },
    /// The edit names one object twice (only edits built in code, not parsed, can).
    #[error("the edit names the {object} twice; it needs two different objects")]
    SameObject {
        /// The object named twice.
        object: Object,
    },
}

fn no_free_cell(object: Object, placement: Option<(Rel, Object)>) -> String {
    match placement {
        Some((rel, anchor)) => format!(
            "no free cell puts the {object} {} the {anchor}",
            where_phrase(rel)
        ),
        None => format!("no free cell is left for the {object}"),
    }
}

/// The `<where>` words of a relation.
fn where_phrase(rel: Rel) -> &'static str {
    match rel {
        Rel::LeftOf => "to the left of",
        Rel::RightOf => "to the right of",
        Rel::Above => "above",
        Rel::Below => "below",
    }
}

impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Edit::Move {
                object,
                rel,
                anchor,
            } => write!(f, "move the {object} {} the {anchor}", where_phrase(rel)),
            Edit::Recolour { object, colour } => write!(f, "recolour the {object} to {colour}"),
            Edit::Add {
                object,
                placement: None,
            } => write!(f, "add a {object}"),
            Edit::Add {
                object,
                placement: Some((rel, anchor)),
            } => write!(f, "add a {object} {} the {anchor}", where_phrase(rel)),
            Edit::Remove { object } => write!(f, "remove the {object}"),
            Edit::Swap { a, b } => write!(f, "swap the {a} and the {b}"),
        }
    }
}

impl FromStr for Edit {
    type Err = EditParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Edit::parse(s)
    }
}

impl From<Edit> for String {
    fn from(e: Edit) -> String {
        e.to_string()
    }
}

impl TryFrom<String> for Edit {
    type Error = EditParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Edit::parse(&s)
    }
}

impl Edit {
    /// Parses an edit prompt strictly (see the [module docs](self) for the grammar).
    pub fn parse(prompt: &str) -> Result<Edit, EditParseError> {
        let error = |problem| EditParseError {
            prompt: prompt.to_owned(),
            problem,
        };
        let mut words = Words::new(prompt.trim());
        let edit = words.edit().map_err(error)?;
        words.end().map_err(error)?;
        edit.same_object().map_or(Ok(edit), |(verb, object)| {
            Err(error(EditProblem::SameObject { verb, object }))
        })
    }

    /// The objects the edit names, subject first.
    pub fn objects(&self) -> Vec<Object> {
        match *self {
            Edit::Move { object, anchor, .. } => vec![object, anchor],
            Edit::Add {
                object,
                placement: Some((_, anchor)),
            } => vec![object, anchor],
            Edit::Recolour { object, .. }
            | Edit::Add {
                object,
                placement: None,
            }
            | Edit::Remove { object } => vec![object],
            Edit::Swap { a, b } => vec![a, b],
        }
    }

    /// The verb and object of an edit that names one object twice.
    fn same_object(&self) -> Option<(&'static str, Object)> {
        match *self {
            Edit::Move { object, anchor, .. } if object == anchor => Some(("move", object)),
            Edit::Swap { a, b } if a == b => Some(("swap", a)),
            Edit::Add {
                object,
                placement: Some((_, anchor)),
            } if object == anchor => Some(("add", object)),
            _ => None,
        }
    }
}

const EXPECT_VERB: &str = "a verb (move, recolour, add, remove, swap)";
const EXPECT_COLOUR: &str = "a colour (red, green, blue, yellow)";
const EXPECT_SHAPE: &str = "a shape (circle, square, triangle)";
const EXPECT_WHERE: &str = "a relation (to the left of, to the right of, above, below)";
const EXPECT_END_OR_WHERE: &str =
    "the end of the prompt or a relation (to the left of, to the right of, above, below)";

/// A cursor over the words of a trimmed prompt.
struct Words<'a> {
    words: Vec<&'a str>,
    pos: usize,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        let words = if text.is_empty() {
            Vec::new()
        } else {
            text.split(' ').collect()
        };
        Words { words, pos: 0 }
    }

    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.pos).copied()
    }

    fn unexpected(&self, expected: impl Into<String>) -> EditProblem {
        EditProblem::UnexpectedWord {
            index: self.pos + 1,
            expected: expected.into(),
            found: self.peek().map(str::to_owned),
        }
    }

    /// Takes the next word if `read` accepts it; otherwise an error expecting `expected`.
    fn take<T>(
        &mut self,
        expected: &str,
        read: impl Fn(&'a str) -> Option<T>,
    ) -> Result<T, EditProblem> {
        match self.peek().and_then(read) {
            Some(v) => {
                self.pos += 1;
                Ok(v)
            }
            None => Err(self.unexpected(expected)),
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<(), EditProblem> {
        self.take(&format!("{kw:?}"), |w| (w == kw).then_some(()))
    }

    fn object(&mut self) -> Result<Object, EditProblem> {
        let colour = self.take(EXPECT_COLOUR, Colour::from_word)?;
        let shape = self.take(EXPECT_SHAPE, Shape::from_word)?;
        Ok(Object { colour, shape })
    }

    fn place(&mut self) -> Result<Rel, EditProblem> {
        let first = self.take(EXPECT_WHERE, |w| match w {
            "to" | "above" | "below" => Some(w),
            _ => None,
        })?;
        match first {
            "above" => Ok(Rel::Above),
            "below" => Ok(Rel::Below),
            _ => {
                self.keyword("the")?;
                let rel = self.take("\"left\" or \"right\"", |w| match w {
                    "left" => Some(Rel::LeftOf),
                    "right" => Some(Rel::RightOf),
                    _ => None,
                })?;
                self.keyword("of")?;
                Ok(rel)
            }
        }
    }

    /// `the <obj>`.
    fn the_object(&mut self) -> Result<Object, EditProblem> {
        self.keyword("the")?;
        self.object()
    }

    fn edit(&mut self) -> Result<Edit, EditProblem> {
        let verb = self.take(EXPECT_VERB, |w| match w {
            "move" | "recolour" | "add" | "remove" | "swap" => Some(w),
            _ => None,
        })?;
        Ok(match verb {
            "move" => {
                let object = self.the_object()?;
                let rel = self.place()?;
                let anchor = self.the_object()?;
                Edit::Move {
                    object,
                    rel,
                    anchor,
                }
            }
            "recolour" => {
                let object = self.the_object()?;
                self.keyword("to")?;
                let colour = self.take(EXPECT_COLOUR, Colour::from_word)?;
                Edit::Recolour { object, colour }
            }
            "add" => {
                self.keyword("a")?;
                let object = self.object()?;
                let placement = match self.peek() {
                    None => None,
                    Some("to" | "above" | "below") => {
                        let rel = self.place()?;
                        Some((rel, self.the_object()?))
                    }
                    Some(_) => return Err(self.unexpected(EXPECT_END_OR_WHERE)),
                };
                Edit::Add { object, placement }
            }
            "remove" => Edit::Remove {
                object: self.the_object()?,
            },
            _ => {
                let a = self.the_object()?;
                self.keyword("and")?;
                let b = self.the_object()?;
                Edit::Swap { a, b }
            }
        })
    }

    fn end(&self) -> Result<(), EditProblem> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected("the end of the prompt")),
        }
    }
}

/// Applies an edit to a scene drawn on `canvas`, returning the new scene (see the
/// [module docs](self) for the semantics). `rng` breaks ties and picks cells for `add`.
pub fn apply<R: Rng + ?Sized>(
    canvas: &Canvas,
    scene: &[Placed],
    edit: &Edit,
    rng: &mut R,
) -> Result<Vec<Placed>, ApplyError> {
    if let Some((_, object)) = edit.same_object() {
        return Err(ApplyError::SameObject { object });
    }
    let find = |object: Object| scene.iter().position(|p| p.object == object);
    let find_object = |object| find(object).ok_or(ApplyError::NotInScene { object });
    let find_anchor = |anchor| find(anchor).ok_or(ApplyError::AnchorNotInScene { anchor });
    let mut out = scene.to_vec();
    match *edit {
        Edit::Move {
            object,
            rel,
            anchor,
        } => {
            let i = find_object(object)?;
            let anchor_box = scene[find_anchor(anchor)?].bbox;
            let candidates = free_cells(canvas, scene, Some(i), |b| holds(b, rel, &anchor_box));
            let (col, row) = scene[i].cell;
            let distance = |&(c, r): &(u32, u32)| c.abs_diff(col) + r.abs_diff(row);
            let best = candidates.iter().map(distance).min();
            let nearest: Vec<(u32, u32)> = candidates
                .iter()
                .copied()
                .filter(|c| Some(distance(c)) == best)
                .collect();
            let &(c, r) = nearest.choose(rng).ok_or(ApplyError::NoFreeCell {
                object,
                placement: Some((rel, anchor)),
            })?;
            out[i] = canvas.place_at(object, c, r);
        }
        Edit::Recolour { object, colour } => {
            let i = find_object(object)?;
            let recoloured = Object { colour, ..object };
            if scene
                .iter()
                .enumerate()
                .any(|(k, p)| k != i && p.object == recoloured)
            {
                return Err(ApplyError::WouldDuplicate { object: recoloured });
            }
            out[i].object = recoloured;
        }
        Edit::Add { object, placement } => {
            if find(object).is_some() {
                return Err(ApplyError::WouldDuplicate { object });
            }
            let candidates = match placement {
                Some((rel, anchor)) => {
                    let anchor_box = scene[find_anchor(anchor)?].bbox;
                    free_cells(canvas, scene, None, |b| holds(b, rel, &anchor_box))
                }
                None => free_cells(canvas, scene, None, |_| true),
            };
            let &(c, r) = candidates
                .choose(rng)
                .ok_or(ApplyError::NoFreeCell { object, placement })?;
            out.push(canvas.place_at(object, c, r));
        }
        Edit::Remove { object } => {
            out.remove(find_object(object)?);
        }
        Edit::Swap { a, b } => {
            let (i, j) = (find_object(a)?, find_object(b)?);
            let ((ca, ra), (cb, rb)) = (scene[i].cell, scene[j].cell);
            out[i] = canvas.place_at(a, cb, rb);
            out[j] = canvas.place_at(b, ca, ra);
        }
    }
    Ok(out)
}

/// The grid cells, in row-major order, that no object of `scene` other than `scene[moving]`
/// stands in and whose box passes `accept`.
fn free_cells(
    canvas: &Canvas,
    scene: &[Placed],
    moving: Option<usize>,
    accept: impl Fn(&BBox) -> bool,
) -> Vec<(u32, u32)> {
    (0..GRID)
        .flat_map(|r| (0..GRID).map(move |c| (c, r)))
        .filter(|&cell| {
            !scene
                .iter()
                .enumerate()
                .any(|(k, p)| Some(k) != moving && p.cell == cell)
        })
        .filter(|&(c, r)| accept(&canvas.cell_box(c, r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(prompt: &str) -> String {
        Edit::parse(prompt).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_form() {
        let red_circle = Object {
            colour: Colour::Red,
            shape: Shape::Circle,
        };
        let blue_square = Object {
            colour: Colour::Blue,
            shape: Shape::Square,
        };
        assert_eq!(
            Edit::parse("move the red circle to the left of the blue square").unwrap(),
            Edit::Move {
                object: red_circle,
                rel: Rel::LeftOf,
                anchor: blue_square
            }
        );
        assert_eq!(
            Edit::parse("  add a red circle below the blue square\n").unwrap(),
            Edit::Add {
                object: red_circle,
                placement: Some((Rel::Below, blue_square))
            }
        );
        assert_eq!(
            "add a red circle".parse::<Edit>().unwrap(),
            Edit::Add {
                object: red_circle,
                placement: None
            }
        );
        assert_eq!(
            Edit::parse("recolour the red circle to green").unwrap(),
            Edit::Recolour {
                object: red_circle,
                colour: Colour::Green
            }
        );
        assert_eq!(
            Edit::parse("swap the red circle and the blue square").unwrap(),
            Edit::Swap {
                a: red_circle,
                b: blue_square
            }
        );
        assert_eq!(
            Edit::parse("remove the blue square").unwrap(),
            Edit::Remove {
                object: blue_square
            }
        );
    }

    #[test]
    fn errors_name_the_word_the_expectation_and_the_find() {
        assert_eq!(
            err("move the purple circle left of the blue square"),
            r#"edit prompt "move the purple circle left of the blue square": word 3: expected a colour (red, green, blue, yellow), found "purple""#
        );
        assert_eq!(
            err("move the red circle left of the blue square"),
            r#"edit prompt "move the red circle left of the blue square": word 5: expected a relation (to the left of, to the right of, above, below), found "left""#
        );
        assert_eq!(
            err(""),
            r#"edit prompt "": word 1: expected a verb (move, recolour, add, remove, swap), found the end of the prompt"#
        );
        assert_eq!(
            err("move the red"),
            r#"edit prompt "move the red": word 4: expected a shape (circle, square, triangle), found the end of the prompt"#
        );
        assert_eq!(
            err("remove the red circle now"),
            r#"edit prompt "remove the red circle now": word 5: expected the end of the prompt, found "now""#
        );
        assert_eq!(
            err("remove  the red circle"),
            r#"edit prompt "remove  the red circle": word 2: expected "the", found an extra space"#
        );
        assert_eq!(
            err("Remove the red circle"),
            r#"edit prompt "Remove the red circle": word 1: expected a verb (move, recolour, add, remove, swap), found "Remove""#
        );
        assert_eq!(
            err("move the red circle to the top of the blue square"),
            r#"edit prompt "move the red circle to the top of the blue square": word 7: expected "left" or "right", found "top""#
        );
        assert_eq!(
            err("add a red circle please"),
            r#"edit prompt "add a red circle please": word 5: expected the end of the prompt or a relation (to the left of, to the right of, above, below), found "please""#
        );
        assert_eq!(
            err("add the red circle"),
            r#"edit prompt "add the red circle": word 2: expected "a", found "the""#
        );
        assert_eq!(
            err("recolour the red circle green"),
            r#"edit prompt "recolour the red circle green": word 5: expected "to", found "green""#
        );
        assert_eq!(
            err("swap the red circle with the blue square"),
            r#"edit prompt "swap the red circle with the blue square": word 5: expected "and", found "with""#
        );
    }

    #[test]
    fn naming_one_object_twice_is_an_error() {
        assert_eq!(
            err("move the red circle above the red circle"),
            r#"edit prompt "move the red circle above the red circle": move names the red circle twice; it needs two different objects"#
        );
        assert!(
            err("swap the red circle and the red circle")
                .contains("swap names the red circle twice")
        );
        assert!(
            err("add a red circle to the right of the red circle")
                .contains("add names the red circle twice")
        );
    }

    #[test]
    fn serde_uses_the_text() {
        let e = Edit::parse("swap the red circle and the blue square").unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#""swap the red circle and the blue square""#);
        assert_eq!(serde_json::from_str::<Edit>(&json).unwrap(), e);
        let bad = serde_json::from_str::<Edit>(r#""swap the red circle""#).unwrap_err();
        assert!(
            bad.to_string().contains("word 5: expected \"and\""),
            "{bad}"
        );
    }
}
