//! The world's vocabulary and its typed scene graphs.
//!
//! Exactly: shapes `circle`, `square`, `triangle`; colours `red`, `green`, `blue`, `yellow`;
//! relations `left of`, `right of`, `above`, `below`. An item's LAION-SG `label` is its shape
//! and its `attributes` are `[colour]`.

use std::fmt;

use rlrig_sg::{Item, Relation, SceneGraph};
use serde::{Deserialize, Serialize};

/// A shape of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// A filled axis-aligned square.
    Square,
    /// A filled triangle, apex up.
    Triangle,
}

/// A colour of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
}

/// A spatial relation, judged by GenEval's rule ([`crate::geometry::relative_position`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rel {
    /// `left of`.
    #[serde(rename = "left of")]
    LeftOf,
    /// `right of`.
    #[serde(rename = "right of")]
    RightOf,
    /// `above`.
    #[serde(rename = "above")]
    Above,
    /// `below`.
    #[serde(rename = "below")]
    Below,
}

impl Shape {
    /// All shapes.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word, as used in labels.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The shape a word names.
    pub fn from_word(w: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.word() == w)
    }
}

impl Colour {
    /// All colours.
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    /// The word, as used in attributes.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// The colour a word names.
    pub fn from_word(w: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.word() == w)
    }

    /// The RGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 90, 220],
            Colour::Yellow => [235, 200, 40],
        }
    }
}

/// The background colour of every canvas.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

impl Rel {
    /// All relations.
    pub const ALL: [Rel; 4] = [Rel::LeftOf, Rel::RightOf, Rel::Above, Rel::Below];

    /// The predicate words.
    pub fn word(self) -> &'static str {
        match self {
            Rel::LeftOf => "left of",
            Rel::RightOf => "right of",
            Rel::Above => "above",
            Rel::Below => "below",
        }
    }

    /// The relation a predicate names.
    pub fn from_word(w: &str) -> Option<Rel> {
        Rel::ALL.into_iter().find(|r| r.word() == w)
    }

    /// The same fact seen from the other item: `left of` ↔ `right of`, `above` ↔ `below`.
    pub fn inverse(self) -> Rel {
        match self {
            Rel::LeftOf => Rel::RightOf,
            Rel::RightOf => Rel::LeftOf,
            Rel::Above => Rel::Below,
            Rel::Below => Rel::Above,
        }
    }
}

macro_rules! display_word {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }
    )*};
}
display_word!(Shape, Colour, Rel);

/// An object of the world: a colour and a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Object {
    /// Its colour.
    pub colour: Colour,
    /// Its shape.
    pub shape: Shape,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.colour, self.shape)
    }
}

impl Object {
    /// Every object of the world (colour-major: the red ones first), twelve in all.
    pub fn all() -> impl Iterator<Item = Object> {
        Colour::ALL.into_iter().flat_map(|colour| {
            Shape::ALL
                .into_iter()
                .map(move |shape| Object { colour, shape })
        })
    }

    /// The LAION-SG item for this object.
    pub fn item(self, item_id: u64) -> Item {
        Item {
            item_id,
            label: self.shape.word().into(),
            attributes: vec![self.colour.word().into()],
            ..Default::default()
        }
    }
}

/// A scene graph in the world's terms: objects and relations by index into `objects`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldGraph {
    /// The objects, in the record's item order.
    pub objects: Vec<Object>,
    /// `(subject index, relation, object index)`, in the record's relation order.
    pub relations: Vec<(usize, Rel, usize)>,
}

/// A scene graph that uses words outside the world's vocabulary; lists every offending word.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "outside the built-in world's vocabulary (shapes: circle, square, triangle; colours: red, green, blue, yellow; relations: left of, right of, above, below): {}",
    .problems.join("; ")
)]
pub struct VocabError {
    /// One entry per problem, e.g. `items[0].label "mountains" is not a shape`.
    pub problems: Vec<String>,
}

impl WorldGraph {
    /// Reads a LAION-SG record in the world's vocabulary. Every out-of-vocabulary word is
    /// listed in the error, not only the first.
    pub fn from_scene_graph(g: &SceneGraph) -> Result<WorldGraph, VocabError> {
        let mut problems = Vec::new();
        let mut objects = Vec::with_capacity(g.items.len());
        for (i, item) in g.items.iter().enumerate() {
            let shape = Shape::from_word(&item.label);
            if shape.is_none() {
                problems.push(format!("items[{i}].label {:?} is not a shape", item.label));
            }
            let colour = match item.attributes.as_slice() {
                [c] => {
                    let colour = Colour::from_word(c);
                    if colour.is_none() {
                        problems.push(format!("items[{i}].attributes[0] {c:?} is not a colour"));
                    }
                    colour
                }
                other => {
                    problems.push(format!(
                        "items[{i}].attributes {other:?}: expected exactly one colour"
                    ));
                    None
                }
            };
            if let (Some(shape), Some(colour)) = (shape, colour) {
                objects.push(Object { colour, shape });
            }
        }
        let mut relations = Vec::with_capacity(g.relations.len());
        for (i, r) in g.relations.iter().enumerate() {
            let rel = Rel::from_word(&r.relation);
            if rel.is_none() {
                problems.push(format!(
                    "relations[{i}].relation {:?} is not a relation",
                    r.relation
                ));
            }
            let a = g.items.iter().position(|it| it.item_id == r.item1);
            let b = g.items.iter().position(|it| it.item_id == r.item2);
            if a.is_none() || b.is_none() {
                problems.push(format!("relations[{i}] names a missing item"));
            }
            if let (Some(a), Some(rel), Some(b)) = (a, rel, b) {
                relations.push((a, rel, b));
            }
        }
        if problems.is_empty() {
            Ok(WorldGraph { objects, relations })
        } else {
            Err(VocabError { problems })
        }
    }

    /// The LAION-SG record of this graph (item ids 0.., triple ids 0..).
    pub fn to_scene_graph(&self) -> SceneGraph {
        let mut g = SceneGraph {
            items: self
                .objects
                .iter()
                .enumerate()
                .map(|(i, o)| o.item(i as u64))
                .collect(),
            relations: self
                .relations
                .iter()
                .enumerate()
                .map(|(t, &(a, r, b))| Relation {
                    triple_id: Some(t as u64),
                    item1: a as u64,
                    relation: r.word().into(),
                    item2: b as u64,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        g.caption_ori = Some(g.prompt());
        g
    }
}
